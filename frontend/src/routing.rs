//! Choosing an instance and reaching it: the policy picks among the model's live instances
//! (seeing the frontend's in-flight counts), and a request that an instance cannot take —
//! unreachable, or turned away as overloaded or shutting down before its first chunk — is
//! sent to another one, up to `max_attempts` instances.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use futures::StreamExt;
use switchyard_proto::{ErrorKind, GenerateChunk, GenerateRequest};
use switchyard_router::{Policy, RequestInfo};
use switchyard_runtime::{ChunkStream, RequestClient};
use tokio::time::{Instant, timeout_at};

use crate::error::Error;
use crate::kv_router::{KvRouter, Reservation};
use crate::models::{ModelEntry, RoutedInstance};

/// Counts a request against an instance while it lives, and holds its predicted KV blocks.
#[derive(Debug)]
pub(crate) struct InFlightGuard {
    counter: Arc<AtomicU32>,
    _reservation: Reservation,
}

impl InFlightGuard {
    fn new(counter: &Arc<AtomicU32>, reservation: Reservation) -> InFlightGuard {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlightGuard { counter: counter.clone(), _reservation: reservation }
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A request an instance accepted: its first chunk, and the rest of its stream.
pub(crate) struct Dispatched {
    pub first: GenerateChunk,
    pub stream: ChunkStream,
    pub in_flight: InFlightGuard,
    /// The instance serving it.
    pub instance_id: String,
}

/// Where and how to send one request.
pub(crate) struct Dispatch<'a> {
    pub model: &'a ModelEntry,
    pub policy: &'a dyn Policy,
    pub kv: &'a Arc<KvRouter>,
    pub client: &'a dyn RequestClient,
    pub max_attempts: usize,
    pub deadline: Instant,
    /// The whole request's limit, for the timeout error.
    pub timeout: Duration,
}

impl Dispatch<'_> {
    /// Sends `request` to an instance and waits for its first chunk.
    pub async fn send(&self, mut request: GenerateRequest) -> Result<Dispatched, Error> {
        let instances = &self.model.instances;
        if instances.is_empty() {
            return Err(Error::NoInstance { model: self.model.name.clone() });
        }
        let attempts = self.max_attempts.clamp(1, instances.len());
        let mut tried: Vec<usize> = Vec::new();
        for attempt in 0..attempts {
            let Some((index, reservation)) =
                self.select(&tried, &request.block_hashes, request.token_ids.len())
            else {
                break;
            };
            tried.push(index);
            // Only a request that may still go elsewhere is copied.
            let mut this = if attempt + 1 == attempts {
                std::mem::take(&mut request)
            } else {
                request.clone()
            };
            this.deadline_ms = remaining_ms(self.deadline);
            if let Some(dispatched) =
                self.try_instance(&instances[index], this, reservation).await?
            {
                return Ok(dispatched);
            }
        }
        Err(Error::Unavailable { model: self.model.name.clone(), tried: tried.len() })
    }

    /// The policy's choice among the instances not tried yet, with its predicted KV blocks
    /// booked.
    fn select(
        &self,
        tried: &[usize],
        block_hashes: &[u64],
        prompt_tokens: usize,
    ) -> Option<(usize, Reservation)> {
        let info = RequestInfo { block_hashes, prompt_tokens };
        let untried: Vec<usize> =
            (0..self.model.instances.len()).filter(|i| !tried.contains(i)).collect();
        self.kv.select(self.model, &untried, self.policy, &info)
    }

    /// One attempt: `Ok(None)` when the instance could not take the request and another may.
    async fn try_instance(
        &self,
        instance: &RoutedInstance,
        request: GenerateRequest,
        reservation: Reservation,
    ) -> Result<Option<Dispatched>, Error> {
        let record = &instance.record;
        let in_flight = InFlightGuard::new(&instance.in_flight, reservation);
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
                return Ok(None);
            }
        };
        let first = match timeout_at(self.deadline, stream.next()).await {
            Err(_) => return Err(timed_out()),
            Ok(Some(Ok(chunk))) => chunk,
            Ok(Some(Err(e))) => {
                tracing::warn!(instance = %record.instance_id, error = %e, "instance failed before its first chunk; trying another");
                return Ok(None);
            }
            Ok(None) => {
                tracing::warn!(instance = %record.instance_id, "instance ended the stream before its first chunk; trying another");
                return Ok(None);
            }
        };
        if let Some(error) = &first.error
            && matches!(error.kind(), ErrorKind::Overloaded | ErrorKind::ShuttingDown)
        {
            tracing::info!(instance = %record.instance_id, kind = ?error.kind(), "instance turned the request away; trying another");
            return Ok(None);
        }
        instance.requests.increment(1);
        Ok(Some(Dispatched { first, stream, in_flight, instance_id: record.instance_id.clone() }))
    }
}

/// Milliseconds left until `deadline`, at least 1 (0 would mean "no deadline" to a worker).
fn remaining_ms(deadline: Instant) -> u64 {
    let left = deadline.saturating_duration_since(Instant::now()).as_millis();
    u64::try_from(left).unwrap_or(u64::MAX).max(1)
}
