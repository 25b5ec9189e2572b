//! A circuit breaker per instance, so one failure takes an instance out of this frontend's
//! routing at once instead of when its lease expires. A failed connect, a stream broken
//! mid-way or a stall opens the breaker; while open, requests skip the instance. After a
//! back-off (1 s, doubling per further failure up to 8 s) one request at a time may try it
//! (half-open); a success closes the breaker.
//!
//! Kept off the request path's cost: with every breaker closed, a request pays one atomic load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::metrics::{INSTANCE_FAILURES_TOTAL, INSTANCE_PROBES_TOTAL};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// Short enough that an instance back from a partition rejoins within seconds.
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// A breaker not failed again for this long is dropped: by then discovery has removed a dead
/// instance, and a live one starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(300);

/// What this frontend thinks of an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InstanceState {
    /// Takes requests.
    Serving,
    /// Failed lately; skipped until its back-off passes.
    Suspect,
    /// Said it is shutting down; skipped until it leaves discovery.
    Draining,
}

impl InstanceState {
    pub fn name(self) -> &'static str {
        match self {
            InstanceState::Serving => "serving",
            InstanceState::Suspect => "suspect",
            InstanceState::Draining => "draining",
        }
    }
}

#[derive(Debug)]
struct Breaker {
    /// Failures in a row.
    failures: u32,
    last_failure: Instant,
    /// When the next request may try the instance.
    retry_at: Instant,
    /// What went wrong last.
    cause: &'static str,
}

impl Breaker {
    fn backoff(&self) -> Duration {
        let doublings = self.failures.saturating_sub(1).min(16);
        (FIRST_BACKOFF * 2u32.pow(doublings)).min(MAX_BACKOFF)
    }
}

/// The breakers of every instance this frontend sends to.
#[derive(Debug, Default)]
pub(crate) struct Breakers {
    /// How many breakers are open: zero on the fast path.
    open: AtomicUsize,
    states: Mutex<HashMap<Arc<str>, Breaker>>,
}

impl Breakers {
    fn states(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, Breaker>> {
        self.states.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Appends the instances requests should skip now. An instance whose back-off has passed is
    /// not skipped by this request (the probe) and waits another back-off before the next one.
    pub fn skip_into(&self, out: &mut Vec<Arc<str>>) {
        if self.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        let now = Instant::now();
        let mut states = self.states();
        states.retain(|_, b| now.duration_since(b.last_failure) < FORGET_AFTER);
        self.open.store(states.len(), Ordering::Relaxed);
        for (id, breaker) in states.iter() {
            if now < breaker.retry_at {
                out.push(id.clone());
            }
        }
    }

    /// An instance failed a request: open (or re-open) its breaker.
    pub fn failure(&self, id: &Arc<str>, cause: &'static str) {
        metrics::counter!(INSTANCE_FAILURES_TOTAL, "instance" => id.to_string(), "cause" => cause)
            .increment(1);
        let now = Instant::now();
        let mut states = self.states();
        let breaker = states.entry(id.clone()).or_insert(Breaker {
            failures: 0,
            last_failure: now,
            retry_at: now,
            cause,
        });
        breaker.last_failure = now;
        breaker.cause = cause;
        // The requests in flight on an instance fail together: the back-off grows only when a
        // request sent after it opened (the probe) fails too.
        if breaker.failures > 0 && now < breaker.retry_at {
            return;
        }
        breaker.failures += 1;
        breaker.retry_at = now + breaker.backoff();
        tracing::warn!(instance = %id, cause, failures = breaker.failures, backoff = ?breaker.backoff(), "instance failed; routing skips it for now");
        self.open.store(states.len(), Ordering::Relaxed);
    }

    /// Counts a request sent to `id` while its breaker is open: a probe.
    /// The probe's slot is taken only when a request is really sent (a policy may pass over
    /// an instance it was free to pick): the next waits another back-off.
    pub fn note_send(&self, id: &str) {
        if !self.any_open() {
            return;
        }
        let mut states = self.states();
        if let Some(breaker) = states.get_mut(id) {
            breaker.retry_at = Instant::now() + breaker.backoff();
            metrics::counter!(INSTANCE_PROBES_TOTAL, "instance" => id.to_owned()).increment(1);
        }
    }

    /// Whether some instance failed lately.
    pub fn any_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// An instance answered: close its breaker.
    pub fn success(&self, id: &str) {
        if self.open.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut states = self.states();
        if states.remove(id).is_some() {
            tracing::info!(instance = %id, "instance answers again");
        }
        self.open.store(states.len(), Ordering::Relaxed);
    }

    pub fn state(&self, id: &str) -> InstanceState {
        if self.open.load(Ordering::Relaxed) == 0 {
            return InstanceState::Serving;
        }
        match self.states().get(id) {
            None => InstanceState::Serving,
            Some(b) if b.cause == "shutting_down" => InstanceState::Draining,
            Some(_) => InstanceState::Suspect,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_skips_the_instance_until_its_backoff_then_lets_one_probe_through() {
        let breakers = Breakers::default();
        let id: Arc<str> = Arc::from("a");
        let mut skip = Vec::new();
        breakers.skip_into(&mut skip);
        assert!(skip.is_empty());
        assert_eq!(breakers.state("a"), InstanceState::Serving);

        breakers.failure(&id, "connect");
        breakers.skip_into(&mut skip);
        assert_eq!(skip, vec![id.clone()]);
        assert_eq!(breakers.state("a"), InstanceState::Suspect);

        // Past the back-off: requests may try it until one is sent there (the probe); the
        // next are skipped again.
        breakers.states().get_mut("a").unwrap().retry_at = Instant::now();
        skip.clear();
        breakers.skip_into(&mut skip);
        assert!(skip.is_empty(), "the probe goes through");
        breakers.skip_into(&mut skip);
        assert!(skip.is_empty(), "no request was sent there yet");
        breakers.note_send("a");
        breakers.skip_into(&mut skip);
        assert_eq!(skip, vec![id.clone()], "one probe per back-off");

        breakers.success("a");
        skip.clear();
        breakers.skip_into(&mut skip);
        assert!(skip.is_empty());
        assert_eq!(breakers.state("a"), InstanceState::Serving);
    }

    #[test]
    fn the_backoff_doubles_per_failed_probe_up_to_its_cap_not_per_request_in_flight() {
        let breakers = Breakers::default();
        let id: Arc<str> = Arc::from("a");
        let mut backoffs = Vec::new();
        for _ in 0..8 {
            // Two requests in flight fail together: one step of back-off.
            breakers.failure(&id, "broken");
            breakers.failure(&id, "broken");
            backoffs.push(breakers.states()["a"].backoff().as_secs());
            // The probe is due (and fails in the next round).
            breakers.states().get_mut("a").unwrap().retry_at = Instant::now();
        }
        assert_eq!(backoffs, [1, 2, 4, 8, 8, 8, 8, 8]);
    }
}
