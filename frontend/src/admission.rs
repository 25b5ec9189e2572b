//! Admission control: a model takes at most `max_inflight_per_instance` × its instances
//! requests from this frontend at once; the next ones wait in a bounded queue, and past its
//! bound or its wait limit they get 429 with `Retry-After` at once. So an overload costs the
//! client a quick, retryable answer, not a wait until its own timeout, and the frontend's
//! memory stays bounded by the queue instead of growing with the offered load.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::error::Error;
use crate::metrics::{ADMISSION_REJECTED_TOTAL, QUEUED_REQUESTS};

/// The frontend's admission settings.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Requests one instance may hold from this frontend (0: no limit, no queue).
    pub max_inflight_per_instance: usize,
    /// Requests that may wait for a free place, over all models.
    pub max_queued: usize,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            max_inflight_per_instance: 0,
            max_queued: 1024,
            queue_timeout: Duration::from_secs(10),
        }
    }
}

/// One model's places.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    inflight: AtomicUsize,
    freed: Notify,
}

/// A place held by one request; given back on drop (the response ended or its client left).
#[derive(Debug)]
pub(crate) struct Permit {
    gate: Arc<Gate>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.inflight.fetch_sub(1, Ordering::AcqRel);
        self.gate.freed.notify_one();
    }
}

/// The queue shared by all models.
#[derive(Debug, Default)]
pub(crate) struct Queue {
    waiting: AtomicUsize,
}

/// Counts a waiting request out of the queue however its wait ends.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let left = self.0.fetch_sub(1, Ordering::AcqRel) - 1;
        metrics::gauge!(QUEUED_REQUESTS).set(left as f64);
    }
}

impl Gate {
    fn try_take(self: &Arc<Self>, capacity: usize) -> Option<Permit> {
        let mut current = self.inflight.load(Ordering::Acquire);
        loop {
            if capacity != 0 && current >= capacity {
                return None;
            }
            match self.inflight.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Permit { gate: self.clone() }),
                Err(now) => current = now,
            }
        }
    }

    /// A place for one request among `instances` instances, waiting in `queue` if need be.
    pub async fn admit(
        self: &Arc<Self>,
        instances: usize,
        config: &AdmissionConfig,
        queue: &Queue,
    ) -> Result<Permit, Error> {
        let capacity = config.max_inflight_per_instance.saturating_mul(instances.max(1));
        if let Some(permit) = self.try_take(capacity) {
            return Ok(permit);
        }
        let retry_after = config.queue_timeout.as_secs().clamp(1, 10);
        let reject = |why: &'static str| {
            metrics::counter!(ADMISSION_REJECTED_TOTAL, "reason" => why).increment(1);
            Error::Overloaded { why, retry_after }
        };
        if queue.waiting.fetch_add(1, Ordering::AcqRel) >= config.max_queued {
            queue.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(reject("queue_full"));
        }
        let waiting = Waiting(&queue.waiting);
        metrics::gauge!(QUEUED_REQUESTS).set(queue.waiting.load(Ordering::Relaxed) as f64);
        let deadline = Instant::now() + config.queue_timeout;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(permit) = self.try_take(capacity) {
                drop(waiting);
                // Another waiter may fit too (several places freed at once).
                self.freed.notify_one();
                return Ok(permit);
            }
            if tokio::time::timeout_at(deadline, freed).await.is_err() {
                drop(waiting);
                return Err(reject("queue_timeout"));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn config(per_instance: usize, queued: usize, wait_ms: u64) -> AdmissionConfig {
        AdmissionConfig {
            max_inflight_per_instance: per_instance,
            max_queued: queued,
            queue_timeout: Duration::from_millis(wait_ms),
        }
    }

    #[tokio::test]
    async fn places_scale_with_instances_and_a_full_queue_answers_at_once() {
        let gate = Arc::new(Gate::default());
        let queue = Queue::default();
        let c = config(2, 0, 1000);
        let held: Vec<Permit> =
            futures::future::join_all((0..4).map(|_| gate.admit(2, &c, &queue)))
                .await
                .into_iter()
                .map(Result::unwrap)
                .collect();
        let started = Instant::now();
        let refused = gate.admit(2, &c, &queue).await.unwrap_err();
        assert!(matches!(refused, Error::Overloaded { why: "queue_full", .. }), "{refused:?}");
        assert!(started.elapsed() < Duration::from_millis(100));
        drop(held);
        assert!(gate.admit(2, &c, &queue).await.is_ok());
    }

    #[tokio::test]
    async fn a_queued_request_gets_the_next_free_place_or_times_out() {
        let gate = Arc::new(Gate::default());
        let queue = Queue::default();
        let c = config(1, 4, 200);
        let first = gate.admit(1, &c, &queue).await.unwrap();
        let waiter = {
            let gate = gate.clone();
            tokio::spawn(async move { gate.admit(1, &c, &Queue::default()).await.map(|_| ()) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(first);
        waiter.await.unwrap().unwrap();

        let _held = gate.admit(1, &c, &queue).await.unwrap();
        let timed_out = gate.admit(1, &c, &queue).await.unwrap_err();
        assert!(matches!(timed_out, Error::Overloaded { why: "queue_timeout", .. }));
        assert_eq!(queue.waiting.load(Ordering::Relaxed), 0, "the queue is empty again");
    }

    #[tokio::test]
    async fn no_limit_admits_everything() {
        let gate = Arc::new(Gate::default());
        let c = config(0, 0, 0);
        let held: Vec<_> = (0..1000).map(|_| gate.try_take(0).unwrap()).collect();
        assert_eq!(held.len(), 1000);
        assert!(gate.admit(1, &c, &Queue::default()).await.is_ok());
    }
}
