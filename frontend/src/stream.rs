//! Responses out: server-sent events for streams (each chunk serialized straight into the
//! frame, one frame per worker chunk), and whole JSON bodies otherwise.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;

use crate::error::Error;
use crate::generation::{Finish, Generation, Step};
use crate::logprobs::LogprobsOut;
use crate::openai::response::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatDelta,
    Completion, CompletionChoice, ResponseMeta, Usage,
};

/// Which response shapes to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiKind {
    Chat,
    Completion,
}

/// A streaming response; `first` is the step already taken (so that a failure before any
/// output could still be answered with a plain error status).
pub(crate) fn sse_response(
    generation: Generation,
    first: Step,
    meta: ResponseMeta,
    kind: ApiKind,
    include_usage: bool,
    logprobs: Option<LogprobsOut>,
) -> Response {
    let events = SseEvents {
        generation,
        first: Some(first),
        meta,
        kind,
        include_usage,
        logprobs,
        role_sent: false,
        done: false,
    };
    let body = futures::stream::unfold(events, |mut events| async move {
        let frame = events.next_frame().await?;
        Some((Ok::<_, Infallible>(frame), events))
    });
    let mut response = Response::new(Body::from_stream(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct SseEvents {
    generation: Generation,
    first: Option<Step>,
    meta: ResponseMeta,
    kind: ApiKind,
    include_usage: bool,
    /// Renders log probabilities, when the request asked for them.
    logprobs: Option<LogprobsOut>,
    /// Whether the chat `role` went out yet (it rides on the first delta).
    role_sent: bool,
    done: bool,
}

impl SseEvents {
    /// The next frame: one or more events, or `None` once `[DONE]` went out.
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let step = match self.first.take() {
            Some(step) => step,
            None => self.generation.next_step().await?,
        };
        let mut frame = Vec::with_capacity(256);
        let logprobs = match &mut self.logprobs {
            Some(out) => Some(out.render(&self.generation.take_logprobs())),
            None => None,
        };
        match step {
            Step::Text => {
                let text = self.generation.text();
                write_text(&mut frame, &self.meta, self.kind, text, !self.role_sent, logprobs);
                self.role_sent = true;
            }
            Step::Finished(finish) => {
                if self.kind == ApiKind::Chat && !self.role_sent {
                    write_text(&mut frame, &self.meta, self.kind, "", true, None);
                }
                let logprobs = logprobs.filter(|l| !is_empty_logprobs(l));
                write_finish(
                    &mut frame,
                    &self.meta,
                    self.kind,
                    &finish,
                    self.include_usage,
                    logprobs,
                );
                frame.extend_from_slice(b"data: [DONE]\n\n");
                self.done = true;
            }
            Step::Failed(error) => {
                frame.extend_from_slice(b"data: ");
                error.write_json(&mut frame);
                frame.extend_from_slice(b"\n\ndata: [DONE]\n\n");
                self.done = true;
            }
        }
        Some(Bytes::from(frame))
    }
}

/// Appends `data: <json>\n\n`.
fn write_event<T: Serialize>(frame: &mut Vec<u8>, value: &T) {
    frame.extend_from_slice(b"data: ");
    if let Err(e) = serde_json::to_writer(&mut *frame, value) {
        // Unreachable with these types (string keys only); say so in the stream if it happens.
        Error::Internal(format!("serializing a chunk: {e}")).write_json(frame);
    }
    frame.extend_from_slice(b"\n\n");
}

/// Whether a rendered `logprobs` object holds no token.
fn is_empty_logprobs(value: &serde_json::Value) -> bool {
    let list = value.get("content").or_else(|| value.get("tokens"));
    list.and_then(serde_json::Value::as_array).is_none_or(Vec::is_empty)
}

fn write_text(
    frame: &mut Vec<u8>,
    meta: &ResponseMeta,
    kind: ApiKind,
    text: &str,
    with_role: bool,
    logprobs: Option<serde_json::Value>,
) {
    match kind {
        ApiKind::Chat => {
            let choices = [ChatChunkChoice {
                index: 0,
                delta: ChatDelta { role: with_role.then_some("assistant"), content: Some(text) },
                logprobs,
                finish_reason: None,
            }];
            write_event(frame, &chat_chunk(meta, &choices, None));
        }
        ApiKind::Completion => {
            let choices = [CompletionChoice { index: 0, text, logprobs, finish_reason: None }];
            write_event(frame, &completion(meta, &choices, None));
        }
    }
}

fn write_finish(
    frame: &mut Vec<u8>,
    meta: &ResponseMeta,
    kind: ApiKind,
    finish: &Finish,
    include_usage: bool,
    logprobs: Option<serde_json::Value>,
) {
    match kind {
        ApiKind::Chat => {
            let choices = [ChatChunkChoice {
                index: 0,
                delta: ChatDelta { role: None, content: None },
                logprobs,
                finish_reason: Some(finish.reason),
            }];
            write_event(frame, &chat_chunk(meta, &choices, None));
            if include_usage {
                write_event(frame, &chat_chunk(meta, &[], Some(finish.usage)));
            }
        }
        ApiKind::Completion => {
            let choices = [CompletionChoice {
                index: 0,
                text: "",
                logprobs,
                finish_reason: Some(finish.reason),
            }];
            write_event(frame, &completion(meta, &choices, None));
            if include_usage {
                write_event(frame, &completion(meta, &[], Some(finish.usage)));
            }
        }
    }
}

fn chat_chunk<'a>(
    meta: &'a ResponseMeta,
    choices: &'a [ChatChunkChoice<'a>],
    usage: Option<Usage>,
) -> ChatCompletionChunk<'a> {
    ChatCompletionChunk {
        id: &meta.id,
        object: "chat.completion.chunk",
        created: meta.created,
        model: &meta.model,
        choices,
        usage,
    }
}

fn completion<'a>(
    meta: &'a ResponseMeta,
    choices: &'a [CompletionChoice<'a>],
    usage: Option<Usage>,
) -> Completion<'a> {
    Completion {
        id: &meta.id,
        object: "text_completion",
        created: meta.created,
        model: &meta.model,
        choices,
        usage,
    }
}

/// A non-streaming response: every step collected into one body.
pub(crate) async fn collect_response(
    mut generation: Generation,
    meta: ResponseMeta,
    kind: ApiKind,
    mut logprobs_out: Option<LogprobsOut>,
) -> Response {
    let mut text = String::new();
    let mut tokens = Vec::new();
    let finish = loop {
        let step = generation.next_step().await;
        tokens.extend(generation.take_logprobs());
        match step {
            Some(Step::Text) => text.push_str(generation.text()),
            Some(Step::Finished(finish)) => break finish,
            Some(Step::Failed(error)) => return error.into_response(),
            None => {
                return Error::Internal("response ended without a finish".into()).into_response();
            }
        }
    };
    let logprobs = logprobs_out.as_mut().map(|out| out.render(&tokens));
    let body = match kind {
        ApiKind::Chat => serde_json::to_vec(&ChatCompletion {
            id: &meta.id,
            object: "chat.completion",
            created: meta.created,
            model: &meta.model,
            choices: [ChatChoice {
                index: 0,
                message: AssistantMessage { role: "assistant", content: &text },
                logprobs,
                finish_reason: finish.reason,
            }],
            usage: finish.usage,
        }),
        ApiKind::Completion => {
            let choices = [CompletionChoice {
                index: 0,
                text: &text,
                logprobs,
                finish_reason: Some(finish.reason),
            }];
            serde_json::to_vec(&completion(&meta, &choices, Some(finish.usage)))
        }
    };
    match body {
        Ok(body) => json_response(StatusCode::OK, body),
        Err(e) => Error::Internal(format!("serializing a response: {e}")).into_response(),
    }
}

/// A JSON body with its content type.
pub(crate) fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
