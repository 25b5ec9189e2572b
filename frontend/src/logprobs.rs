//! Log probabilities in OpenAI's shapes: chat's `{"content": [{token, logprob, bytes,
//! top_logprobs}]}` and completions' `{tokens, token_logprobs, top_logprobs, text_offset}`,
//! with each token's text from the model's tokenizer.

use std::sync::Arc;

use serde_json::{Map, Value, json};
use switchyard_proto::TokenLogprob;

use crate::preprocess::Preprocessor;
use crate::stream::ApiKind;

/// Renders one response's log probabilities, piece by piece.
pub(crate) struct LogprobsOut {
    preprocessor: Arc<Preprocessor>,
    kind: ApiKind,
    /// Completions: where the next token starts in the generated text.
    offset: usize,
}

impl LogprobsOut {
    pub fn new(preprocessor: Arc<Preprocessor>, kind: ApiKind) -> LogprobsOut {
        LogprobsOut { preprocessor, kind, offset: 0 }
    }

    /// The `logprobs` object for these tokens.
    pub fn render(&mut self, tokens: &[TokenLogprob]) -> Value {
        match self.kind {
            ApiKind::Chat | ApiKind::Responses => {
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let mut entry = self.entry(t.token_id, t.logprob);
                        let top: Vec<Value> = t
                            .top
                            .iter()
                            .map(|c| Value::Object(self.entry(c.token_id, c.logprob)))
                            .collect();
                        entry.insert("top_logprobs".into(), Value::Array(top));
                        Value::Object(entry)
                    })
                    .collect();
                json!({ "content": content })
            }
            ApiKind::Completion => {
                let mut texts = Vec::with_capacity(tokens.len());
                let mut offsets = Vec::with_capacity(tokens.len());
                let mut top = Vec::with_capacity(tokens.len());
                for t in tokens {
                    let text = self.text(t.token_id);
                    offsets.push(self.offset);
                    self.offset += text.len();
                    let alternatives: Map<String, Value> =
                        t.top.iter().map(|c| (self.text(c.token_id), json!(c.logprob))).collect();
                    top.push(Value::Object(alternatives));
                    texts.push(text);
                }
                let logprobs: Vec<f32> = tokens.iter().map(|t| t.logprob).collect();
                json!({
                    "tokens": texts,
                    "token_logprobs": logprobs,
                    "top_logprobs": top,
                    "text_offset": offsets,
                })
            }
        }
    }

    fn entry(&self, id: u32, logprob: f32) -> Map<String, Value> {
        let bytes = self.preprocessor.token_bytes(id);
        let mut entry = Map::new();
        entry.insert("token".into(), json!(String::from_utf8_lossy(&bytes)));
        entry.insert("logprob".into(), json!(logprob));
        entry.insert("bytes".into(), json!(bytes));
        entry
    }

    fn text(&self, id: u32) -> String {
        String::from_utf8_lossy(&self.preprocessor.token_bytes(id)).into_owned()
    }
}
