//! Choosing instances and reaching them. The routing state picks the decode (or aggregated)
//! instance and, for a model with prefill instances, whether a prefill instance computes the
//! prompt first. A request that an instance cannot take — unreachable, or turned away as
//! overloaded or shutting down before its first chunk — is sent to another one, up to
//! `max_attempts` instances.
//!
//! Prefill/decode split: the prefill instance returns the first token and a KV handle; the
//! first token goes to the client at once while the decode request (carrying the handle and
//! that token) is sent; the client sees one stream. A prefill instance that fails, times out
//! or returns no handle costs the client nothing: the decode instance prefills itself.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard_proto::{
    DisaggregatedParams, ErrorKind, FinishReason, GenerateChunk, GenerateRequest, KvHandle, Usage,
    WorkerError,
};
use switchyard_router::{Policy, RouteRequest};
use switchyard_runtime::{ChunkStream, RequestClient};
use tokio::time::{Instant, timeout_at};

use crate::breaker::Breakers;
use crate::error::Error;
use crate::kv_router::{KvRouter, Reservation, Routed};
use crate::metrics::{KV_HANDOFF_BYTES, KV_HANDOFF_SECONDS, PREFILL_FALLBACKS_TOTAL};
use crate::models::{ModelEntry, ModelRegistry};

/// A request an instance accepted: its first chunk, and the rest of its stream.
pub(crate) struct Dispatched {
    pub first: GenerateChunk,
    pub stream: ChunkStream,
    /// What the request booked on its instance, held while the response is read.
    pub in_flight: Option<Reservation>,
    /// The instance serving it (with a split, the decode instance).
    pub instance_id: String,
}

/// Where and how to send one request. Cheap to clone: the decode half of a split request
/// carries its own copy.
#[derive(Clone)]
pub(crate) struct Dispatch {
    pub model: Arc<ModelEntry>,
    pub policy: Arc<dyn Policy>,
    pub kv: Arc<KvRouter>,
    pub client: Arc<dyn RequestClient>,
    pub max_attempts: usize,
    pub deadline: Instant,
    /// The whole request's limit, for the timeout error.
    pub timeout: Duration,
    /// Longest wait for a prefill instance's first token and KV handle.
    pub prefill_timeout: Duration,
    /// Instances that failed lately, skipped while their breaker is open.
    pub breakers: Arc<Breakers>,
    /// A prefill instance may compute the prompt (false: the instance that decodes does).
    pub remote_prefill: bool,
    /// The live models, for a later try to see instances that came or went since.
    pub registry: ModelRegistry,
}

/// Waits between tries of a request no instance could take.
const RETRY_PAUSES: [Duration; 5] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
    Duration::from_secs(2),
];

/// What a prefill instance returned.
struct Prefilled {
    /// The prefill instance.
    instance: String,
    tokens: Vec<u32>,
    finish: FinishReason,
    usage: Option<Usage>,
    handle: Option<KvHandle>,
}

/// Why a prefill instance's work was not used (the `cause` label of the fallback metric).
type FallbackCause = &'static str;

impl Dispatch {
    /// Sends `request` and waits for its first chunk (with a split, the prefill's token). The
    /// request is borrowed: the caller keeps it (to move the response on later), and only
    /// the copy each attempt hands to the plane is made.
    pub async fn send(self, request: &GenerateRequest) -> Result<Dispatched, Error> {
        self.send_patiently(request, Vec::new()).await
    }

    /// [`Dispatch::send_avoiding`], tried again a few times, spaced out, while no instance
    /// can take the request: when they all failed together (the NATS server restarting,
    /// a network blip) the request waits for them rather than failing at once.
    pub async fn send_patiently(
        self,
        request: &GenerateRequest,
        avoid: Vec<Arc<str>>,
    ) -> Result<Dispatched, Error> {
        let mut pauses = RETRY_PAUSES.iter();
        let mut this = self;
        loop {
            match this.clone().send_avoiding(request, avoid.clone()).await {
                // Only failures wait: instances that turned the request away as overloaded
                // are answered at once.
                Err(Error::Unavailable { .. })
                    if this.breakers.any_open()
                        && let Some(&pause) = pauses.next()
                        && Instant::now() + pause < this.deadline =>
                {
                    tracing::debug!(?pause, "no instance took the request; trying again");
                    tokio::time::sleep(pause).await;
                    this = this.refreshed();
                }
                sent => return sent,
            }
        }
    }

    /// This dispatch with the model's instances as they are now.
    pub fn refreshed(mut self) -> Dispatch {
        if let Some(entry) = self.registry.table().get(&self.model.name) {
            self.model = entry.clone();
        }
        self
    }

    /// [`Dispatch::send`] to an instance other than those in `avoid`.
    pub async fn send_avoiding(
        self,
        request: &GenerateRequest,
        avoid: Vec<Arc<str>>,
    ) -> Result<Dispatched, Error> {
        if self.model.instances.is_empty() {
            return Err(Error::NoInstance { model: self.model.name.clone() });
        }
        let attempts = self.max_attempts.clamp(1, self.model.instances.len());
        let mut tried = avoid;
        self.breakers.skip_into(&mut tried);
        // With every instance failed lately, trying one beats refusing the request.
        if !tried.is_empty()
            && self
                .model
                .instances
                .iter()
                .all(|i| tried.iter().any(|t| **t == *i.record.instance_id))
        {
            tried.clear();
        }
        let skipped = tried.len();
        // Embedding requests have no decode half.
        let mut allow_remote = !request.embed && self.remote_prefill;
        for _ in 0..attempts {
            let Some(routed) = self.select(request, &tried, allow_remote) else {
                break;
            };
            let Routed { decode, prefill } = routed;
            tried.push(decode.instance().clone());
            if let Some(prefill) = prefill {
                let instance = prefill.instance().clone();
                match self.prefill(request, prefill).await {
                    Ok(prefilled) => {
                        return Ok(self.continue_after(prefilled, request.clone(), decode, tried));
                    }
                    Err(cause) => {
                        if Instant::now() >= self.deadline {
                            return Err(Error::Timeout { after: self.timeout });
                        }
                        tracing::warn!(%instance, cause, "prefill instance failed; the decode instance prefills");
                        metrics::counter!(PREFILL_FALLBACKS_TOTAL, "cause" => cause).increment(1);
                        if matches!(cause, "unreachable" | "stream_error") {
                            self.breakers.failure(&instance, "unreachable");
                        }
                        tried.push(instance);
                        // The retry of this request is local: a second prefill instance
                        // would cost the client another wait.
                        allow_remote = false;
                    }
                }
            }
            if let Some(dispatched) = self.try_instance(request.clone(), decode).await? {
                return Ok(dispatched);
            }
        }
        Err(Error::Unavailable { model: self.model.name.clone(), tried: tried.len() - skipped })
    }

    /// The routing state's choice among the instances not tried yet, booked.
    fn select(
        &self,
        request: &GenerateRequest,
        tried: &[Arc<str>],
        allow_remote: bool,
    ) -> Option<Routed> {
        let route = RouteRequest {
            model: &self.model.name,
            block_hashes: &request.block_hashes,
            prompt_tokens: request.token_ids.len(),
            block_size: self.model.kv_block_size,
            exclude: tried,
            allow_remote_prefill: allow_remote,
        };
        self.kv.select(&route, self.policy.as_ref())
    }

    /// Runs the prefill half on the instance `reservation` names: its tokens and KV handle.
    async fn prefill(
        &self,
        request: &GenerateRequest,
        reservation: Reservation,
    ) -> Result<Prefilled, FallbackCause> {
        let instance = self.model.instance(reservation.instance()).ok_or("gone")?;
        let limit = self.deadline.min(Instant::now() + self.prefill_timeout);
        let mut prefill = request.clone();
        prefill.disaggregated =
            Some(DisaggregatedParams { prefill_only: true, ..Default::default() });
        prefill.deadline_ms = remaining_ms(limit);
        let address = instance.record.address.clone();
        let run = async {
            let mut stream =
                self.client.generate(&address, prefill).await.map_err(|_| "unreachable")?;
            let mut tokens = Vec::new();
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|_| "stream_error")?;
                if chunk.error.is_some() {
                    return Err("error");
                }
                tokens.extend_from_slice(&chunk.token_ids);
                let finish = chunk.finish_reason();
                match finish {
                    FinishReason::Unspecified => continue,
                    FinishReason::Error | FinishReason::Cancelled => return Err("error"),
                    FinishReason::Length | FinishReason::Stop => {}
                }
                if tokens.is_empty() {
                    return Err("no_token");
                }
                return Ok(Prefilled {
                    instance: instance.record.instance_id.clone(),
                    tokens,
                    finish,
                    usage: chunk.usage,
                    handle: chunk.kv_handle,
                });
            }
            Err("stream_error")
        };
        let prefilled = timeout_at(limit, run).await.map_err(|_| "timeout")??;
        instance.requests.increment(1);
        drop(reservation);
        Ok(prefilled)
    }

    /// The response of a request whose prompt a prefill instance computed: its tokens now,
    /// then the decode instance's stream (unless the prefill already finished the request).
    fn continue_after(
        self,
        prefilled: Prefilled,
        mut request: GenerateRequest,
        decode: Reservation,
        tried: Vec<Arc<str>>,
    ) -> Dispatched {
        let max_tokens = request.sampling.as_ref().map_or(0, |s| s.max_tokens) as usize;
        let done = prefilled.finish == FinishReason::Stop || prefilled.tokens.len() >= max_tokens;
        if done {
            let first = GenerateChunk {
                token_ids: prefilled.tokens,
                finish_reason: prefilled.finish.into(),
                usage: prefilled.usage,
                ..GenerateChunk::default()
            };
            return Dispatched {
                first,
                stream: Box::pin(futures::stream::empty()),
                in_flight: None,
                instance_id: prefilled.instance,
            };
        }
        let cached_tokens = prefilled.usage.map(|u| u.cached_tokens);
        if let Some(handle) = &prefilled.handle {
            metrics::histogram!(KV_HANDOFF_BYTES).record(handle.bytes as f64);
        } else {
            metrics::counter!(PREFILL_FALLBACKS_TOTAL, "cause" => "no_handle").increment(1);
        }
        let first =
            GenerateChunk { token_ids: prefilled.tokens.clone(), ..GenerateChunk::default() };
        request.disaggregated = Some(DisaggregatedParams {
            prefill_only: false,
            kv_handle: prefilled.handle,
            generated_token_ids: prefilled.tokens,
        });
        let instance_id = decode.instance().to_string();
        let handed_off = Instant::now();
        let decode = async move {
            let stream = self.decode(request, decode, tried).await;
            metrics::histogram!(KV_HANDOFF_SECONDS).record(handed_off.elapsed().as_secs_f64());
            stream
        };
        let stream = futures::stream::once(decode).flatten().map(move |chunk| {
            // The client is told what the prefill side found cached, not the decode side's
            // hits on the blocks it was just handed.
            chunk.map(|mut chunk| {
                if let (Some(usage), Some(cached)) = (&mut chunk.usage, cached_tokens) {
                    usage.cached_tokens = cached;
                }
                chunk
            })
        });
        Dispatched { first, stream: Box::pin(stream), in_flight: None, instance_id }
    }

    /// The decode half: on the chosen instance, or another one if it cannot take it. Errors
    /// end the stream as an error chunk (the client already has the first token).
    async fn decode(
        self,
        request: GenerateRequest,
        first: Reservation,
        mut tried: Vec<Arc<str>>,
    ) -> ChunkStream {
        let attempts = self.max_attempts.clamp(1, self.model.instances.len());
        let mut next = Some(first);
        for _ in 0..attempts {
            let reservation = match next.take() {
                Some(reservation) => reservation,
                None => match self.select(&request, &tried, false) {
                    Some(routed) => routed.decode,
                    None => break,
                },
            };
            tried.push(reservation.instance().clone());
            match self.try_instance(request.clone(), reservation).await {
                Ok(Some(Dispatched { first, stream, in_flight, .. })) => {
                    let rest = stream.map(move |chunk| {
                        let _held = &in_flight;
                        chunk
                    });
                    return Box::pin(futures::stream::iter([Ok(first)]).chain(rest));
                }
                Ok(None) => {}
                Err(e) => return error_chunk_stream(ErrorKind::Internal, e.to_string()),
            }
        }
        let message = format!("no decode instance of {} could take the request", self.model.name);
        error_chunk_stream(ErrorKind::Overloaded, message)
    }

    /// One attempt: `Ok(None)` when the instance could not take the request and another may.
    async fn try_instance(
        &self,
        mut request: GenerateRequest,
        reservation: Reservation,
    ) -> Result<Option<Dispatched>, Error> {
        let Some(instance) = self.model.instance(reservation.instance()) else {
            return Ok(None);
        };
        let record = &instance.record;
        request.deadline_ms = remaining_ms(self.deadline);
        self.breakers.note_send(&record.instance_id);
        let timed_out = || Error::Timeout { after: self.timeout };
        let mut stream = match timeout_at(
            self.deadline,
            self.client.generate(&record.address, request),
        )
        .await
        {
            Err(_) => return Err(timed_out()),
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::warn!(instance = %record.instance_id, address = %record.address, error = %e, "instance unreachable; trying another");
                self.breakers.failure(reservation.instance(), "unreachable");
                return Ok(None);
            }
        };
        let first = match timeout_at(self.deadline, stream.next()).await {
            Err(_) => return Err(timed_out()),
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(e))) => {
                tracing::warn!(instance = %record.instance_id, error = %e, "instance failed before its first chunk; trying another");
                self.breakers.failure(reservation.instance(), "broken");
                return Ok(None);
            }
            Ok(None) => {
                tracing::warn!(instance = %record.instance_id, "instance ended the stream before its first chunk; trying another");
                self.breakers.failure(reservation.instance(), "broken");
                return Ok(None);
            }
        };
        if let Some(error) = &first.error
            && matches!(error.kind(), ErrorKind::Overloaded | ErrorKind::ShuttingDown)
        {
            tracing::info!(instance = %record.instance_id, kind = ?error.kind(), "instance turned the request away; trying another");
            if error.kind() == ErrorKind::ShuttingDown {
                self.breakers.failure(reservation.instance(), "shutting_down");
            }
            return Ok(None);
        }
        self.breakers.success(&record.instance_id);
        instance.requests.increment(1);
        let instance_id = record.instance_id.clone();
        Ok(Some(Dispatched { first, stream, in_flight: Some(reservation), instance_id }))
    }
}

/// A stream of one error chunk.
fn error_chunk_stream(kind: ErrorKind, message: String) -> ChunkStream {
    let chunk = GenerateChunk {
        finish_reason: FinishReason::Error.into(),
        error: Some(WorkerError { kind: kind.into(), message, ..WorkerError::default() }),
        ..GenerateChunk::default()
    };
    Box::pin(futures::stream::iter([Ok(chunk)]))
}

/// Milliseconds left until `deadline`, at least 1 (0 would mean "no deadline" to a worker).
fn remaining_ms(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now()).as_millis();
    u64::try_from(left).unwrap_or(u64::MAX).max(1)
}
