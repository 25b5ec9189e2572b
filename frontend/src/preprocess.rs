//! Preprocessing of one model: its tokenizer and compiled chat template, loaded once and
//! shared by every request; renders a conversation and turns text into token ids.

use std::borrow::Cow;
use std::sync::Arc;

use minijinja::Value;
use minijinja::context;
use minijinja::value::{ValueKind, merge_maps};
use serde::Serialize;
use switchyard_model::ModelFiles;
use tokenizers::{PostProcessor, Tokenizer};

use crate::bpe::FastBpe;
use crate::detokenize::{Detokenizer, TokenBytes};
use crate::error::Error;
use crate::openai::request::{ChatMessage, MessageContent};
use crate::template::ChatTemplate;

/// What serving one model's requests needs besides the worker.
#[derive(Debug)]
pub(crate) struct Preprocessor {
    source: String,
    tokenizer: Arc<Tokenizer>,
    template: Option<ChatTemplate>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    /// From the model's files; instance cards may state it too (they win).
    context_length: Option<u32>,
    /// Token ids below this exist in the tokenizer.
    vocab_size: usize,
    /// Bytes of every token, when the tokenizer's decoder allows decoding token by token.
    token_bytes: Option<Arc<TokenBytes>>,
    /// The fast encoder, when it reproduces this tokenizer.
    fast: Option<FastBpe>,
    /// Whether the tokenizer's post-processor adds no tokens, so the fast encoder also serves
    /// `add_special_tokens = true`.
    adds_no_special_tokens: bool,
}

impl Preprocessor {
    /// Resolves `source` and loads everything. Blocking (files, parsing, compiling): call it
    /// from `spawn_blocking`.
    pub fn load(source: &str) -> Result<Preprocessor, Error> {
        let fail = |reason: String| Error::ModelLoad { source_name: source.to_owned(), reason };
        let files = ModelFiles::resolve(source).map_err(|e| fail(e.to_string()))?;
        Preprocessor::from_files(files).map_err(|e| match e {
            Error::ModelLoad { reason, .. } => fail(reason),
            other => other,
        })
    }

    /// Builds the preprocessor from resolved files. Blocking.
    pub fn from_files(files: ModelFiles) -> Result<Preprocessor, Error> {
        let fail = |reason: String| Error::ModelLoad { source_name: files.source.clone(), reason };
        let tokenizer = Tokenizer::from_bytes(&files.tokenizer_json)
            .map_err(|e| fail(format!("tokenizer.json: {e}")))?;
        let template = files
            .tokenizer_config
            .chat_template
            .clone()
            .map(ChatTemplate::compile)
            .transpose()
            .map_err(|e| fail(format!("chat template: {e:#}")))?;
        let token_bytes = TokenBytes::build(&tokenizer).map(Arc::new);
        let special_sample = format!(
            "{}Hi{} there",
            files.tokenizer_config.bos_token.as_deref().unwrap_or(""),
            files.tokenizer_config.eos_token.as_deref().unwrap_or("")
        );
        let fast = FastBpe::from_tokenizer_json(&files.tokenizer_json);
        let fast = match fast {
            Some(fast) if fast.agrees_with(&tokenizer, &special_sample) => Some(fast),
            Some(_) => {
                tracing::warn!(source = %files.source, "fast encoder disagrees with the tokenizer; not used");
                None
            }
            None => None,
        };
        let adds_no_special_tokens =
            tokenizer.get_post_processor().is_none_or(|p| p.added_tokens(false) == 0);
        let vocab_size = tokenizer.get_vocab_size(true);
        Ok(Preprocessor {
            context_length: files.context_length(),
            bos_token: files.tokenizer_config.bos_token.clone(),
            eos_token: files.tokenizer_config.eos_token.clone(),
            source: files.source,
            tokenizer: Arc::new(tokenizer),
            template,
            vocab_size,
            token_bytes,
            fast,
            adds_no_special_tokens,
        })
    }

    pub fn context_length(&self) -> Option<u32> {
        self.context_length
    }

    /// Renders `messages` (and `tools`, and any extra template variables) into the prompt,
    /// with the generation prompt added.
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        tools: Option<&Value>,
        extra: Option<&Value>,
    ) -> Result<String, Error> {
        let Some(template) = &self.template else {
            return Err(Error::invalid(
                "messages",
                "this model has no chat template; use /v1/completions with a prompt",
            ));
        };
        if messages.is_empty() {
            return Err(Error::invalid("messages", "messages must not be empty"));
        }
        let messages = messages
            .iter()
            .enumerate()
            .map(|(i, m)| TemplateMessage::from_request(i, m))
            .collect::<Result<Vec<_>, Error>>()?;
        let extra = match extra {
            Some(v) if v.is_none() || v.is_undefined() => Value::UNDEFINED,
            Some(v) if v.kind() == ValueKind::Map => v.clone(),
            Some(_) => {
                return Err(Error::invalid(
                    "chat_template_kwargs",
                    "chat_template_kwargs must be an object",
                ));
            }
            None => Value::UNDEFINED,
        };
        let base = context! {
            messages => Value::from_serialize(&messages),
            add_generation_prompt => true,
            bos_token => self.bos_token.as_deref().unwrap_or(""),
            eos_token => self.eos_token.as_deref().unwrap_or(""),
            tools => tools.filter(|t| !t.is_none()),
        };
        // Extra variables may add to the context but not replace what the request defines.
        let ctx = if extra.is_undefined() { base } else { merge_maps([extra, base]) };
        template.render(ctx).map_err(|e| {
            let message = match (e.kind(), e.detail()) {
                (minijinja::ErrorKind::InvalidOperation, Some(detail)) => detail.to_owned(),
                _ => format!("the chat template cannot format these messages: {e}"),
            };
            Error::invalid("messages", message)
        })
    }

    /// Token ids of `text`; `add_special_tokens` adds what the tokenizer's post-processor adds
    /// (a BOS, for models that want one) — not for chat prompts, whose template has them.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, Error> {
        if let Some(fast) = &self.fast
            && (!add_special_tokens || self.adds_no_special_tokens)
        {
            let mut ids = Vec::new();
            if fast.encode(text, &mut ids) {
                return Ok(ids);
            }
        }
        self.tokenizer
            .encode_fast(text, add_special_tokens)
            .map(|encoding| encoding.get_ids().to_vec())
            .map_err(|e| Error::Internal(format!("tokenizing with {}: {e}", self.source)))
    }

    /// 400 when a client-given prompt holds ids the tokenizer does not know.
    pub fn check_token_ids(&self, ids: &[u32], param: &'static str) -> Result<(), Error> {
        match ids.iter().find(|&&id| id as usize >= self.vocab_size) {
            Some(id) => Err(Error::invalid(
                param,
                format!("token id {id} is out of range (vocabulary size {})", self.vocab_size),
            )),
            None => Ok(()),
        }
    }

    /// The bytes one token stands for (for log probabilities).
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        match &self.token_bytes {
            Some(table) => table.get(id).to_vec(),
            None => self.tokenizer.decode(&[id], false).map(String::into_bytes).unwrap_or_default(),
        }
    }

    /// A fresh incremental detokenizer for one response.
    pub fn detokenizer(&self) -> Detokenizer {
        match &self.token_bytes {
            Some(table) => Detokenizer::by_bytes(table.clone()),
            None => Detokenizer::by_window(self.tokenizer.clone()),
        }
    }
}

/// A message as the chat template sees it: `content` a string (text parts joined) or none.
#[derive(Serialize)]
struct TemplateMessage<'a> {
    role: &'a str,
    content: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reasoning_content: Option<&'a str>,
}

impl<'a> TemplateMessage<'a> {
    fn from_request(index: usize, message: &'a ChatMessage) -> Result<Self, Error> {
        let role = message.role.as_deref().ok_or_else(|| {
            Error::invalid(format!("messages[{index}].role"), "missing field `role`")
        })?;
        let content = match &message.content {
            None => None,
            Some(MessageContent::Text(text)) => Some(Cow::Borrowed(text.as_str())),
            Some(MessageContent::Parts(parts)) => {
                let mut joined = String::new();
                for (j, part) in parts.iter().enumerate() {
                    match (part.kind.as_deref(), &part.text) {
                        (Some("text"), Some(text)) => {
                            if j > 0 {
                                joined.push('\n');
                            }
                            joined.push_str(text);
                        }
                        (Some("text"), None) => {
                            return Err(Error::invalid(
                                format!("messages[{index}].content[{j}].text"),
                                "a text part needs `text`",
                            ));
                        }
                        (kind, _) => {
                            return Err(Error::invalid(
                                format!("messages[{index}].content[{j}].type"),
                                format!(
                                    "content part type {} is not supported; only `text` is",
                                    kind.map_or_else(|| "(none)".to_owned(), |k| format!("`{k}`"))
                                ),
                            ));
                        }
                    }
                }
                Some(Cow::Owned(joined))
            }
        };
        Ok(TemplateMessage {
            role,
            content,
            name: message.name.as_deref(),
            tool_calls: message.tool_calls.as_ref().filter(|v| !v.is_none()),
            tool_call_id: message.tool_call_id.as_deref(),
            reasoning_content: message.reasoning_content.as_deref(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::request::{ChatCompletionRequest, parse};

    fn tiny() -> Preprocessor {
        Preprocessor::load(switchyard_model::DEFAULT_SOURCE).expect("builtin model loads")
    }

    fn messages(body: &str) -> ChatCompletionRequest {
        parse(body.as_bytes()).expect("parses")
    }

    #[test]
    fn builtin_template_renders_chatml() {
        let p = tiny();
        let req = messages(
            r#"{"messages":[{"role":"system","content":"Be brief."},
                {"role":"user","content":[{"type":"text","text":"Hi"},{"type":"text","text":"there"}]}]}"#,
        );
        let prompt = p
            .render_chat(req.messages.as_deref().unwrap_or_default(), None, None)
            .expect("renders");
        assert_eq!(
            prompt,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi\nthere<|im_end|>\n<|im_start|>assistant\n"
        );
        let ids = p.encode(&prompt, false).expect("encodes");
        // The special tokens are single ids, not spelled out byte by byte.
        assert_eq!(ids[0], 1);
        assert_eq!(ids.iter().filter(|&&id| id == 2).count(), 2);
        assert_eq!(p.tokenizer.decode(&ids, false).expect("decodes"), prompt);
    }

    #[test]
    fn bad_messages_are_400s() {
        let p = tiny();
        let req = messages(r#"{"messages":[{"content":"hi"}]}"#);
        let err = p
            .render_chat(req.messages.as_deref().unwrap_or_default(), None, None)
            .expect_err("no role");
        assert!(
            matches!(err, Error::InvalidRequest { param: Some(ref f), .. } if f == "messages[0].role")
        );
        let req = messages(r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#);
        let err = p
            .render_chat(req.messages.as_deref().unwrap_or_default(), None, None)
            .expect_err("image");
        assert!(
            matches!(err, Error::InvalidRequest { param: Some(ref f), .. } if f == "messages[0].content[0].type")
        );
        let err = p.render_chat(&[], None, None).expect_err("empty");
        assert!(matches!(err, Error::InvalidRequest { param: Some(ref f), .. } if f == "messages"));
    }

    #[test]
    fn template_kwargs_add_variables_but_do_not_replace_messages() {
        let files = switchyard_model::ModelFiles::resolve(switchyard_model::DEFAULT_SOURCE)
            .expect("builtin");
        let mut files = files;
        files.tokenizer_config.chat_template =
            Some("{{ messages | length }}|{{ enable_thinking }}|{{ tools | tojson }}".to_owned());
        let p = Preprocessor::from_files(files).expect("loads");
        let req = messages(
            r#"{"messages":[{"role":"user","content":"x"}],
                "tools":[{"type":"function","function":{"name":"f"}}],
                "chat_template_kwargs":{"enable_thinking":false,"messages":[]}}"#,
        );
        let out = p
            .render_chat(
                req.messages.as_deref().unwrap_or_default(),
                req.tools.as_ref(),
                req.chat_template_kwargs.as_ref(),
            )
            .expect("renders");
        assert_eq!(out, r#"1|False|[{"type": "function", "function": {"name": "f"}}]"#);
        let bad =
            messages(r#"{"messages":[{"role":"user","content":"x"}],"chat_template_kwargs":[1]}"#);
        let err = p
            .render_chat(
                bad.messages.as_deref().unwrap_or_default(),
                None,
                bad.chat_template_kwargs.as_ref(),
            )
            .expect_err("not an object");
        assert!(
            matches!(err, Error::InvalidRequest { param: Some(ref f), .. } if f == "chat_template_kwargs")
        );
    }

    #[test]
    fn out_of_range_ids_are_rejected() {
        let p = tiny();
        assert!(p.check_token_ids(&[3, 4, 5], "prompt").is_ok());
        assert!(p.check_token_ids(&[3, 1_000_000], "prompt").is_err());
    }
}
