//! Validation of the sampling and streaming fields into what the worker is sent: every range
//! checked once, each failure a 400 naming its field.

use crate::error::Error;
use crate::openai::request::CommonParams;

/// Stop strings accepted per request; bounds the work of matching them on every token.
const MAX_STOP_STRINGS: usize = 32;
/// Most alternatives per token in log probabilities (OpenAI's limit for chat).
const MAX_TOP_LOGPROBS: u32 = 20;

/// The validated fields of a request.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestParams {
    pub stream: bool,
    pub include_usage: bool,
    /// As requested; `None` means "the rest of the context" (see [`resolve_max_tokens`]).
    pub max_tokens: Option<u32>,
    /// The field `max_tokens` came from, for error messages.
    pub max_tokens_param: &'static str,
    pub min_tokens: u32,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// `None` when disabled (`-1`, `0` or absent).
    pub top_k: Option<i32>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub min_p: Option<f32>,
    pub logit_bias: std::collections::HashMap<u32, f32>,
    /// Alternatives per token when log probabilities are wanted.
    pub logprobs: Option<u32>,
    /// `response_format` as JSON; empty for none.
    pub response_format: String,
}

/// Checks `params`; `max_completion_tokens` (chat only) wins over `max_tokens`.
pub(crate) fn validate(
    params: CommonParams,
    max_completion_tokens: Option<u32>,
) -> Result<RequestParams, Error> {
    match params.n {
        None | Some(1) => {}
        Some(0) => return Err(Error::invalid("n", "n must be 1")),
        Some(n) => {
            return Err(Error::invalid(
                "n",
                format!("n = {n} is not supported; only n = 1 is (send one request per choice)"),
            ));
        }
    }
    let (max_tokens, max_tokens_param) = match max_completion_tokens {
        Some(m) => (Some(m), "max_completion_tokens"),
        None => (params.max_tokens, "max_tokens"),
    };
    if max_tokens == Some(0) {
        return Err(Error::invalid(
            max_tokens_param,
            format!("{max_tokens_param} must be at least 1"),
        ));
    }
    if let Some(t) = params.temperature
        && !(0.0..=2.0).contains(&t)
    {
        return Err(Error::invalid(
            "temperature",
            format!("temperature must be in [0, 2], got {t}"),
        ));
    }
    if let Some(p) = params.top_p
        && !(p > 0.0 && p <= 1.0)
    {
        return Err(Error::invalid("top_p", format!("top_p must be in (0, 1], got {p}")));
    }
    let top_k = match params.top_k {
        None | Some(-1 | 0) => None,
        Some(k) if k > 0 => Some(k),
        Some(k) => {
            return Err(Error::invalid(
                "top_k",
                format!("top_k must be -1 (off) or positive, got {k}"),
            ));
        }
    };
    let min_tokens = params.min_tokens.unwrap_or(0);
    if let Some(max) = max_tokens
        && min_tokens > max
    {
        return Err(Error::invalid(
            "min_tokens",
            format!("min_tokens ({min_tokens}) must not exceed {max_tokens_param} ({max})"),
        ));
    }
    let mut stop = params.stop.map(|s| s.0).unwrap_or_default();
    // An empty stop string would end every response at once; treat it as absent.
    stop.retain(|s| !s.is_empty());
    if stop.len() > MAX_STOP_STRINGS {
        return Err(Error::invalid(
            "stop",
            format!("at most {MAX_STOP_STRINGS} stop strings are supported, got {}", stop.len()),
        ));
    }
    for (name, value, range) in [
        ("presence_penalty", params.presence_penalty, -2.0..=2.0),
        ("frequency_penalty", params.frequency_penalty, -2.0..=2.0),
        ("min_p", params.min_p, 0.0..=1.0),
    ] {
        if let Some(v) = value
            && !range.contains(&v)
        {
            return Err(Error::invalid(
                name,
                format!("{name} must be in [{}, {}], got {v}", range.start(), range.end()),
            ));
        }
    }
    if let Some(p) = params.repetition_penalty
        && !(p > 0.0 && p <= 2.0)
    {
        return Err(Error::invalid(
            "repetition_penalty",
            format!("repetition_penalty must be in (0, 2], got {p}"),
        ));
    }
    let mut logit_bias = std::collections::HashMap::new();
    for (key, bias) in params.logit_bias.unwrap_or_default() {
        let id: u32 = key.parse().map_err(|_| {
            Error::invalid("logit_bias", format!("logit_bias keys are token ids, got `{key}`"))
        })?;
        if !(-100.0..=100.0).contains(&bias) {
            return Err(Error::invalid(
                "logit_bias",
                format!("logit_bias values must be in [-100, 100], got {bias} for token {id}"),
            ));
        }
        logit_bias.insert(id, bias);
    }
    if let Some(k) = params.logprobs
        && k > MAX_TOP_LOGPROBS
    {
        return Err(Error::invalid(
            "logprobs",
            format!("at most {MAX_TOP_LOGPROBS} alternatives per token are supported, got {k}"),
        ));
    }
    let response_format = match params.response_format {
        None => String::new(),
        Some(format) => match format.get("type").and_then(serde_json::Value::as_str) {
            Some("text") => String::new(),
            Some("json_object" | "json_schema") => format.to_string(),
            _ => {
                return Err(Error::invalid(
                    "response_format",
                    "response_format.type must be text, json_object or json_schema",
                ));
            }
        },
    };
    Ok(RequestParams {
        stream: params.stream.unwrap_or(false),
        include_usage: params.stream_options.and_then(|o| o.include_usage).unwrap_or(false),
        max_tokens,
        max_tokens_param,
        min_tokens,
        temperature: params.temperature,
        top_p: params.top_p,
        top_k,
        seed: params.seed.map(|s| s.0),
        stop,
        stop_token_ids: params.stop_token_ids.unwrap_or_default(),
        ignore_eos: params.ignore_eos.unwrap_or(false),
        presence_penalty: params.presence_penalty,
        frequency_penalty: params.frequency_penalty,
        repetition_penalty: params.repetition_penalty,
        min_p: params.min_p,
        logit_bias,
        logprobs: params.logprobs,
        response_format,
    })
}

/// The `max_tokens` sent to the worker: as requested if prompt and completion fit the context,
/// else a 400; when not requested, the rest of the context up to `default_cap`.
/// `prompt_param` names the field holding the prompt (`messages` or `prompt`).
pub(crate) fn resolve_max_tokens(
    params: &RequestParams,
    prompt_tokens: usize,
    context_length: Option<u32>,
    default_cap: u32,
    prompt_param: &'static str,
) -> Result<u32, Error> {
    let Some(context) = context_length.filter(|&c| c > 0) else {
        return Ok(params.max_tokens.unwrap_or(default_cap));
    };
    let context = context as usize;
    if prompt_tokens >= context {
        return Err(Error::invalid(
            prompt_param,
            format!(
                "this model's maximum context length is {context} tokens, and the prompt has \
                 {prompt_tokens}; shorten the prompt"
            ),
        ));
    }
    let room = context - prompt_tokens;
    match params.max_tokens {
        Some(max) if max as usize > room => Err(Error::invalid(
            params.max_tokens_param,
            format!(
                "this model's maximum context length is {context} tokens, but {} were requested \
                 ({prompt_tokens} in the prompt, {max} for the completion); lower {} or shorten \
                 the prompt",
                prompt_tokens + max as usize,
                params.max_tokens_param
            ),
        )),
        Some(max) => Ok(max),
        // `room` < context ≤ u32::MAX, so the conversion cannot fail; the cap is the fallback.
        None => Ok(u32::try_from(room).unwrap_or(default_cap).min(default_cap)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openai::request::{Seed, StopStrings};

    fn param_of(result: Result<RequestParams, Error>) -> Option<String> {
        match result {
            Err(Error::InvalidRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn ranges_are_checked_per_field() {
        let p = |f: fn(&mut CommonParams)| {
            let mut c = CommonParams::default();
            f(&mut c);
            validate(c, None)
        };
        assert_eq!(param_of(p(|c| c.temperature = Some(2.5))).as_deref(), Some("temperature"));
        assert_eq!(param_of(p(|c| c.temperature = Some(-0.1))).as_deref(), Some("temperature"));
        assert_eq!(param_of(p(|c| c.top_p = Some(0.0))).as_deref(), Some("top_p"));
        assert_eq!(param_of(p(|c| c.top_p = Some(1.5))).as_deref(), Some("top_p"));
        assert_eq!(param_of(p(|c| c.top_k = Some(-2))).as_deref(), Some("top_k"));
        assert_eq!(param_of(p(|c| c.max_tokens = Some(0))).as_deref(), Some("max_tokens"));
        assert_eq!(param_of(p(|c| c.n = Some(2))).as_deref(), Some("n"));
        assert_eq!(
            param_of(p(|c| c.presence_penalty = Some(3.0))).as_deref(),
            Some("presence_penalty")
        );
        assert_eq!(param_of(p(|c| c.min_p = Some(1.5))).as_deref(), Some("min_p"));
        assert_eq!(
            param_of(p(|c| c.repetition_penalty = Some(0.0))).as_deref(),
            Some("repetition_penalty")
        );
        assert_eq!(
            param_of(p(|c| c.logit_bias = Some([("x".to_owned(), 1.0)].into()))).as_deref(),
            Some("logit_bias")
        );
        assert_eq!(
            param_of(p(|c| c.logit_bias = Some([("5".to_owned(), 101.0)].into()))).as_deref(),
            Some("logit_bias")
        );
        assert_eq!(param_of(p(|c| c.logprobs = Some(21))).as_deref(), Some("logprobs"));
        assert_eq!(
            param_of(p(|c| c.response_format = Some(serde_json::json!({"type": "xml"}))))
                .as_deref(),
            Some("response_format")
        );
        assert_eq!(
            param_of(p(|c| {
                c.max_tokens = Some(2);
                c.min_tokens = Some(3);
            }))
            .as_deref(),
            Some("min_tokens")
        );
        assert_eq!(
            param_of(validate(CommonParams::default(), Some(0))).as_deref(),
            Some("max_completion_tokens")
        );
    }

    #[test]
    fn valid_params_pass_through() {
        let c = CommonParams {
            temperature: Some(0.0),
            top_p: Some(1.0),
            top_k: Some(-1),
            seed: Some(Seed(3)),
            stop: Some(StopStrings(vec!["".into(), "END".into()])),
            max_tokens: Some(10),
            ..CommonParams::default()
        };
        let p = validate(c, Some(5)).expect("valid");
        assert_eq!(p.max_tokens, Some(5));
        assert_eq!(p.top_k, None);
        assert_eq!(p.stop, vec!["END".to_owned()]);
        assert_eq!(p.seed, Some(3));
    }

    #[test]
    fn context_length_bounds_the_request() {
        let mut p = RequestParams { max_tokens_param: "max_tokens", ..RequestParams::default() };
        assert_eq!(resolve_max_tokens(&p, 100, Some(1000), 8192, "messages").ok(), Some(900));
        assert_eq!(resolve_max_tokens(&p, 100, Some(100_000), 512, "messages").ok(), Some(512));
        assert_eq!(resolve_max_tokens(&p, 100, None, 512, "messages").ok(), Some(512));
        assert!(matches!(
            resolve_max_tokens(&p, 1000, Some(1000), 8192, "prompt"),
            Err(Error::InvalidRequest { param: Some(ref f), .. }) if f == "prompt"
        ));
        p.max_tokens = Some(901);
        assert!(matches!(
            resolve_max_tokens(&p, 100, Some(1000), 8192, "messages"),
            Err(Error::InvalidRequest { param: Some(ref f), .. }) if f == "max_tokens"
        ));
        p.max_tokens = Some(900);
        assert_eq!(resolve_max_tokens(&p, 100, Some(1000), 8192, "messages").ok(), Some(900));
    }
}
