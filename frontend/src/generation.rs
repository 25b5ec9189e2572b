//! One response in progress: worker chunks in, text deltas and a finish out. Shared by both
//! endpoints, streaming or not. Detokenizes, matches stop strings (dropping the worker stream
//! on a match, which cancels the work), counts tokens, and bounds every wait by the request's
//! deadline. Dropping it (client gone) drops the worker stream too. A stream that breaks,
//! stalls or is given up by its worker moves to another instance (see [`Migration`]); only
//! when no move is left does the response end with an error.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_proto::{ErrorKind, FinishReason, GenerateChunk, TokenLogprob, WorkerError};
use switchyard_runtime::ChunkStream;
use tokio::time::timeout_at;

use crate::admission::Permit;
use crate::breaker::Breakers;
use crate::detokenize::Detokenizer;
use crate::error::Error;
use crate::kv_router::Reservation;
use crate::metrics::RequestTracker;
use crate::migration::Migration;
use crate::openai::response::{Nvext, NvextTiming, Usage};
use crate::routing::Dispatched;
use crate::stop::StopMatcher;

/// How a response ended well.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Finish {
    pub reason: &'static str,
    pub usage: Usage,
}

/// What [`Generation::next_step`] produced.
#[derive(Debug)]
pub(crate) enum Step {
    /// New text, in [`Generation::text`].
    Text,
    Finished(Finish),
    Failed(Error),
}

/// The response of one accepted request.
pub(crate) struct Generation {
    first: Option<GenerateChunk>,
    /// The worker's chunks; replaced by an empty stream (cancelling the work) once finished.
    stream: ChunkStream,
    in_flight: Option<Reservation>,
    detokenizer: Detokenizer,
    stop: StopMatcher,
    /// One token's text, before stop matching.
    scratch: String,
    /// The text of the last [`Step::Text`].
    text: String,
    /// Log probabilities of the tokens not yet handed out with a step.
    logprobs: Vec<TokenLogprob>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    prompt_tokens: u32,
    completion_tokens: u32,
    finish: Option<Finish>,
    done: bool,
    tracker: RequestTracker,
    /// For the timing extension: who served it, and when it was sent, began and ended.
    instance_id: Arc<str>,
    /// How to carry on elsewhere; `None` when migration is off.
    migration: Option<Migration>,
    /// Longest silence between chunks before the instance is taken for stuck.
    stall_timeout: Duration,
    breakers: Arc<Breakers>,
    /// The request's place under admission control, held until the response ends.
    place: Option<Permit>,
    /// A failure noted while text was still to be handed out.
    pending_failure: Option<(Error, &'static str)>,
    dispatched_at: Instant,
    first_token_at: Option<Instant>,
    last_token_at: Option<Instant>,
}

/// What a generation needs besides the dispatched request.
pub(crate) struct GenerationSetup {
    pub detokenizer: Detokenizer,
    pub stop: Vec<String>,
    pub prompt_tokens: u32,
    pub deadline: tokio::time::Instant,
    pub timeout: Duration,
    /// When the request was handed to the router.
    pub dispatched_at: Instant,
    pub migration: Option<Migration>,
    pub stall_timeout: Duration,
    pub breakers: Arc<Breakers>,
    pub place: Permit,
}

impl Generation {
    pub fn new(
        dispatched: Dispatched,
        setup: GenerationSetup,
        tracker: RequestTracker,
    ) -> Generation {
        Generation {
            first: Some(dispatched.first),
            stream: dispatched.stream,
            in_flight: dispatched.in_flight,
            detokenizer: setup.detokenizer,
            stop: StopMatcher::new(setup.stop),
            scratch: String::new(),
            text: String::new(),
            logprobs: Vec::new(),
            deadline: setup.deadline,
            timeout: setup.timeout,
            prompt_tokens: setup.prompt_tokens,
            completion_tokens: 0,
            finish: None,
            done: false,
            tracker,
            instance_id: Arc::from(dispatched.instance_id),
            dispatched_at: setup.dispatched_at,
            first_token_at: None,
            last_token_at: None,
            migration: setup.migration,
            stall_timeout: setup.stall_timeout,
            breakers: setup.breakers,
            place: Some(setup.place),
            pending_failure: None,
        }
    }

    /// The text of the last [`Step::Text`].
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Log probabilities of the tokens since the last call (empty unless asked for).
    pub fn take_logprobs(&mut self) -> Vec<TokenLogprob> {
        std::mem::take(&mut self.logprobs)
    }

    /// The next piece of the response; `None` after a `Finished` or `Failed` step.
    pub async fn next_step(&mut self) -> Option<Step> {
        loop {
            if self.done {
                return None;
            }
            if let Some(finish) = self.finish.take() {
                self.done = true;
                self.tracker.finish(200);
                return Some(Step::Finished(finish));
            }
            if let Some((error, cause)) = self.pending_failure.take() {
                match self.migrate(cause).await {
                    Ok(()) => continue,
                    Err(e) => return Some(self.fail(e.unwrap_or(error))),
                }
            }
            let chunk = match self.first.take() {
                Some(chunk) => chunk,
                None => match self.next_chunk().await {
                    Ok(chunk) => chunk,
                    Err((error, None)) => return Some(self.fail(error)),
                    Err((error, Some(cause))) => {
                        self.pending_failure = Some((error, cause));
                        continue;
                    }
                },
            };
            if let Some(error) = &chunk.error {
                let error_kind = error.kind();
                let error = worker_error(error);
                if matches!(error_kind, ErrorKind::ShuttingDown | ErrorKind::Overloaded) {
                    self.pending_failure = Some((error, "shutting_down"));
                    continue;
                }
                return Some(self.fail(error));
            }
            match chunk.finish_reason() {
                FinishReason::Error => {
                    let error = Error::Worker("the worker ended the response with an error".into());
                    return Some(self.fail(error));
                }
                // The worker gave the request up (its drain timed out, or it was cancelled
                // there): what it sent counts, the rest comes from elsewhere or is an error.
                FinishReason::Cancelled => {
                    let error = Error::Worker(format!(
                        "the worker gave up on the response after {} tokens",
                        self.completion_tokens + chunk.token_ids.len() as u32
                    ));
                    self.pending_failure = Some((error, "cancelled"));
                    let unfinished = GenerateChunk {
                        finish_reason: FinishReason::Unspecified.into(),
                        usage: None,
                        ..chunk
                    };
                    self.text.clear();
                    self.absorb(&unfinished);
                }
                _ => {
                    self.text.clear();
                    self.absorb(&chunk);
                }
            }
            if !self.text.is_empty() {
                return Some(Step::Text);
            }
        }
    }

    /// The next chunk of the current instance's stream, or why there is none: with a cause
    /// when another instance may carry the response on.
    async fn next_chunk(&mut self) -> Result<GenerateChunk, (Error, Option<&'static str>)> {
        let stall_end = tokio::time::Instant::now() + self.stall_timeout;
        match timeout_at(self.deadline.min(stall_end), self.stream.next()).await {
            Ok(Some(Ok(chunk))) => Ok(chunk),
            Ok(Some(Err(e))) => Err((Error::Worker(e.to_string()), Some("broken"))),
            Ok(None) => Err((
                Error::Worker("the stream ended without a final chunk".into()),
                Some("broken"),
            )),
            Err(_) if stall_end < self.deadline => Err((
                Error::Worker(format!("no word from the worker for {:?}", self.stall_timeout)),
                Some("stall"),
            )),
            Err(_) => Err((Error::Timeout { after: self.timeout }, None)),
        }
    }

    /// Moves the response to another instance. `Err(None)`: no move left (the failure
    /// stands); `Err(Some(e))`: the move itself failed.
    async fn migrate(&mut self, cause: &'static str) -> Result<(), Option<Error>> {
        self.release_worker();
        let failed = self.instance_id.clone();
        if cause != "shutting_down" && cause != "cancelled" {
            self.breakers.failure(&failed, cause);
        }
        let Some(migration) = self.migration.as_mut() else {
            return Err(None);
        };
        match migration.resume(failed, cause).await {
            None => Err(None),
            Some(Err(e)) => Err(Some(e)),
            Some(Ok(dispatched)) => {
                self.first = Some(dispatched.first);
                self.stream = dispatched.stream;
                self.in_flight = dispatched.in_flight;
                self.instance_id = Arc::from(dispatched.instance_id);
                Ok(())
            }
        }
    }

    /// Turns a chunk's tokens into text; notes the finish if the chunk ends the response.
    fn absorb(&mut self, chunk: &GenerateChunk) {
        let now = Instant::now();
        self.tracker.tokens(chunk.token_ids.len(), now);
        if !chunk.token_ids.is_empty() {
            self.first_token_at.get_or_insert(now);
            self.last_token_at = Some(now);
        }
        self.logprobs.extend(chunk.logprobs.iter().cloned());
        if let Some(migration) = &mut self.migration {
            migration.record(&chunk.token_ids);
        }
        for &id in &chunk.token_ids {
            self.completion_tokens += 1;
            self.scratch.clear();
            self.detokenizer.push(id, &mut self.scratch);
            if self.stop.push(&self.scratch, &mut self.text) {
                self.finish_with("stop", self.completion_tokens, 0);
                return;
            }
        }
        let reason = chunk.finish_reason();
        if reason == FinishReason::Unspecified {
            return;
        }
        self.scratch.clear();
        self.detokenizer.flush(&mut self.scratch);
        let stopped = self.stop.push(&self.scratch, &mut self.text);
        if !stopped {
            self.stop.flush(&mut self.text);
        }
        let usage = chunk.usage.unwrap_or_default();
        let completion =
            if chunk.usage.is_some() { usage.completion_tokens } else { self.completion_tokens };
        // After a move, the new instance's cache may cover earlier output too.
        let cached = usage.cached_tokens.min(self.prompt_tokens);
        let reason = if stopped { Some("stop") } else { reason.openai_name() };
        self.finish_with(reason.unwrap_or("stop"), completion, cached);
    }

    fn finish_with(&mut self, reason: &'static str, completion_tokens: u32, cached_tokens: u32) {
        self.finish = Some(Finish {
            reason,
            usage: Usage::new(self.prompt_tokens, completion_tokens, cached_tokens),
        });
        self.release_worker();
    }

    /// The timing extension of this response (meaningful once it finished).
    pub fn nvext(&self, usage: &Usage) -> Nvext {
        let ms =
            |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64() * 1e3;
        let received = self.tracker.started_at();
        let first = self.first_token_at.unwrap_or(self.dispatched_at);
        let last = self.last_token_at.unwrap_or(first);
        Nvext {
            worker_id: self.instance_id.to_string(),
            cached_tokens: usage.prompt_tokens_details.cached_tokens,
            timing: NvextTiming {
                queue_ms: ms(received, self.dispatched_at),
                prefill_ms: ms(self.dispatched_at, first),
                decode_ms: ms(first, last),
                total_ms: ms(received, Instant::now()),
            },
        }
    }

    /// Drops the worker's stream (cancelling whatever it still does) and its in-flight count.
    fn release_worker(&mut self) {
        if self.done || self.finish.is_some() {
            self.place = None;
        }
        self.stream = Box::pin(futures::stream::empty());
        self.in_flight = None;
    }

    fn fail(&mut self, error: Error) -> Step {
        self.done = true;
        self.tracker.finish(error.status().as_u16());
        self.release_worker();
        Step::Failed(error)
    }
}

/// The frontend's error for a worker's error chunk.
fn worker_error(error: &WorkerError) -> Error {
    match error.kind() {
        ErrorKind::InvalidRequest if !error.param.is_empty() => {
            Error::invalid(error.param.clone(), error.message.clone())
        }
        ErrorKind::InvalidRequest => Error::WorkerRejected { message: error.message.clone() },
        kind => Error::Worker(format!("{kind:?}: {}", error.message)),
    }
}
