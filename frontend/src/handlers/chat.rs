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
use crate::openai::params::{RequestParams, validate};
use crate::openai::request::{ChatCompletionRequest, parse};
use crate::parsers::{OutputParser, ParseOptions, prompt_opens_reasoning};
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
    let mut request: ChatCompletionRequest = parse(&body)?;
    let params = validate(request.take_params()?, request.max_completion_tokens)?;
    if request.messages.is_none() {
        return Err(Error::invalid("messages", "`messages` is required"));
    }
    let chat = ChatRequest {
        model: request.model.as_deref(),
        input: request.chat_input(),
        tool_choice: request.tool_choice.as_ref(),
        nvext: request.nvext.is_some_and(|n| n.timing),
    };
    prepare_chat(state, tracker, chat, params).await
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
    params: RequestParams,
) -> Result<Prepared, Error> {
    let entry = lookup(state, chat.model)?;
    tracker.set_model(entry.metrics.clone());
    let preprocessor = entry.preprocessor.get().await?;
    let prompt = preprocessor.render_chat(&chat.input)?;
    let token_ids = preprocessor.encode(&prompt, false)?;
    if token_ids.is_empty() {
        return Err(Error::invalid("messages", "the rendered prompt is empty"));
    }
    let options = ParseOptions {
        tools: parse_tool_calls(chat.input.tools, chat.tool_choice)?,
        prompt_opens_reasoning: prompt_opens_reasoning(&prompt),
    };
    let output = ChatOutput::new(OutputParser::new(entry.parsers, options));
    Ok(Prepared {
        entry,
        preprocessor,
        token_ids,
        params,
        prompt_param: "messages",
        output,
        nvext: chat.nvext,
    })
}

/// Whether to look for tool calls in the output: tools were offered and `tool_choice` lets
/// the model choose. `required` and a named function need constrained decoding, which no
/// engine of this frontend is asked for yet: a 400 rather than a silent `auto`.
pub(crate) fn parse_tool_calls(
    tools: Option<&minijinja::Value>,
    tool_choice: Option<&serde_json::Value>,
) -> Result<bool, Error> {
    let offered = tools.is_some_and(|t| t.len().is_some_and(|n| n > 0));
    match tool_choice {
        None | Some(serde_json::Value::Null) => Ok(offered),
        Some(serde_json::Value::String(choice)) if choice == "auto" => Ok(offered),
        Some(serde_json::Value::String(choice)) if choice == "none" => Ok(false),
        Some(serde_json::Value::String(choice)) if choice == "required" => Err(Error::invalid(
            "tool_choice",
            "tool_choice `required` needs constrained decoding, which this model's engines do not offer; use `auto`",
        )),
        Some(serde_json::Value::Object(_)) => Err(Error::invalid(
            "tool_choice",
            "a named tool_choice needs constrained decoding, which this model's engines do not offer; use `auto`",
        )),
        Some(other) => Err(Error::invalid(
            "tool_choice",
            format!("tool_choice must be `none`, `auto`, `required` or an object, got {other}"),
        )),
    }
}
