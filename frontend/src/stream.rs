//! Responses out: server-sent events for streams (each chunk serialized straight into the
//! frame, one frame per worker chunk), and whole JSON bodies otherwise. Chat text goes through
//! the model's output parsers first.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use switchyard_proto::TokenLogprob;

use crate::chat_output::{ChatOutput, call_out};
use crate::error::Error;
use crate::generation::{Finish, Generation, Step};
use crate::logprobs::LogprobsOut;
use crate::openai::response::{
    AssistantMessage, ChatChoice, ChatChunkChoice, ChatCompletion, ChatCompletionChunk, ChatDelta,
    Completion, CompletionChoice, Nvext, ResponseMeta, Usage,
};
use crate::parsers::ParsedDelta;

/// Which response shapes to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiKind {
    Chat,
    Completion,
    /// `/v1/responses`: chat underneath, its own shapes (see `handlers::responses`).
    Responses,
}

/// How one response is shaped: its ids, its kind, what the client opted into, and (chat) the
/// parsers its text goes through.
pub(crate) struct Shaping {
    pub meta: ResponseMeta,
    pub kind: ApiKind,
    pub include_usage: bool,
    /// Add the timing extension to the final chunk or body.
    pub nvext: bool,
    pub output: ChatOutput,
    /// Renders log probabilities, when the request asked for them.
    pub logprobs: Option<LogprobsOut>,
}

impl Shaping {
    /// The `logprobs` object for `tokens`, when asked for and there are any.
    fn render_logprobs(&mut self, tokens: &mut Vec<TokenLogprob>) -> Option<serde_json::Value> {
        let out = self.logprobs.as_mut()?;
        if tokens.is_empty() {
            return None;
        }
        Some(out.render(&std::mem::take(tokens)))
    }
}

/// A streaming response; `first` is the step already taken (so that a failure before any
/// output could still be answered with a plain error status).
pub(crate) fn sse_response(generation: Generation, first: Step, shaping: Shaping) -> Response {
    let events = SseEvents {
        generation,
        first: Some(first),
        shaping,
        pending_logprobs: Vec::new(),
        role_sent: false,
        done: false,
    };
    let body = futures::stream::unfold(events, |mut events| async move {
        let frame = events.next_frame().await?;
        Some((Ok::<_, Infallible>(frame), events))
    });
    event_stream_response(Body::from_stream(body))
}

/// A `text/event-stream` response around `body`.
pub(crate) fn event_stream_response(body: Body) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

struct SseEvents {
    generation: Generation,
    first: Option<Step>,
    shaping: Shaping,
    /// Log probabilities of tokens whose text has not gone out yet.
    pending_logprobs: Vec<TokenLogprob>,
    /// Whether the chat `role` went out yet (it rides on the first delta).
    role_sent: bool,
    done: bool,
}

impl SseEvents {
    /// The next frame: one or more events, or `None` once `[DONE]` went out.
    async fn next_frame(&mut self) -> Option<Bytes> {
        let mut frame = Vec::with_capacity(256);
        while frame.is_empty() {
            if self.done {
                return None;
            }
            let step = match self.first.take() {
                Some(step) => step,
                None => self.generation.next_step().await?,
            };
            self.pending_logprobs.extend(self.generation.take_logprobs());
            match step {
                Step::Text => {
                    let text = self.generation.text();
                    match self.shaping.kind {
                        ApiKind::Chat | ApiKind::Responses => {
                            self.shaping.output.push(text);
                            self.write_chat_delta(&mut frame);
                        }
                        ApiKind::Completion => {
                            let logprobs = self.shaping.render_logprobs(&mut self.pending_logprobs);
                            write_completion_text(&mut frame, &self.shaping.meta, text, logprobs);
                        }
                    }
                }
                Step::Finished(finish) => {
                    if self.shaping.kind != ApiKind::Completion {
                        self.shaping.output.finish();
                        self.write_chat_delta(&mut frame);
                        if !self.role_sent {
                            self.write_chat_delta_forced(&mut frame);
                        }
                    }
                    let nvext = self.shaping.nvext.then(|| self.generation.nvext(&finish.usage));
                    let logprobs = self.shaping.render_logprobs(&mut self.pending_logprobs);
                    write_finish(&mut frame, &self.shaping, &finish, nvext.as_ref(), logprobs);
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
        }
        Some(Bytes::from(frame))
    }

    /// The parsed delta of the last text, if it holds anything.
    fn write_chat_delta(&mut self, frame: &mut Vec<u8>) {
        let with_role = !self.role_sent;
        let meta = &self.shaping.meta;
        let (delta, calls) = self.shaping.output.take_call_deltas();
        if delta.is_empty() {
            return;
        }
        let logprobs = match &mut self.shaping.logprobs {
            Some(out) if !self.pending_logprobs.is_empty() => {
                Some(out.render(&std::mem::take(&mut self.pending_logprobs)))
            }
            _ => None,
        };
        let choices = [ChatChunkChoice {
            index: 0,
            delta: chat_delta(delta, &calls, with_role),
            logprobs,
            finish_reason: None,
        }];
        write_event(frame, &chat_chunk(meta, &choices, None, None));
        self.role_sent = true;
    }

    /// The role alone, for a response that produced no text at all.
    fn write_chat_delta_forced(&mut self, frame: &mut Vec<u8>) {
        let choices = [ChatChunkChoice {
            index: 0,
            delta: ChatDelta { role: Some("assistant"), content: Some(""), ..ChatDelta::default() },
            logprobs: None,
            finish_reason: None,
        }];
        write_event(frame, &chat_chunk(&self.shaping.meta, &choices, None, None));
        self.role_sent = true;
    }
}

fn chat_delta<'a>(
    delta: &'a ParsedDelta,
    calls: &'a [crate::openai::response::ToolCallOut<'a>],
    with_role: bool,
) -> ChatDelta<'a> {
    let some = |s: &'a str| (!s.is_empty()).then_some(s);
    ChatDelta {
        role: with_role.then_some("assistant"),
        content: some(&delta.content),
        reasoning_content: some(&delta.reasoning),
        tool_calls: calls,
    }
}

/// Appends `data: <json>\n\n`.
pub(crate) fn write_event<T: Serialize>(frame: &mut Vec<u8>, value: &T) {
    frame.extend_from_slice(b"data: ");
    if let Err(e) = serde_json::to_writer(&mut *frame, value) {
        // Unreachable with these types (string keys only); say so in the stream if it happens.
        Error::Internal(format!("serializing a chunk: {e}")).write_json(frame);
    }
    frame.extend_from_slice(b"\n\n");
}

fn write_completion_text(
    frame: &mut Vec<u8>,
    meta: &ResponseMeta,
    text: &str,
    logprobs: Option<serde_json::Value>,
) {
    let choices = [CompletionChoice { index: 0, text, logprobs, finish_reason: None }];
    write_event(frame, &completion(meta, &choices, None, None));
}

fn write_finish(
    frame: &mut Vec<u8>,
    shaping: &Shaping,
    finish: &Finish,
    nvext: Option<&Nvext>,
    logprobs: Option<serde_json::Value>,
) {
    let meta = &shaping.meta;
    let usage = shaping.include_usage.then_some(finish.usage);
    match shaping.kind {
        ApiKind::Chat | ApiKind::Responses => {
            let choices = [ChatChunkChoice {
                index: 0,
                delta: ChatDelta::default(),
                logprobs: logprobs.clone(),
                finish_reason: Some(shaping.output.finish_reason(finish.reason)),
            }];
            write_event(
                frame,
                &chat_chunk(meta, &choices, None, nvext.filter(|_| usage.is_none())),
            );
            if usage.is_some() {
                write_event(frame, &chat_chunk(meta, &[], usage, nvext));
            }
        }
        ApiKind::Completion => {
            let choices = [CompletionChoice {
                index: 0,
                text: "",
                logprobs,
                finish_reason: Some(finish.reason),
            }];
            write_event(
                frame,
                &completion(meta, &choices, None, nvext.filter(|_| usage.is_none())),
            );
            if usage.is_some() {
                write_event(frame, &completion(meta, &[], usage, nvext));
            }
        }
    }
}

fn chat_chunk<'a>(
    meta: &'a ResponseMeta,
    choices: &'a [ChatChunkChoice<'a>],
    usage: Option<Usage>,
    nvext: Option<&'a Nvext>,
) -> ChatCompletionChunk<'a> {
    ChatCompletionChunk {
        id: &meta.id,
        object: "chat.completion.chunk",
        created: meta.created,
        model: &meta.model,
        choices,
        usage,
        nvext,
    }
}

fn completion<'a>(
    meta: &'a ResponseMeta,
    choices: &'a [CompletionChoice<'a>],
    usage: Option<Usage>,
    nvext: Option<&'a Nvext>,
) -> Completion<'a> {
    Completion {
        id: &meta.id,
        object: "text_completion",
        created: meta.created,
        model: &meta.model,
        choices,
        usage,
        nvext,
    }
}

/// A whole response: every part of the output, collected.
#[derive(Debug, Default)]
pub(crate) struct Collected {
    pub reasoning: String,
    pub content: String,
    pub tool_calls: Vec<crate::parsers::ToolCall>,
    /// Log probabilities of every token, when asked for.
    pub logprobs: Vec<TokenLogprob>,
}

impl Collected {
    fn add(&mut self, delta: &ParsedDelta) {
        self.reasoning.push_str(&delta.reasoning);
        self.content.push_str(&delta.content);
        self.tool_calls.extend(delta.tool_calls.iter().cloned());
    }
}

/// Runs `generation` to its end through `output`: the collected parts and the finish, or the
/// error to answer with.
pub(crate) async fn collect(
    generation: &mut Generation,
    output: &mut ChatOutput,
) -> Result<(Collected, Finish), Error> {
    let mut collected = Collected::default();
    loop {
        let step = generation.next_step().await;
        collected.logprobs.extend(generation.take_logprobs());
        match step {
            Some(Step::Text) => collected.add(output.push(generation.text())),
            Some(Step::Finished(finish)) => {
                collected.add(output.finish());
                return Ok((collected, finish));
            }
            Some(Step::Failed(error)) => return Err(error),
            None => return Err(Error::Internal("response ended without a finish".into())),
        }
    }
}

/// A non-streaming response: every step collected into one body.
pub(crate) async fn collect_response(mut generation: Generation, mut shaping: Shaping) -> Response {
    let (collected, finish) = match collect(&mut generation, &mut shaping.output).await {
        Ok(done) => done,
        Err(error) => return error.into_response(),
    };
    let nvext = shaping.nvext.then(|| generation.nvext(&finish.usage));
    let mut tokens = collected.logprobs.clone();
    let logprobs = shaping.render_logprobs(&mut tokens);
    let meta = &shaping.meta;
    let body = match shaping.kind {
        ApiKind::Chat | ApiKind::Responses => {
            let calls: Vec<_> = collected.tool_calls.iter().map(|c| call_out(c, None)).collect();
            // Blank text beside tool calls is only the model's spacing.
            let content = if calls.is_empty() || !collected.content.trim().is_empty() {
                Some(collected.content.as_str())
            } else {
                None
            };
            serde_json::to_vec(&ChatCompletion {
                id: &meta.id,
                object: "chat.completion",
                created: meta.created,
                model: &meta.model,
                choices: [ChatChoice {
                    index: 0,
                    message: AssistantMessage {
                        role: "assistant",
                        content,
                        reasoning_content: (!collected.reasoning.is_empty())
                            .then_some(collected.reasoning.as_str()),
                        tool_calls: &calls,
                    },
                    logprobs,
                    finish_reason: shaping.output.finish_reason(finish.reason),
                }],
                usage: finish.usage,
                nvext: nvext.as_ref(),
            })
        }
        ApiKind::Completion => {
            let choices = [CompletionChoice {
                index: 0,
                text: &collected.content,
                logprobs,
                finish_reason: Some(finish.reason),
            }];
            serde_json::to_vec(&completion(meta, &choices, Some(finish.usage), nvext.as_ref()))
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
