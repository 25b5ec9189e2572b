//! An engine's streamed response as Switchyard chunks: server-sent events decoded into token
//! ids (or text turned into ids), stop token ids applied where the engine cannot, and one
//! final chunk with the finish reason and usage. Cancelling, or dropping the stream, closes the
//! connection, which is how every one of these engines learns the client went away.

use std::sync::Arc;

use eventsource_stream::Eventsource;
use futures::{Stream, StreamExt};
use switchyard_proto::{FinishReason, GenerateChunk, Usage, WorkerError};
use tokio_util::sync::CancellationToken;

use super::codec::TextCodec;
use super::decode::{Decoder, Piece};
use crate::Error;
use crate::engine::EngineStream;

/// What the stream needs to know of its request.
pub(crate) struct StreamSetup {
    pub decoder: Decoder,
    /// Turns generated text into ids, for engines that return no ids.
    pub codec: Option<Arc<TextCodec>>,
    /// Stop token ids the worker applies itself (the engine cannot).
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Prompt tokens, for usage when the engine reports none.
    pub prompt_tokens: u32,
    /// Output tokens generated before this request (a decode continuing a prefill); counted
    /// in `completion_tokens`.
    pub generated_before: u32,
}

type Events = std::pin::Pin<Box<dyn Stream<Item = Result<String, Error>> + Send>>;

struct State {
    events: Events,
    setup: StreamSetup,
    cancel: CancellationToken,
    /// Output tokens sent so far by this stream.
    sent: u32,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    done: bool,
}

/// The chunks of `response`, an engine's server-sent event stream.
pub(crate) fn from_response(
    response: reqwest::Response,
    setup: StreamSetup,
    cancel: CancellationToken,
) -> EngineStream {
    let events = response.bytes_stream().eventsource().filter_map(|event| async move {
        match event {
            Ok(event) if event.data.trim() == "[DONE]" || event.data.trim().is_empty() => None,
            Ok(event) => Some(Ok(event.data)),
            Err(e) => Some(Err(Error::Engine(format!("reading the engine's stream: {e}")))),
        }
    });
    let state = State {
        events: Box::pin(events),
        setup,
        cancel,
        sent: 0,
        finish: None,
        usage: None,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((chunk, state))
    }))
}

impl State {
    async fn next_chunk(&mut self) -> Option<GenerateChunk> {
        loop {
            if self.done {
                return None;
            }
            let event = tokio::select! {
                () = self.cancel.cancelled() => {
                    return Some(self.end(FinishReason::Cancelled));
                }
                event = self.events.next() => event,
            };
            let data = match event {
                Some(Ok(data)) => data,
                Some(Err(e)) => return Some(self.fail(&e)),
                // The engine closed the stream: it has said all it will.
                None => {
                    let reason = self.finish.unwrap_or(FinishReason::Length);
                    if self.finish.is_none() {
                        return Some(self.fail(&Error::Engine(
                            "the engine's stream ended without a finish reason".into(),
                        )));
                    }
                    return Some(self.end(reason));
                }
            };
            let piece = match self.setup.decoder.decode(&data) {
                Ok(piece) => piece,
                Err(e) => return Some(self.fail(&e)),
            };
            match self.absorb(piece) {
                Ok(Some(chunk)) => return Some(chunk),
                Ok(None) => {}
                Err(e) => return Some(self.fail(&e)),
            }
        }
    }

    /// A chunk of the piece's new tokens, the final chunk once the response is complete, or
    /// nothing yet (vLLM sends usage in an event after the finish reason).
    fn absorb(&mut self, piece: Piece) -> Result<Option<GenerateChunk>, Error> {
        let Piece { mut token_ids, text, mut logprobs, finish, usage, .. } = piece;
        if token_ids.is_empty()
            && !text.is_empty()
            && let Some(codec) = &self.setup.codec
        {
            token_ids = codec.encode(&text)?;
        }
        let mut stopped = false;
        if !self.setup.stop_token_ids.is_empty()
            && let Some(at) = self.stop_at(&token_ids)
        {
            token_ids.truncate(at + 1);
            logprobs.truncate(at + 1);
            stopped = true;
        }
        self.sent += u32::try_from(token_ids.len()).unwrap_or(u32::MAX);
        if usage.is_some() {
            self.usage = usage;
        }
        if stopped {
            self.finish = Some(FinishReason::Stop);
        } else if finish.is_some() {
            self.finish = finish;
        }
        let complete = stopped || (self.finish.is_some() && self.usage.is_some());
        if complete {
            let reason = self.finish.unwrap_or(FinishReason::Stop);
            let mut last = self.end(reason);
            last.token_ids = token_ids;
            last.logprobs = logprobs;
            if stopped && let Some(usage) = &mut last.usage {
                usage.completion_tokens = self.sent + self.setup.generated_before;
            }
            return Ok(Some(last));
        }
        if token_ids.is_empty() {
            return Ok(None);
        }
        Ok(Some(GenerateChunk { token_ids, logprobs, ..GenerateChunk::default() }))
    }

    /// Where in `ids` the first stop token the worker applies falls.
    fn stop_at(&self, ids: &[u32]) -> Option<usize> {
        if self.setup.ignore_eos {
            return None;
        }
        ids.iter().position(|id| self.setup.stop_token_ids.contains(id))
    }

    /// The final chunk; the stream ends after it.
    fn end(&mut self, reason: FinishReason) -> GenerateChunk {
        self.done = true;
        let completion = self.sent + self.setup.generated_before;
        let usage = match self.usage.take() {
            Some(mut usage) => {
                usage.completion_tokens += self.setup.generated_before;
                usage
            }
            None => Usage {
                prompt_tokens: self.setup.prompt_tokens,
                completion_tokens: completion,
                cached_tokens: 0,
            },
        };
        GenerateChunk {
            finish_reason: reason.into(),
            usage: Some(usage),
            ..GenerateChunk::default()
        }
    }

    fn fail(&mut self, error: &Error) -> GenerateChunk {
        self.done = true;
        GenerateChunk {
            finish_reason: FinishReason::Error.into(),
            error: Some(WorkerError {
                kind: error.kind().into(),
                message: error.to_string(),
                param: error.param_name().unwrap_or_default().to_owned(),
            }),
            ..GenerateChunk::default()
        }
    }
}
