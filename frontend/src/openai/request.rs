//! Request bodies of `/v1/chat/completions` and `/v1/completions`, as typed structs parsed once
//! from the body bytes. Required fields are `Option` so that their absence is reported by
//! validation with the field's name; unknown fields are ignored.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use utoipa::ToSchema;

use crate::conversation::ChatInput;
use crate::error::Error;

/// Parses a request body; serde's errors become 400s naming the field they were found at.
pub(crate) fn parse<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, Error> {
    // serde's derived structs also accept arrays (fields by position); a body must be an object.
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => {}
        None => {
            return Err(Error::InvalidRequest {
                message: "the request body is empty".into(),
                param: None,
            });
        }
        Some(_) => {
            return Err(Error::InvalidRequest {
                message: "the request body must be a JSON object".into(),
                param: None,
            });
        }
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            Error::InvalidRequest {
                message: format!("the request body is not valid JSON: {inner}"),
                param: None,
            }
        } else if path == "." || path.is_empty() {
            Error::InvalidRequest {
                message: format!("the request body must be a JSON object: {inner}"),
                param: None,
            }
        } else {
            Error::invalid(path.clone(), format!("invalid value for `{path}`: {inner}"))
        }
    })?;
    de.end().map_err(|e| Error::InvalidRequest {
        message: format!("the request body is not valid JSON: {e}"),
        param: None,
    })?;
    Ok(value)
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ChatCompletionRequest {
    #[schema(required)]
    pub model: Option<String>,
    /// Messages as the client sent them (objects checked when rendered), so that the chat
    /// template sees exactly the keys the client gave.
    #[schema(value_type = Vec<crate::openapi::MessageDoc>, required, min_items = 1)]
    pub messages: Option<Vec<minijinja::Value>>,
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<u32>,
    /// Tool definitions, handed to the chat template as they came.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<minijinja::Value>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name": …}}`.
    #[schema(value_type = Option<Value>)]
    pub tool_choice: Option<serde_json::Value>,
    /// Documents for retrieval-augmented templates (vLLM's extension).
    #[schema(value_type = Option<Vec<Object>>)]
    pub documents: Option<minijinja::Value>,
    /// Extra variables for the chat template (vLLM's extension, e.g. `enable_thinking`).
    #[schema(value_type = Option<Object>)]
    pub chat_template_kwargs: Option<minijinja::Value>,
    /// Whether the template adds the assistant's header (default true; vLLM's extension).
    pub add_generation_prompt: Option<bool>,
    /// Render the last message open, to be continued (vLLM's extension).
    pub continue_final_message: Option<bool>,
    pub nvext: Option<NvextRequest>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    #[schema(minimum = -1)]
    pub top_k: Option<i32>,
    #[schema(value_type = Option<i64>)]
    pub seed: Option<Seed>,
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u32>,
    /// A string or a list of strings.
    #[schema(value_type = Option<Vec<String>>, max_items = 32)]
    pub stop: Option<StopStrings>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub min_p: Option<f32>,
    pub logit_bias: Option<std::collections::HashMap<String, f32>>,
    pub response_format: Option<serde_json::Value>,
    /// Chat: whether to return log probabilities; `top_logprobs` says how many alternatives.
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
}

/// `POST /v1/completions`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct CompletionRequest {
    #[schema(required)]
    pub model: Option<String>,
    /// Text, token ids, or a one-element list of either.
    #[schema(value_type = String, required)]
    pub prompt: Option<Prompt>,
    pub nvext: Option<NvextRequest>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    #[schema(minimum = 1)]
    pub max_tokens: Option<u32>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    #[schema(minimum = -1)]
    pub top_k: Option<i32>,
    #[schema(value_type = Option<i64>)]
    pub seed: Option<Seed>,
    #[schema(minimum = 1, maximum = 1)]
    pub n: Option<u32>,
    /// A string or a list of strings.
    #[schema(value_type = Option<Vec<String>>, max_items = 32)]
    pub stop: Option<StopStrings>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub min_p: Option<f32>,
    pub logit_bias: Option<std::collections::HashMap<String, f32>>,
    pub response_format: Option<serde_json::Value>,
    /// Completions: how many alternatives to return with each token's log probability.
    pub logprobs: Option<u32>,
}

/// Sampling and streaming fields both endpoints share, moved out of either request (the
/// fields are repeated in both structs rather than flattened: serde's `flatten` buffers every
/// field and loses the path of a type error).
#[derive(Debug, Default)]
pub(crate) struct CommonParams {
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub max_tokens: Option<u32>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub seed: Option<Seed>,
    pub n: Option<u32>,
    pub stop: Option<StopStrings>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub min_tokens: Option<u32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub min_p: Option<f32>,
    pub logit_bias: Option<std::collections::HashMap<String, f32>>,
    pub response_format: Option<serde_json::Value>,
    /// Alternatives per token when log probabilities are wanted (chat's `top_logprobs`,
    /// completions' `logprobs`); `None`: no log probabilities.
    pub logprobs: Option<u32>,
}

macro_rules! take_common_params {
    ($request:expr) => {
        CommonParams {
            stream: $request.stream.take(),
            stream_options: $request.stream_options.take(),
            max_tokens: $request.max_tokens.take(),
            temperature: $request.temperature.take(),
            top_p: $request.top_p.take(),
            top_k: $request.top_k.take(),
            seed: $request.seed.take(),
            n: $request.n.take(),
            stop: $request.stop.take(),
            stop_token_ids: $request.stop_token_ids.take(),
            ignore_eos: $request.ignore_eos.take(),
            min_tokens: $request.min_tokens.take(),
            presence_penalty: $request.presence_penalty.take(),
            frequency_penalty: $request.frequency_penalty.take(),
            repetition_penalty: $request.repetition_penalty.take(),
            min_p: $request.min_p.take(),
            logit_bias: $request.logit_bias.take(),
            response_format: $request.response_format.take(),
            logprobs: None,
        }
    };
}

impl ChatCompletionRequest {
    /// The chat template's inputs.
    pub fn chat_input(&self) -> ChatInput<'_> {
        ChatInput {
            messages: self.messages.as_deref().unwrap_or_default(),
            tools: self.tools.as_ref(),
            documents: self.documents.as_ref(),
            kwargs: self.chat_template_kwargs.as_ref(),
            add_generation_prompt: self.add_generation_prompt.unwrap_or(true),
            continue_final_message: self.continue_final_message.unwrap_or(false),
        }
    }

    /// Moves the shared fields out; `top_logprobs` without `logprobs: true` is a 400.
    pub fn take_params(&mut self) -> Result<CommonParams, Error> {
        let mut params = take_common_params!(self);
        params.logprobs = match (self.logprobs, self.top_logprobs) {
            (Some(true), top) => Some(top.unwrap_or(0)),
            (_, None | Some(0)) => None,
            (_, Some(_)) => {
                return Err(Error::invalid(
                    "top_logprobs",
                    "top_logprobs needs logprobs set to true",
                ));
            }
        };
        Ok(params)
    }
}

impl CompletionRequest {
    /// Moves the shared fields out.
    pub fn take_params(&mut self) -> CommonParams {
        let mut params = take_common_params!(self);
        params.logprobs = self.logprobs.take();
        params
    }
}

/// Switchyard's opt-in extension fields (named as Dynamo names them).
#[derive(Debug, Default, Clone, Copy, Deserialize, ToSchema)]
pub(crate) struct NvextRequest {
    /// Return the serving worker, the request's timing and its cached tokens.
    #[serde(default)]
    pub timing: bool,
}

#[derive(Debug, Default, Deserialize, ToSchema)]
pub(crate) struct StreamOptions {
    pub include_usage: Option<bool>,
}

/// `stop`: one string or a list of them.
#[derive(Debug, Default)]
pub(crate) struct StopStrings(pub Vec<String>);

impl<'de> Deserialize<'de> for StopStrings {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct StopVisitor;
        impl<'de> Visitor<'de> for StopVisitor {
            type Value = StopStrings;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(StopStrings(vec![v.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(StopStrings)
            }
        }
        deserializer.deserialize_any(StopVisitor)
    }
}

/// `seed`: any JSON integer; a negative one keeps its bits, so equal seeds stay equal.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seed(pub u64);

impl<'de> Deserialize<'de> for Seed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SeedVisitor;
        impl Visitor<'_> for SeedVisitor {
            type Value = Seed;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Seed(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Seed(v.cast_unsigned()))
            }
        }
        deserializer.deserialize_any(SeedVisitor)
    }
}

/// `prompt` of a completion: text or token ids, or a list holding several of those.
#[derive(Debug)]
pub(crate) enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    /// More than one prompt (`["a", "b"]`, `[[1], [2]]`); each is kept so that a single-item
    /// list still works.
    Batch(Vec<PromptItem>),
}

#[derive(Debug)]
pub(crate) enum PromptItem {
    Text(String),
    Tokens(Vec<u32>),
}

impl<'de> Deserialize<'de> for PromptItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemVisitor;
        impl<'de> Visitor<'de> for ItemVisitor {
            type Value = PromptItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a list of token ids")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(PromptItem::Text(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(PromptItem::Tokens)
            }
        }
        deserializer.deserialize_any(ItemVisitor)
    }
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PromptVisitor;
        impl<'de> Visitor<'de> for PromptVisitor {
            type Value = Prompt;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a list of token ids, or a list of those")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Prompt::Text(v.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut tokens = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                let mut batch = Vec::new();
                while let Some(element) = seq.next_element::<TokenOrItem>()? {
                    match element {
                        TokenOrItem::Token(id) if batch.is_empty() => tokens.push(id),
                        TokenOrItem::Item(item) if tokens.is_empty() => batch.push(item),
                        _ => {
                            return Err(de::Error::custom(
                                "a prompt list must hold only token ids or only prompts",
                            ));
                        }
                    }
                }
                Ok(if batch.is_empty() { Prompt::Tokens(tokens) } else { Prompt::Batch(batch) })
            }
        }
        deserializer.deserialize_any(PromptVisitor)
    }
}

/// An element of a prompt list: a token id, or a prompt of its own.
enum TokenOrItem {
    Token(u32),
    Item(PromptItem),
}

impl<'de> Deserialize<'de> for TokenOrItem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ElementVisitor;
        impl<'de> Visitor<'de> for ElementVisitor {
            type Value = TokenOrItem;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a token id, a string, or a list of token ids")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(TokenOrItem::Token)
                    .map_err(|_| E::custom(format!("token id {v} is out of range")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                u32::try_from(v)
                    .map(TokenOrItem::Token)
                    .map_err(|_| E::custom(format!("token id {v} is out of range")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(TokenOrItem::Item(PromptItem::Text(v.to_owned())))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Deserialize::deserialize(de::value::SeqAccessDeserializer::new(seq))
                    .map(|ids| TokenOrItem::Item(PromptItem::Tokens(ids)))
            }
        }
        deserializer.deserialize_any(ElementVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ChatCompletionRequest, Error> {
        parse(body.as_bytes())
    }

    #[test]
    fn wrong_types_name_the_field() {
        let Err(Error::InvalidRequest { param, message }) =
            chat(r#"{"model":"m","messages":[],"temperature":"hot"}"#)
        else {
            panic!("expected a 400");
        };
        assert_eq!(param.as_deref(), Some("temperature"));
        assert!(message.contains("temperature"), "{message}");
    }

    #[test]
    fn malformed_json_and_non_objects_are_rejected() {
        assert!(matches!(chat("{\"model\":"), Err(Error::InvalidRequest { param: None, .. })));
        assert!(matches!(chat("[1,2]"), Err(Error::InvalidRequest { param: None, .. })));
        assert!(matches!(chat("{} x"), Err(Error::InvalidRequest { param: None, .. })));
    }

    #[test]
    fn stop_and_seed_forms() {
        let mut req = chat(r#"{"stop":"x","seed":-1}"#).expect("parses");
        let params = req.take_params().expect("valid");
        assert_eq!(params.stop.expect("stop").0, vec!["x".to_owned()]);
        assert_eq!(params.seed.expect("seed").0, u64::MAX);
        let req = chat(r#"{"stop":["a","b"],"seed":7}"#).expect("parses");
        assert_eq!(req.stop.expect("stop").0.len(), 2);
        assert!(chat(r#"{"stop":3}"#).is_err());
    }

    #[test]
    fn prompt_forms() {
        let parse_prompt = |s: &str| parse::<CompletionRequest>(s.as_bytes()).map(|r| r.prompt);
        assert!(matches!(parse_prompt(r#"{"prompt":"hi"}"#), Ok(Some(Prompt::Text(_)))));
        assert!(
            matches!(parse_prompt(r#"{"prompt":[1,2,3]}"#), Ok(Some(Prompt::Tokens(t))) if t == [1, 2, 3])
        );
        assert!(
            matches!(parse_prompt(r#"{"prompt":["a","b"]}"#), Ok(Some(Prompt::Batch(b))) if b.len() == 2)
        );
        assert!(
            matches!(parse_prompt(r#"{"prompt":[[1],[2]]}"#), Ok(Some(Prompt::Batch(b))) if b.len() == 2)
        );
        assert!(parse_prompt(r#"{"prompt":[1,"a"]}"#).is_err());
        assert!(parse_prompt(r#"{"prompt":[-1]}"#).is_err());
    }
}
