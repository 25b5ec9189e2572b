//! `POST /v1/chat/completions`: parse, render the chat template, tokenize, then the shared
//! dispatch and response.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use bytes::Bytes;
use tokio::time::timeout_at;

use super::{AppState, Prepared, body_bytes, deadline, lookup, reject, respond};
use crate::chat_output::ChatOutput;
use crate::conversation::ChatInput;
use crate::error::Error;
use crate::metrics::{Endpoint, RequestTracker};
use crate::models::ModelEntry;
use crate::openai::params::{RequestParams, validate};
use crate::openai::request::{ChatCompletionRequest, parse};
use crate::parsers::{
    Forced, OutputParser, ParseOptions, forced_response_format, prompt_opens_reasoning,
};
use crate::stream::ApiKind;

#[utoipa::path(post, path = "/v1/chat/completions", request_body = ChatCompletionRequest,
    responses((status = 200, description = "A chat completion, or its stream of chunks"),
              (status = 400, description = "Invalid request", body = crate::openapi::ErrorResponse),
              (status = 404, description = "Unknown model", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut tracker = RequestTracker::start(Endpoint::Chat);
    let deadline = deadline(&state, &tracker);
    let prepared = match timeout_at(deadline, prepare(&state, body, &mut tracker)).await {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(e)) => return reject(e, tracker),
        Err(_) => {
            return reject(Error::Timeout { after: state.config.request_timeout }, tracker);
        }
    };
    respond(&state, prepared, tracker, deadline, ApiKind::Chat).await
}

async fn prepare(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    tracker: &mut RequestTracker,
) -> Result<Prepared, Error> {
    let body = body_bytes(body, state.config.max_body_bytes)?;
    let (request, params) = parse_chat(&body)?;
    let chat = ChatRequest {
        model: request.model.as_deref(),
        input: request.chat_input(),
        tool_choice: request.tool_choice.as_ref(),
        nvext: request.nvext.is_some_and(|n| n.timing),
    };
    prepare_chat(state, tracker, chat, params).await
}

/// The body of a chat completion request, parsed and its parameters checked.
pub(crate) fn parse_chat(body: &[u8]) -> Result<(ChatCompletionRequest, RequestParams), Error> {
    let mut request: ChatCompletionRequest = parse(body)?;
    let params = validate(request.take_params()?, request.max_completion_tokens)?;
    if request.messages.is_none() {
        return Err(Error::invalid("messages", "`messages` is required"));
    }
    Ok((request, params))
}

/// A chat request, from `/v1/chat/completions` or `/v1/responses`.
pub(crate) struct ChatRequest<'a> {
    pub model: Option<&'a str>,
    pub input: ChatInput<'a>,
    pub tool_choice: Option<&'a serde_json::Value>,
    pub nvext: bool,
}

/// Looks the model up, renders its chat template, tokenizes, and sets up its output parsers.
pub(crate) async fn prepare_chat(
    state: &AppState,
    tracker: &mut RequestTracker,
    chat: ChatRequest<'_>,
    mut params: RequestParams,
) -> Result<Prepared, Error> {
    let tool_mode = tool_mode(chat.input.tools, chat.tool_choice)?;
    let entry = lookup(state, chat.model)?;
    tracker.set_model(entry.metrics.clone());
    let preprocessor = entry.preprocessor.get().await?;
    let prompt = preprocessor.render_chat(&chat.input)?;
    let token_ids = preprocessor.encode_prompt(&prompt)?;
    if token_ids.is_empty() {
        return Err(Error::invalid("messages", "the rendered prompt is empty"));
    }
    let parser = match tool_mode {
        ToolMode::Forced(forced) => {
            params.response_format = forced_format(&forced, &chat, &params, &entry)?;
            Some(OutputParser::forced(forced))
        }
        mode => {
            let options = ParseOptions {
                tools: mode == ToolMode::Auto,
                prompt_opens_reasoning: prompt_opens_reasoning(&prompt.text),
            };
            OutputParser::new(entry.parsers, options)
        }
    };
    Ok(Prepared {
        entry,
        preprocessor,
        token_ids,
        params,
        prompt_param: "messages",
        output: ChatOutput::new(parser),
        nvext: chat.nvext,
    })
}

/// What a request's `tools` and `tool_choice` ask of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ToolMode {
    /// No tools offered, or `tool_choice: "none"`: all text.
    Off,
    /// The model may call a tool, in its own format (its card's parser reads them).
    Auto,
    /// The model must call: the engine is given a JSON schema of the calls.
    Forced(Forced),
}

fn tool_mode(
    tools: Option<&minijinja::Value>,
    tool_choice: Option<&serde_json::Value>,
) -> Result<ToolMode, Error> {
    let offered = tools.is_some_and(|t| t.len().is_some_and(|n| n > 0));
    let offered_mode = if offered { ToolMode::Auto } else { ToolMode::Off };
    let forced = |forced: Forced| {
        if offered {
            Ok(ToolMode::Forced(forced))
        } else {
            Err(Error::invalid("tool_choice", "a forced tool_choice needs `tools`"))
        }
    };
    match tool_choice {
        None | Some(serde_json::Value::Null) => Ok(offered_mode),
        Some(serde_json::Value::String(choice)) if choice == "auto" => Ok(offered_mode),
        Some(serde_json::Value::String(choice)) if choice == "none" => Ok(ToolMode::Off),
        Some(serde_json::Value::String(choice)) if choice == "required" => forced(Forced::Required),
        Some(object @ serde_json::Value::Object(_)) => {
            let name = object.pointer("/function/name").and_then(serde_json::Value::as_str);
            match name {
                Some(name) => forced(Forced::Named(name.to_owned())),
                None => Err(Error::invalid(
                    "tool_choice",
                    "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": …}}",
                )),
            }
        }
        Some(other) => Err(Error::invalid(
            "tool_choice",
            format!("tool_choice must be `none`, `auto`, `required` or an object, got {other}"),
        )),
    }
}

/// The `response_format` that enforces `forced` on the model's engines: they must offer
/// guided decoding, and the request must not ask for another format.
fn forced_format(
    forced: &Forced,
    chat: &ChatRequest<'_>,
    params: &RequestParams,
    entry: &ModelEntry,
) -> Result<String, Error> {
    if !entry.structured_output {
        return Err(Error::invalid(
            "tool_choice",
            "a forced tool_choice needs constrained decoding, which this model's engines do not \
             offer; use `auto`",
        ));
    }
    if !params.response_format.is_empty() {
        return Err(Error::invalid(
            "response_format",
            "response_format cannot be combined with a forced tool_choice",
        ));
    }
    let tools: Vec<serde_json::Value> = chat
        .input
        .tools
        .and_then(|t| serde_json::to_value(t).ok())
        .and_then(|t| t.as_array().cloned())
        .unwrap_or_default();
    let format = forced_response_format(forced, &tools)
        .map_err(|reason| Error::invalid("tool_choice", reason))?;
    Ok(format.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tool_choice_decides_how_the_output_is_read() {
        let tools = minijinja::Value::from_serialize(serde_json::json!([
            {"type": "function", "function": {"name": "weather"}}
        ]));
        let named = serde_json::json!({"type": "function", "function": {"name": "weather"}});
        let cases = [
            (None, None, Ok(ToolMode::Off)),
            (Some(&tools), None, Ok(ToolMode::Auto)),
            (Some(&tools), Some(serde_json::json!("none")), Ok(ToolMode::Off)),
            (
                Some(&tools),
                Some(serde_json::json!("required")),
                Ok(ToolMode::Forced(Forced::Required)),
            ),
            (
                Some(&tools),
                Some(named.clone()),
                Ok(ToolMode::Forced(Forced::Named("weather".into()))),
            ),
            (None, Some(serde_json::json!("required")), Err(())),
            (None, Some(named), Err(())),
            (Some(&tools), Some(serde_json::json!({"type": "function"})), Err(())),
            (Some(&tools), Some(serde_json::json!("always")), Err(())),
        ];
        for (tools, choice, want) in cases {
            let got = tool_mode(tools, choice.as_ref()).map_err(|_| ());
            assert_eq!(got, want, "{choice:?}");
        }
    }
}
