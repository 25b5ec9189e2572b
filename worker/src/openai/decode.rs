//! Engine responses in: one JSON event (a stream event, or a whole response) becomes a
//! [`Piece`] — new token ids or text, their log probabilities, and on the last one the finish
//! reason, usage and any transfer parameters — whatever the engine's shape.

use serde::Deserialize;
use serde_json::Value;
use switchyard_proto::{FinishReason, TokenLogprob, TopLogprob, Usage};

use super::Flavour;
use crate::Error;

/// What one engine event adds to the response.
#[derive(Debug, Default)]
pub(crate) struct Piece {
    pub token_ids: Vec<u32>,
    /// New text, from engines that return no token ids.
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    pub finish: Option<FinishReason>,
    pub usage: Option<Usage>,
    /// vLLM's `kv_transfer_params`, TensorRT-LLM's `disaggregated_params`.
    pub transfer: Option<Value>,
}

/// Decodes one request's events; keeps what a cumulative stream (SGLang) needs.
#[derive(Debug)]
pub(crate) struct Decoder {
    flavour: Flavour,
    /// Output tokens seen so far (SGLang may repeat earlier ones in each event).
    seen: usize,
    /// Top alternatives kept per token (the engine may have been asked for more).
    top: Option<usize>,
}

impl Decoder {
    pub fn new(flavour: Flavour, top_logprobs: Option<u32>) -> Decoder {
        Decoder { flavour, seen: 0, top: top_logprobs.map(|k| k as usize) }
    }

    /// Decodes one event's JSON.
    pub fn decode(&mut self, data: &str) -> Result<Piece, Error> {
        let value: Value = serde_json::from_str(data).map_err(|e| {
            Error::Engine(format!("the engine sent invalid JSON ({e}): {data:.200}"))
        })?;
        if let Some(error) = value.get("error") {
            return Err(Error::Engine(format!("the engine failed the request: {error}")));
        }
        let mut piece = match self.flavour {
            Flavour::Llamacpp => llamacpp(value)?,
            Flavour::Sglang => self.sglang(value)?,
            Flavour::Openai | Flavour::Vllm | Flavour::Trtllm => openai(value)?,
        };
        if let Some(k) = self.top {
            for lp in &mut piece.logprobs {
                lp.top.truncate(k);
            }
        }
        Ok(piece)
    }

    fn sglang(&mut self, value: Value) -> Result<Piece, Error> {
        let event: SglangEvent = parse(value)?;
        let meta = event.meta_info;
        // Events may carry every output id so far or only the new ones; the count of
        // completion tokens says which of them are new.
        let total =
            meta.completion_tokens.map_or(self.seen + event.output_ids.len(), |n| n as usize);
        let new = total.saturating_sub(self.seen).min(event.output_ids.len());
        self.seen = total;
        let token_ids = event.output_ids[event.output_ids.len() - new..].to_vec();
        let logprobs = if meta.output_token_logprobs.is_empty() {
            Vec::new()
        } else {
            let lps = &meta.output_token_logprobs;
            let tops = &meta.output_top_logprobs;
            let start = lps.len().saturating_sub(new);
            (start..lps.len())
                .map(|i| TokenLogprob {
                    token_id: lps[i].1,
                    logprob: lps[i].0,
                    top: tops
                        .get(i + tops.len().saturating_sub(lps.len()))
                        .map(|t| {
                            t.iter().map(|c| TopLogprob { token_id: c.1, logprob: c.0 }).collect()
                        })
                        .unwrap_or_default(),
                })
                .collect()
        };
        let finish = meta.finish_reason.as_ref().map(|f| match f.kind.as_str() {
            "length" => FinishReason::Length,
            "abort" => FinishReason::Cancelled,
            _ => FinishReason::Stop,
        });
        let usage = finish.map(|_| Usage {
            prompt_tokens: meta.prompt_tokens.unwrap_or(0),
            completion_tokens: meta.completion_tokens.unwrap_or(0),
            cached_tokens: meta.cached_tokens.unwrap_or(0),
        });
        Ok(Piece { token_ids, logprobs, finish, usage, ..Piece::default() })
    }
}

fn parse<T: for<'de> Deserialize<'de>>(value: Value) -> Result<T, Error> {
    serde_json::from_value(value)
        .map_err(|e| Error::Engine(format!("unexpected response from the engine: {e}")))
}

#[derive(Deserialize)]
struct LlamaEvent {
    #[serde(default)]
    tokens: Vec<u32>,
    #[serde(default)]
    stop: bool,
    stop_type: Option<String>,
    #[serde(default)]
    completion_probabilities: Vec<LlamaProb>,
    tokens_evaluated: Option<u32>,
    tokens_predicted: Option<u32>,
    timings: Option<LlamaTimings>,
}

#[derive(Deserialize)]
struct LlamaProb {
    id: u32,
    logprob: f32,
    #[serde(default)]
    top_logprobs: Vec<LlamaTop>,
}

#[derive(Deserialize)]
struct LlamaTop {
    id: u32,
    logprob: f32,
}

#[derive(Deserialize)]
struct LlamaTimings {
    cache_n: Option<u32>,
}

/// llama.cpp's native `/completion` event (`return_tokens`).
fn llamacpp(value: Value) -> Result<Piece, Error> {
    let event: LlamaEvent = parse(value)?;
    let logprobs = event
        .completion_probabilities
        .into_iter()
        .map(|p| TokenLogprob {
            token_id: p.id,
            logprob: p.logprob,
            top: p
                .top_logprobs
                .into_iter()
                .map(|t| TopLogprob { token_id: t.id, logprob: t.logprob })
                .collect(),
        })
        .collect();
    let mut piece = Piece { token_ids: event.tokens, logprobs, ..Piece::default() };
    if event.stop {
        piece.finish = Some(match event.stop_type.as_deref() {
            Some("eos" | "word") => FinishReason::Stop,
            _ => FinishReason::Length,
        });
        piece.usage = Some(Usage {
            prompt_tokens: event.tokens_evaluated.unwrap_or(0),
            completion_tokens: event.tokens_predicted.unwrap_or(0),
            cached_tokens: event.timings.and_then(|t| t.cache_n).unwrap_or(0),
        });
    }
    Ok(piece)
}

#[derive(Deserialize)]
struct SglangEvent {
    #[serde(default)]
    output_ids: Vec<u32>,
    meta_info: SglangMeta,
}

#[derive(Deserialize)]
struct SglangMeta {
    finish_reason: Option<SglangFinish>,
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
    cached_tokens: Option<u32>,
    /// `[logprob, token id, text]` per output token.
    #[serde(default)]
    output_token_logprobs: Vec<(f32, u32, Value)>,
    #[serde(default)]
    output_top_logprobs: Vec<Vec<(f32, u32, Value)>>,
}

#[derive(Deserialize)]
struct SglangFinish {
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
struct OpenaiEvent {
    #[serde(default)]
    choices: Vec<OpenaiChoice>,
    usage: Option<OpenaiUsage>,
    kv_transfer_params: Option<Value>,
}

#[derive(Deserialize)]
struct OpenaiChoice {
    #[serde(default)]
    text: String,
    token_ids: Option<Vec<u32>>,
    logprobs: Option<OpenaiLogprobs>,
    finish_reason: Option<String>,
    disaggregated_params: Option<Value>,
}

#[derive(Deserialize)]
struct OpenaiLogprobs {
    #[serde(default)]
    tokens: Vec<String>,
    #[serde(default)]
    token_logprobs: Vec<Option<f32>>,
    #[serde(default)]
    top_logprobs: Vec<Option<std::collections::HashMap<String, f32>>>,
}

#[derive(Deserialize)]
struct OpenaiUsage {
    prompt_tokens: u32,
    completion_tokens: u32,
    prompt_tokens_details: Option<OpenaiPromptDetails>,
}

#[derive(Deserialize)]
struct OpenaiPromptDetails {
    cached_tokens: Option<u32>,
}

/// An OpenAI `/v1/completions` event or body (vLLM adds `token_ids`, and with
/// `return_tokens_as_token_ids` names logprob tokens `token_id:N`).
fn openai(value: Value) -> Result<Piece, Error> {
    let event: OpenaiEvent = parse(value)?;
    let mut piece = Piece { transfer: event.kv_transfer_params, ..Piece::default() };
    if let Some(choice) = event.choices.into_iter().next() {
        piece.text = choice.text;
        piece.token_ids = choice.token_ids.unwrap_or_default();
        if let Some(lp) = choice.logprobs {
            piece.logprobs = openai_logprobs(lp)?;
        }
        piece.finish = choice.finish_reason.as_deref().map(|r| match r {
            "length" => FinishReason::Length,
            "abort" => FinishReason::Cancelled,
            _ => FinishReason::Stop,
        });
        if choice.disaggregated_params.is_some() {
            piece.transfer = choice.disaggregated_params;
        }
    }
    piece.usage = event.usage.map(|u| Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        cached_tokens: u.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0),
    });
    Ok(piece)
}

fn openai_logprobs(lp: OpenaiLogprobs) -> Result<Vec<TokenLogprob>, Error> {
    let id_of = |token: &str| -> Result<u32, Error> {
        token
            .strip_prefix("token_id:")
            .and_then(|id| id.parse().ok())
            .ok_or_else(|| Error::Engine(format!("logprob token `{token}` is not named by its id")))
    };
    lp.tokens
        .iter()
        .enumerate()
        .map(|(i, token)| {
            let mut top: Vec<TopLogprob> = match lp.top_logprobs.get(i) {
                Some(Some(map)) => map
                    .iter()
                    .map(|(t, &logprob)| Ok(TopLogprob { token_id: id_of(t)?, logprob }))
                    .collect::<Result<_, Error>>()?,
                _ => Vec::new(),
            };
            top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
            Ok(TokenLogprob {
                token_id: id_of(token)?,
                logprob: lp.token_logprobs.get(i).copied().flatten().unwrap_or(f32::NEG_INFINITY),
                top,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llamacpp_events_carry_tokens_probabilities_and_usage() {
        let mut d = Decoder::new(Flavour::Llamacpp, Some(1));
        let p = d
            .decode(
                r#"{"content":"a","tokens":[7],"stop":false,"completion_probabilities":
                [{"id":7,"token":"a","bytes":[97],"logprob":-0.5,"top_logprobs":[
                {"id":7,"token":"a","bytes":[97],"logprob":-0.5},{"id":9,"token":"b","bytes":[98],"logprob":-1.5}]}]}"#,
            )
            .expect("decodes");
        assert_eq!(p.token_ids, [7]);
        assert_eq!(p.logprobs[0].top.len(), 1);
        assert!(p.finish.is_none());
        let p = d
            .decode(
                r#"{"content":"","tokens":[],"stop":true,"stop_type":"limit",
                "tokens_evaluated":5,"tokens_predicted":3,"timings":{"cache_n":4}}"#,
            )
            .expect("decodes");
        assert_eq!(p.finish, Some(FinishReason::Length));
        let usage = p.usage.expect("usage");
        assert_eq!((usage.prompt_tokens, usage.completion_tokens, usage.cached_tokens), (5, 3, 4));
    }

    #[test]
    fn vllm_events_name_tokens_by_id() {
        let mut d = Decoder::new(Flavour::Vllm, None);
        let p = d
            .decode(
                r#"{"choices":[{"index":0,"text":"x","token_ids":[11,12],"finish_reason":null,
                "logprobs":{"tokens":["token_id:11","token_id:12"],"token_logprobs":[-0.1,-0.2],
                "top_logprobs":[{"token_id:11":-0.1,"token_id:3":-2.0},{"token_id:12":-0.2}]}}],"usage":null}"#,
            )
            .expect("decodes");
        assert_eq!(p.token_ids, [11, 12]);
        assert_eq!(p.logprobs[0].top[0].token_id, 11);
        assert_eq!(p.logprobs[0].top[1].token_id, 3);
        let p = d
            .decode(r#"{"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":2,"total_tokens":6,"prompt_tokens_details":{"cached_tokens":2}}}"#)
            .expect("decodes");
        assert_eq!(p.usage.map(|u| u.cached_tokens), Some(2));
        assert!(d.decode(r#"{"error":{"message":"boom"}}"#).is_err());
    }

    #[test]
    fn sglang_cumulative_and_incremental_streams_give_new_ids_once() {
        for cumulative in [true, false] {
            let mut d = Decoder::new(Flavour::Sglang, None);
            let first =
                r#"{"output_ids":[5],"meta_info":{"completion_tokens":1,"finish_reason":null}}"#;
            let second = if cumulative {
                r#"{"output_ids":[5,6],"meta_info":{"completion_tokens":2,"prompt_tokens":3,"cached_tokens":0,"finish_reason":{"type":"length","length":2}}}"#
            } else {
                r#"{"output_ids":[6],"meta_info":{"completion_tokens":2,"prompt_tokens":3,"cached_tokens":0,"finish_reason":{"type":"length","length":2}}}"#
            };
            assert_eq!(d.decode(first).expect("decodes").token_ids, [5]);
            let p = d.decode(second).expect("decodes");
            assert_eq!(p.token_ids, [6]);
            assert_eq!(p.finish, Some(FinishReason::Length));
        }
    }
}
