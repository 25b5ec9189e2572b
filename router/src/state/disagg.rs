//! Conditional disaggregation: whether a request's prompt is computed by a prefill worker or
//! by the decode worker chosen for it. Pure: it sees counts, never clocks or sockets.

use crate::Error;

/// When a request is prefilled on its decode worker instead of a prefill worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DisaggConfig {
    /// A prompt whose part not cached on the chosen decode worker is at most this many
    /// tokens is prefilled there: a short prefill costs the decode batch less than a KV
    /// hand-off costs the request.
    pub max_local_prefill_tokens: usize,
    /// A prefill worker with more than this many requests queued or running is not sent
    /// more; with every one over it, the decode worker prefills.
    pub max_prefill_queue: u32,
}

impl Default for DisaggConfig {
    fn default() -> Self {
        DisaggConfig { max_local_prefill_tokens: 16, max_prefill_queue: 2 }
    }
}

impl DisaggConfig {
    pub fn validate(&self) -> Result<(), Error> {
        Ok(())
    }
}

/// Where a request's prompt is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrefillPlace {
    /// On a prefill worker, whose KV the decode worker then pulls.
    Remote,
    /// On the decode worker, because of the reason given.
    Local(LocalReason),
}

/// Why a request is prefilled on its decode worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LocalReason {
    /// The model has no prefill instance (aggregated serving), or none the caller may use.
    NoPrefillInstance,
    /// The caller asked for a local prefill (e.g. after a prefill worker failed).
    NotAllowed,
    /// The uncached part of the prompt is at most `max_local_prefill_tokens`.
    ShortPrompt,
    /// Every prefill worker's queue is over `max_prefill_queue`.
    PrefillQueuesFull,
}

impl LocalReason {
    /// A short name, for metric labels.
    pub fn name(self) -> &'static str {
        match self {
            LocalReason::NoPrefillInstance => "no_prefill_instance",
            LocalReason::NotAllowed => "fallback",
            LocalReason::ShortPrompt => "short_prompt",
            LocalReason::PrefillQueuesFull => "prefill_queues_full",
        }
    }
}

impl DisaggConfig {
    /// The conditional decision, before any prefill instance is scored: `uncached_tokens`
    /// is the prompt's part the chosen decode worker does not hold, `queues` the requests
    /// queued at or running on each usable prefill instance.
    pub fn place(
        &self,
        uncached_tokens: usize,
        queues: impl IntoIterator<Item = u32>,
    ) -> PrefillPlace {
        let mut queues = queues.into_iter().peekable();
        if queues.peek().is_none() {
            return PrefillPlace::Local(LocalReason::NoPrefillInstance);
        }
        if uncached_tokens <= self.max_local_prefill_tokens {
            return PrefillPlace::Local(LocalReason::ShortPrompt);
        }
        if queues.all(|q| q > self.max_prefill_queue) {
            return PrefillPlace::Local(LocalReason::PrefillQueuesFull);
        }
        PrefillPlace::Remote
    }

    /// Whether a prefill instance with `queue` requests may take one more.
    pub fn accepts(&self, queue: u32) -> bool {
        queue <= self.max_prefill_queue
    }
}
