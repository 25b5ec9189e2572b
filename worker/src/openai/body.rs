//! Request bodies, one shape per engine: the prompt (token ids, or text where the engine takes
//! only text) and the sampling and output parameters under the names that engine documents.
//! A parameter an engine cannot honour is refused here with an error naming it.

use serde_json::{Map, Value, json};
use switchyard_proto::SamplingParams;

use super::Flavour;
use crate::Error;

/// What a request sends as its prompt.
#[derive(Debug, Clone)]
pub(crate) enum Prompt<'a> {
    Tokens(&'a [u32]),
    Text(String),
}

impl Prompt<'_> {
    fn to_json(&self) -> Value {
        match self {
            Prompt::Tokens(ids) => json!(ids),
            Prompt::Text(text) => json!(text),
        }
    }
}

/// The endpoint a flavour generates on.
pub(crate) fn generate_path(flavour: Flavour) -> &'static str {
    match flavour {
        Flavour::Llamacpp => "/completion",
        Flavour::Sglang => "/generate",
        Flavour::Openai | Flavour::Vllm | Flavour::Trtllm => "/v1/completions",
    }
}

/// Refuses what `flavour` cannot honour, naming the parameter.
pub(crate) fn check(flavour: Flavour, sampling: &SamplingParams) -> Result<(), Error> {
    if sampling.logprobs.is_some() && !flavour.returns_token_ids() {
        return Err(Error::param(
            "logprobs",
            format!(
                "log probabilities are not supported with the {flavour} engine (it returns text, not token ids)"
            ),
        ));
    }
    if flavour == Flavour::Llamacpp && sampling.min_tokens > 0 {
        return Err(Error::param("min_tokens", "min_tokens is not supported by llama.cpp"));
    }
    if !sampling.response_format.is_empty() {
        response_format(&sampling.response_format)?;
    }
    Ok(())
}

/// The request body for `flavour`: `max_tokens` new tokens after `prompt`.
pub(crate) fn build(
    flavour: Flavour,
    model: &str,
    prompt: &Prompt<'_>,
    sampling: &SamplingParams,
    max_tokens: u32,
    stream: bool,
) -> Result<Value, Error> {
    let format = if sampling.response_format.is_empty() {
        None
    } else {
        response_format(&sampling.response_format)?
    };
    let mut body = Map::new();
    let mut put = |key: &str, value: Value| {
        body.insert(key.to_owned(), value);
    };
    match flavour {
        Flavour::Llamacpp => {
            put("prompt", prompt.to_json());
            put("n_predict", json!(max_tokens));
            put("stream", json!(stream));
            put("return_tokens", json!(true));
            put("cache_prompt", json!(true));
            common_sampling(&mut put, sampling, "repeat_penalty");
            if let Some(k) = sampling.logprobs {
                // The sampled token's own probability comes only with at least one candidate.
                put("n_probs", json!(k.max(1)));
                put("post_sampling_probs", json!(false));
            }
            if !sampling.logit_bias.is_empty() {
                let pairs: Vec<Value> =
                    sampling.logit_bias.iter().map(|(id, bias)| json!([id, bias])).collect();
                put("logit_bias", Value::Array(pairs));
            }
            if let Some(format) = &format {
                put("json_schema", format.schema());
            }
        }
        Flavour::Sglang => {
            put("input_ids", prompt.to_json());
            put("stream", json!(stream));
            let mut params = Map::new();
            let mut p = |key: &str, value: Value| {
                params.insert(key.to_owned(), value);
            };
            p("max_new_tokens", json!(max_tokens));
            p("min_new_tokens", json!(sampling.min_tokens));
            common_sampling(&mut p, sampling, "repetition_penalty");
            if !sampling.stop_token_ids.is_empty() {
                p("stop_token_ids", json!(sampling.stop_token_ids));
            }
            if !sampling.logit_bias.is_empty() {
                p("logit_bias", string_keyed(sampling));
            }
            if let Some(format) = &format {
                p("json_schema", json!(format.schema().to_string()));
            }
            put("sampling_params", Value::Object(params));
            if let Some(k) = sampling.logprobs {
                put("return_logprob", json!(true));
                put("top_logprobs_num", json!(k));
            }
        }
        Flavour::Openai | Flavour::Vllm | Flavour::Trtllm => {
            put("model", json!(model));
            put("prompt", prompt.to_json());
            put("max_tokens", json!(max_tokens));
            put("stream", json!(stream));
            if stream {
                put("stream_options", json!({"include_usage": true}));
            }
            if sampling.min_tokens > 0 {
                put("min_tokens", json!(sampling.min_tokens));
            }
            if !sampling.stop_token_ids.is_empty() {
                put("stop_token_ids", json!(sampling.stop_token_ids));
            }
            common_sampling(&mut put, sampling, "repetition_penalty");
            if !sampling.logit_bias.is_empty() {
                put("logit_bias", string_keyed(sampling));
            }
            if let Some(format) = &format {
                put("response_format", format.object.clone());
            }
            if flavour == Flavour::Vllm {
                put("return_token_ids", json!(true));
                put("skip_special_tokens", json!(false));
                if let Some(k) = sampling.logprobs {
                    put("logprobs", json!(k));
                    put("return_tokens_as_token_ids", json!(true));
                }
            }
        }
    }
    Ok(Value::Object(body))
}

/// Sampling fields every flavour names alike (OpenAI's names plus `top_k`, `min_p`), and the
/// repetition penalty under the flavour's name.
fn common_sampling(put: &mut impl FnMut(&str, Value), s: &SamplingParams, repetition: &str) {
    if let Some(t) = s.temperature {
        put("temperature", json!(t));
    }
    if let Some(p) = s.top_p {
        put("top_p", json!(p));
    }
    if let Some(k) = s.top_k {
        put("top_k", json!(k));
    }
    if let Some(p) = s.min_p {
        put("min_p", json!(p));
    }
    if let Some(seed) = s.seed {
        // Engines take a signed 64-bit seed; the bits are what matter.
        put("seed", json!(seed.cast_signed()));
    }
    if let Some(p) = s.presence_penalty {
        put("presence_penalty", json!(p));
    }
    if let Some(p) = s.frequency_penalty {
        put("frequency_penalty", json!(p));
    }
    if let Some(p) = s.repetition_penalty {
        put(repetition, json!(p));
    }
    if s.ignore_eos {
        put("ignore_eos", json!(true));
    }
}

/// `logit_bias` as OpenAI writes it: `{"<token id>": bias}`.
fn string_keyed(s: &SamplingParams) -> Value {
    let map: Map<String, Value> =
        s.logit_bias.iter().map(|(id, bias)| (id.to_string(), json!(bias))).collect();
    Value::Object(map)
}

/// A parsed `response_format` that constrains the output.
#[derive(Debug, Clone)]
pub(crate) struct ResponseFormat {
    /// The object as the client sent it.
    object: Value,
    /// The JSON schema it asks for (`{"type":"object"}` for `json_object`).
    schema: Value,
}

impl ResponseFormat {
    fn schema(&self) -> Value {
        self.schema.clone()
    }
}

/// Parses OpenAI's `response_format`; `None` for `{"type":"text"}`.
fn response_format(raw: &str) -> Result<Option<ResponseFormat>, Error> {
    let bad = |message: String| Error::param("response_format", message);
    let object: Value = serde_json::from_str(raw)
        .map_err(|e| bad(format!("response_format is not valid JSON: {e}")))?;
    let kind = object.get("type").and_then(Value::as_str).unwrap_or_default();
    let schema = match kind {
        "text" => return Ok(None),
        "json_object" => json!({"type": "object"}),
        "json_schema" => object
            .get("json_schema")
            .and_then(|s| s.get("schema"))
            .cloned()
            .ok_or_else(|| bad("response_format.json_schema.schema is required".into()))?,
        other => {
            return Err(bad(format!(
                "response_format type `{other}` is not supported; use text, json_object or json_schema"
            )));
        }
    };
    Ok(Some(ResponseFormat { object, schema }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampling() -> SamplingParams {
        SamplingParams {
            max_tokens: 8,
            temperature: Some(0.0),
            repetition_penalty: Some(1.1),
            logprobs: Some(2),
            logit_bias: [(5, -100.0)].into_iter().collect(),
            response_format:
                r#"{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object"}}}"#
                    .into(),
            ..SamplingParams::default()
        }
    }

    #[test]
    fn each_flavour_names_the_parameters_its_way() {
        let ids = [1u32, 2, 3];
        let s = sampling();
        let llama =
            build(Flavour::Llamacpp, "m", &Prompt::Tokens(&ids), &s, 8, true).expect("body");
        assert_eq!(llama["prompt"], json!([1, 2, 3]));
        assert_eq!(llama["n_predict"], json!(8));
        assert_eq!(llama["repeat_penalty"], json!(1.1f32));
        assert_eq!(llama["n_probs"], json!(2));
        assert_eq!(llama["logit_bias"], json!([[5, -100.0]]));
        assert_eq!(llama["json_schema"], json!({"type": "object"}));

        let vllm = build(Flavour::Vllm, "m", &Prompt::Tokens(&ids), &s, 8, true).expect("body");
        assert_eq!(vllm["return_token_ids"], json!(true));
        assert_eq!(vllm["logit_bias"], json!({"5": -100.0}));
        assert_eq!(vllm["response_format"]["type"], json!("json_schema"));
        assert_eq!(vllm["stream_options"]["include_usage"], json!(true));

        let sglang = build(Flavour::Sglang, "m", &Prompt::Tokens(&ids), &s, 8, true).expect("b");
        assert_eq!(sglang["input_ids"], json!([1, 2, 3]));
        assert_eq!(sglang["sampling_params"]["max_new_tokens"], json!(8));
        assert_eq!(sglang["top_logprobs_num"], json!(2));
    }

    #[test]
    fn what_an_engine_cannot_honour_is_refused_by_name() {
        let s = sampling();
        let param = |r: Result<(), Error>| r.err().and_then(|e| e.param_name().map(String::from));
        assert_eq!(param(check(Flavour::Trtllm, &s)).as_deref(), Some("logprobs"));
        let min = SamplingParams { min_tokens: 2, ..SamplingParams::default() };
        assert_eq!(param(check(Flavour::Llamacpp, &min)).as_deref(), Some("min_tokens"));
        let bad = SamplingParams { response_format: "{\"type\":\"xml\"}".into(), ..min };
        assert_eq!(param(check(Flavour::Vllm, &bad)).as_deref(), Some("response_format"));
        assert!(check(Flavour::Vllm, &s).is_ok());
    }
}
