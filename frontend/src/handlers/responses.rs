//! `POST /v1/responses`: OpenAI's Responses API, served as a chat underneath. The input items
//! become chat messages (instructions as the system message, function calls and their outputs
//! as tool turns), its function tools become chat tools, and the output goes through the
//! model's parsers into reasoning, message and function-call items. Nothing is stored, so
//! `previous_response_id` is refused.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use bytes::Bytes;
use minijinja::Value;
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::time::timeout_at;
use utoipa::ToSchema;

use super::chat::{ChatRequest, prepare_chat};
use super::{AppState, Prepared, body_bytes, deadline, launch, reject};
use crate::conversation::ChatInput;
use crate::error::Error;
use crate::metrics::{Endpoint, RequestTracker};
use crate::openai::params::validate;
use crate::openai::request::{CommonParams, NvextRequest, Seed, parse};
use crate::responses_output::{Echo, collect_responses, stream_responses};
use crate::stream::ApiKind;

/// `POST /v1/responses`.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct ResponsesRequest {
    #[schema(required)]
    pub model: Option<String>,
    /// A string (one user message) or a list of input items.
    #[schema(value_type = String, required)]
    pub input: Option<Json>,
    pub instructions: Option<String>,
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<u32>,
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f32>,
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f32>,
    #[schema(value_type = Option<i64>)]
    pub seed: Option<Seed>,
    pub stream: Option<bool>,
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Vec<Json>>,
    #[schema(value_type = Option<Value>)]
    pub tool_choice: Option<Json>,
    pub parallel_tool_calls: Option<bool>,
    pub previous_response_id: Option<String>,
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Json>,
    pub nvext: Option<NvextRequest>,
}

#[utoipa::path(post, path = "/v1/responses", request_body = ResponsesRequest,
    responses((status = 200, description = "A response object, or its stream events"),
              (status = 400, description = "Invalid request", body = crate::openapi::ErrorResponse),
              (status = 404, description = "Unknown model", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn responses(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut tracker = RequestTracker::start(Endpoint::Responses);
    let deadline = deadline(&state, &tracker);
    let (prepared, echo) = match timeout_at(deadline, prepare(&state, body, &mut tracker)).await {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(e)) => return reject(e, tracker),
        Err(_) => return reject(Error::Timeout { after: state.config.request_timeout }, tracker),
    };
    let launched = match launch(&state, prepared, tracker, deadline, ApiKind::Responses).await {
        Ok(launched) => launched,
        Err(response) => return response,
    };
    if launched.stream {
        stream_responses(launched.generation, launched.shaping, echo).await
    } else {
        collect_responses(launched.generation, launched.shaping, echo).await
    }
}

async fn prepare(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    tracker: &mut RequestTracker,
) -> Result<(Prepared, Echo), Error> {
    let body = body_bytes(body, state.config.max_body_bytes)?;
    let request: ResponsesRequest = parse(&body)?;
    if request.previous_response_id.is_some() {
        return Err(Error::invalid(
            "previous_response_id",
            "responses are not stored; send the whole conversation in `input`",
        ));
    }
    if request.max_output_tokens == Some(0) {
        return Err(Error::invalid("max_output_tokens", "max_output_tokens must be at least 1"));
    }
    let common = CommonParams {
        stream: request.stream,
        max_tokens: request.max_output_tokens,
        temperature: request.temperature,
        top_p: request.top_p,
        seed: request.seed,
        ..CommonParams::default()
    };
    let mut params = validate(common, None)?;
    params.max_tokens_param = "max_output_tokens";
    let messages = input_messages(request.instructions.as_deref(), request.input.as_ref())?;
    let tools = request.tools.as_deref().map(chat_tools).transpose()?;
    let echo = Echo {
        instructions: request.instructions.clone(),
        tools: request.tools.clone().unwrap_or_default(),
        tool_choice: request.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        parallel_tool_calls: request.parallel_tool_calls.unwrap_or(true),
        temperature: request.temperature,
        top_p: request.top_p,
        max_output_tokens: request.max_output_tokens,
        metadata: request.metadata.clone().unwrap_or_else(|| json!({})),
    };
    let tool_choice = request.tool_choice.as_ref().map(chat_tool_choice);
    let chat = ChatRequest {
        model: request.model.as_deref(),
        input: ChatInput {
            messages: &messages,
            tools: tools.as_ref(),
            documents: None,
            kwargs: None,
            add_generation_prompt: true,
            continue_final_message: false,
        },
        tool_choice: tool_choice.as_ref(),
        nvext: request.nvext.is_some_and(|n| n.timing),
    };
    let prepared = prepare_chat(state, tracker, chat, params).await?;
    Ok((prepared, echo))
}

/// The conversation as chat messages.
fn input_messages(instructions: Option<&str>, input: Option<&Json>) -> Result<Vec<Value>, Error> {
    let mut messages = Vec::new();
    if let Some(instructions) = instructions {
        messages.push(json!({"role": "system", "content": instructions}));
    }
    match input {
        None | Some(Json::Null) => return Err(Error::invalid("input", "`input` is required")),
        Some(Json::String(text)) => messages.push(json!({"role": "user", "content": text})),
        Some(Json::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                add_item(&mut messages, i, item)?;
            }
        }
        Some(_) => {
            return Err(Error::invalid("input", "`input` must be a string or a list of items"));
        }
    }
    Ok(messages.iter().map(Value::from_serialize).collect())
}

/// One input item onto the chat messages.
fn add_item(messages: &mut Vec<Json>, index: usize, item: &Json) -> Result<(), Error> {
    let param = |field: &str| format!("input[{index}]{field}");
    let kind = item.get("type").and_then(Json::as_str).unwrap_or("message");
    match kind {
        "message" => {
            let role = item
                .get("role")
                .and_then(Json::as_str)
                .ok_or_else(|| Error::invalid(param(".role"), "a message needs a `role`"))?;
            let role = if role == "developer" { "system" } else { role };
            let content = match item.get("content") {
                Some(Json::String(text)) => text.clone(),
                Some(Json::Array(parts)) => {
                    let mut texts = Vec::with_capacity(parts.len());
                    for (j, part) in parts.iter().enumerate() {
                        let text_kind = part.get("type").and_then(Json::as_str);
                        match (text_kind, part.get("text").and_then(Json::as_str)) {
                            (Some("input_text" | "output_text" | "text"), Some(text)) => {
                                texts.push(text);
                            }
                            (other, _) => {
                                return Err(Error::invalid(
                                    param(&format!(".content[{j}].type")),
                                    format!(
                                        "content part type {} is not supported; only text is",
                                        other.unwrap_or("(none)")
                                    ),
                                ));
                            }
                        }
                    }
                    texts.join("\n")
                }
                _ => {
                    return Err(Error::invalid(
                        param(".content"),
                        "a message needs `content`: a string or a list of text parts",
                    ));
                }
            };
            messages.push(json!({"role": role, "content": content}));
        }
        "function_call" => {
            let field = |name: &str| {
                item.get(name).and_then(Json::as_str).ok_or_else(|| {
                    Error::invalid(
                        param(&format!(".{name}")),
                        format!("a function call needs `{name}`"),
                    )
                })
            };
            let call = json!({
                "id": field("call_id")?,
                "type": "function",
                "function": {"name": field("name")?, "arguments": field("arguments")?},
            });
            // Consecutive calls belong to one assistant turn.
            match messages.last_mut() {
                Some(last)
                    if last["role"] == "assistant"
                        && last.get("tool_calls").is_some_and(Json::is_array) =>
                {
                    if let Some(calls) = last["tool_calls"].as_array_mut() {
                        calls.push(call);
                    }
                }
                _ => messages
                    .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
            }
        }
        "function_call_output" => {
            let call_id = item.get("call_id").and_then(Json::as_str).ok_or_else(|| {
                Error::invalid(param(".call_id"), "a function call output needs `call_id`")
            })?;
            let output = match item.get("output") {
                Some(Json::String(text)) => text.clone(),
                Some(other) => other.to_string(),
                None => String::new(),
            };
            messages.push(json!({"role": "tool", "tool_call_id": call_id, "content": output}));
        }
        // Earlier reasoning is not sent back to the model (chat templates drop it too).
        "reasoning" => {}
        other => {
            return Err(Error::invalid(
                param(".type"),
                format!("input item type `{other}` is not supported"),
            ));
        }
    }
    Ok(())
}

/// Responses function tools (`{type, name, description, parameters}`) as chat tools.
fn chat_tools(tools: &[Json]) -> Result<Value, Error> {
    let mut out = Vec::with_capacity(tools.len());
    for (i, tool) in tools.iter().enumerate() {
        if tool.get("type").and_then(Json::as_str) != Some("function") {
            return Err(Error::invalid(
                format!("tools[{i}].type"),
                "only `function` tools are supported",
            ));
        }
        let name = tool.get("name").and_then(Json::as_str).ok_or_else(|| {
            Error::invalid(format!("tools[{i}].name"), "a function tool needs `name`")
        })?;
        let mut function = serde_json::Map::new();
        function.insert("name".into(), json!(name));
        if let Some(description) = tool.get("description").filter(|d| !d.is_null()) {
            function.insert("description".into(), description.clone());
        }
        if let Some(parameters) = tool.get("parameters").filter(|p| !p.is_null()) {
            function.insert("parameters".into(), parameters.clone());
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(Value::from_serialize(out))
}

/// A Responses `tool_choice` in chat's shape (`{"type": "function", "name": …}` becomes
/// `{"type": "function", "function": {"name": …}}`).
fn chat_tool_choice(choice: &Json) -> Json {
    match choice.get("name") {
        Some(name) => json!({"type": "function", "function": {"name": name}}),
        None => choice.clone(),
    }
}
