//! `/v1/responses` output: the response object (reasoning, message and function-call items,
//! usage) whole, or as the Responses API's typed stream events (`response.created`,
//! `response.output_item.added`, `response.output_text.delta`, …, `response.completed`).

use std::convert::Infallible;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde_json::{Value as Json, json};

use crate::generation::{Finish, Generation, Step};
use crate::openai::response::Nvext;
use crate::parsers::ToolCall;
use crate::stream::{Shaping, collect, event_stream_response, json_response};

/// What the response object repeats of its request.
#[derive(Debug, Clone)]
pub(crate) struct Echo {
    pub instructions: Option<String>,
    pub tools: Vec<Json>,
    pub tool_choice: Json,
    pub parallel_tool_calls: bool,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub max_output_tokens: Option<u32>,
    pub metadata: Json,
}

/// The response object with `status` and `output`.
fn response_object(
    shaping: &Shaping,
    echo: &Echo,
    status: &str,
    output: Vec<Json>,
    finish: Option<&Finish>,
    nvext: Option<&Nvext>,
) -> Json {
    let meta = &shaping.meta;
    let mut response = json!({
        "id": meta.id,
        "object": "response",
        "created_at": meta.created,
        "status": status,
        "model": meta.model,
        "output": output,
        "error": null,
        "incomplete_details": null,
        "instructions": echo.instructions,
        "tools": echo.tools,
        "tool_choice": echo.tool_choice,
        "parallel_tool_calls": echo.parallel_tool_calls,
        "temperature": echo.temperature,
        "top_p": echo.top_p,
        "max_output_tokens": echo.max_output_tokens,
        "metadata": echo.metadata,
        "previous_response_id": null,
        "reasoning": {"effort": null, "summary": null},
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "store": false,
        "usage": null,
    });
    if let Some(finish) = finish {
        let usage = &finish.usage;
        response["usage"] = json!({
            "input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.prompt_tokens_details.cached_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage.total_tokens,
        });
        if finish.reason == "length" {
            response["incomplete_details"] = json!({"reason": "max_output_tokens"});
        }
    }
    if let Some(nvext) = nvext {
        response["nvext"] = serde_json::to_value(nvext).unwrap_or(Json::Null);
    }
    response
}

fn status_of(finish: &Finish) -> &'static str {
    if finish.reason == "length" { "incomplete" } else { "completed" }
}

fn item_id(prefix: &str) -> String {
    format!("{prefix}_{:032x}", rand::random::<u128>())
}

fn reasoning_item(id: &str, text: &str) -> Json {
    json!({
        "type": "reasoning",
        "id": id,
        "summary": [],
        "content": [{"type": "reasoning_text", "text": text}],
        "status": "completed",
    })
}

fn message_item(id: &str, text: &str, status: &str) -> Json {
    let content = if status == "in_progress" { json!([]) } else { json!([text_part(text)]) };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn text_part(text: &str) -> Json {
    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []})
}

fn call_item(id: &str, call: &ToolCall, status: &str) -> Json {
    json!({
        "type": "function_call",
        "id": id,
        "call_id": call.id,
        "name": call.name,
        "arguments": if status == "in_progress" { "" } else { call.arguments.as_str() },
        "status": status,
    })
}

/// A whole response.
pub(crate) async fn collect_responses(
    mut generation: Generation,
    mut shaping: Shaping,
    echo: Echo,
) -> Response {
    let (collected, finish) = match collect(&mut generation, &mut shaping.output).await {
        Ok(done) => done,
        Err(error) => return error.into_response(),
    };
    let mut output = Vec::new();
    if !collected.reasoning.is_empty() {
        output.push(reasoning_item(&item_id("rs"), &collected.reasoning));
    }
    if !collected.content.trim().is_empty() || collected.tool_calls.is_empty() {
        output.push(message_item(&item_id("msg"), &collected.content, "completed"));
    }
    for call in &collected.tool_calls {
        output.push(call_item(&item_id("fc"), call, "completed"));
    }
    let nvext = shaping.nvext.then(|| generation.nvext(&finish.usage));
    let body =
        response_object(&shaping, &echo, status_of(&finish), output, Some(&finish), nvext.as_ref());
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

/// A streamed response. The first step is awaited before answering, so a request that fails
/// before any output gets a plain error status.
pub(crate) async fn stream_responses(
    mut generation: Generation,
    shaping: Shaping,
    echo: Echo,
) -> Response {
    let first = match generation.next_step().await {
        Some(Step::Failed(error)) => return error.into_response(),
        Some(first) => first,
        None => {
            return crate::error::Error::Internal("response ended before it began".into())
                .into_response();
        }
    };
    let events = EventWriter {
        generation,
        shaping,
        echo,
        first: Some(first),
        started: false,
        done: false,
        sequence: 0,
        output: Vec::new(),
        open: None,
    };
    let body = futures::stream::unfold(events, |mut events| async move {
        let frame = events.next_frame().await?;
        Some((Ok::<_, Infallible>(frame), events))
    });
    event_stream_response(Body::from_stream(body))
}

/// The item being streamed.
enum OpenItem {
    Reasoning { id: String, text: String },
    Message { id: String, text: String },
}

struct EventWriter {
    generation: Generation,
    shaping: Shaping,
    echo: Echo,
    first: Option<Step>,
    started: bool,
    done: bool,
    sequence: u64,
    /// Finished items, for the final response object.
    output: Vec<Json>,
    open: Option<OpenItem>,
}

impl EventWriter {
    async fn next_frame(&mut self) -> Option<Bytes> {
        let mut frame = Vec::with_capacity(512);
        while frame.is_empty() {
            if self.done {
                return None;
            }
            if !self.started {
                self.started = true;
                let created = response_object(
                    &self.shaping,
                    &self.echo,
                    "in_progress",
                    Vec::new(),
                    None,
                    None,
                );
                self.event(&mut frame, "response.created", json!({"response": created.clone()}));
                self.event(&mut frame, "response.in_progress", json!({"response": created}));
            }
            let step = match self.first.take() {
                Some(step) => step,
                None => self.generation.next_step().await?,
            };
            match step {
                Step::Text => {
                    let text = self.generation.text().to_owned();
                    self.shaping.output.push(&text);
                    self.write_delta(&mut frame);
                }
                Step::Finished(finish) => {
                    self.shaping.output.finish();
                    self.write_delta(&mut frame);
                    self.close_open(&mut frame);
                    let nvext = self.shaping.nvext.then(|| self.generation.nvext(&finish.usage));
                    let status = status_of(&finish);
                    let output = std::mem::take(&mut self.output);
                    let response = response_object(
                        &self.shaping,
                        &self.echo,
                        status,
                        output,
                        Some(&finish),
                        nvext.as_ref(),
                    );
                    let kind = if status == "completed" {
                        "response.completed"
                    } else {
                        "response.incomplete"
                    };
                    self.event(&mut frame, kind, json!({"response": response}));
                    self.done = true;
                }
                Step::Failed(error) => {
                    let mut body = Vec::new();
                    error.write_json(&mut body);
                    let detail: Json = serde_json::from_slice(&body).unwrap_or(Json::Null);
                    let message = detail["error"]["message"].clone();
                    let code = detail["error"]["code"].clone();
                    self.event(&mut frame, "error", json!({"message": message, "code": code}));
                    self.done = true;
                }
            }
        }
        Some(Bytes::from(frame))
    }

    /// Events for the parsed delta of the last text.
    fn write_delta(&mut self, frame: &mut Vec<u8>) {
        let (delta, _) = self.shaping.output.take_call_deltas();
        let (reasoning, content, calls) =
            (delta.reasoning.clone(), delta.content.clone(), delta.tool_calls.clone());
        if !reasoning.is_empty() {
            if !matches!(self.open, Some(OpenItem::Reasoning { .. })) {
                self.close_open(frame);
                let id = item_id("rs");
                let item = json!({"type": "reasoning", "id": id, "summary": [], "content": []});
                self.event(
                    frame,
                    "response.output_item.added",
                    json!({"output_index": self.output.len(), "item": item}),
                );
                self.open = Some(OpenItem::Reasoning { id, text: String::new() });
            }
            if let Some(OpenItem::Reasoning { id, text }) = &mut self.open {
                text.push_str(&reasoning);
                let data = json!({"item_id": id, "output_index": self.output.len(), "content_index": 0, "delta": reasoning});
                self.event(frame, "response.reasoning_text.delta", data);
            }
        }
        // Blank text right before or between calls is the model's spacing.
        let message_open = matches!(self.open, Some(OpenItem::Message { .. }));
        if !content.is_empty() && (message_open || !content.trim().is_empty()) {
            if !matches!(self.open, Some(OpenItem::Message { .. })) {
                self.close_open(frame);
                let id = item_id("msg");
                let output_index = self.output.len();
                self.event(frame, "response.output_item.added", json!({"output_index": output_index, "item": message_item(&id, "", "in_progress")}));
                self.event(frame, "response.content_part.added", json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": text_part("")}));
                self.open = Some(OpenItem::Message { id, text: String::new() });
            }
            if let Some(OpenItem::Message { id, text }) = &mut self.open {
                text.push_str(&content);
                let data = json!({"item_id": id, "output_index": self.output.len(), "content_index": 0, "delta": content, "logprobs": []});
                self.event(frame, "response.output_text.delta", data);
            }
        }
        for call in &calls {
            self.close_open(frame);
            let id = item_id("fc");
            let output_index = self.output.len();
            self.event(
                frame,
                "response.output_item.added",
                json!({"output_index": output_index, "item": call_item(&id, call, "in_progress")}),
            );
            self.event(
                frame,
                "response.function_call_arguments.delta",
                json!({"item_id": id, "output_index": output_index, "delta": call.arguments}),
            );
            self.event(
                frame,
                "response.function_call_arguments.done",
                json!({"item_id": id, "output_index": output_index, "arguments": call.arguments}),
            );
            let item = call_item(&id, call, "completed");
            self.event(
                frame,
                "response.output_item.done",
                json!({"output_index": output_index, "item": item.clone()}),
            );
            self.output.push(item);
        }
    }

    /// Ends the item being streamed.
    fn close_open(&mut self, frame: &mut Vec<u8>) {
        let output_index = self.output.len();
        match self.open.take() {
            None => {}
            Some(OpenItem::Reasoning { id, text }) => {
                self.event(frame, "response.reasoning_text.done", json!({"item_id": id, "output_index": output_index, "content_index": 0, "text": text}));
                let item = reasoning_item(&id, &text);
                self.event(
                    frame,
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item.clone()}),
                );
                self.output.push(item);
            }
            Some(OpenItem::Message { id, text }) => {
                self.event(frame, "response.output_text.done", json!({"item_id": id, "output_index": output_index, "content_index": 0, "text": text, "logprobs": []}));
                self.event(frame, "response.content_part.done", json!({"item_id": id, "output_index": output_index, "content_index": 0, "part": text_part(&text)}));
                let item = message_item(&id, &text, "completed");
                self.event(
                    frame,
                    "response.output_item.done",
                    json!({"output_index": output_index, "item": item.clone()}),
                );
                self.output.push(item);
            }
        }
    }

    /// Appends one `event: TYPE` / `data: {…, "type": TYPE, "sequence_number": N}` event.
    fn event(&mut self, frame: &mut Vec<u8>, kind: &str, mut data: Json) {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(self.sequence);
        self.sequence += 1;
        frame.extend_from_slice(b"event: ");
        frame.extend_from_slice(kind.as_bytes());
        frame.extend_from_slice(b"\ndata: ");
        frame.extend_from_slice(data.to_string().as_bytes());
        frame.extend_from_slice(b"\n\n");
    }
}
