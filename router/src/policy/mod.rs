//! Routing policies: pure functions over a snapshot of the live instances of one model.
//!
//! A policy sees the candidates and the request, and returns the index of the chosen
//! candidate. It keeps no I/O and no clocks, so it is tested and benchmarked on its own.

mod kv;
mod load;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use crate::Error;
pub use kv::{KvPolicy, KvPolicyConfig};
pub use load::{LeastLoaded, PowerOfTwo};

/// One live instance as a policy sees it. Fields a caller does not know stay at their
/// default (0), which every policy reads as "idle" or "holds nothing".
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Candidate<'a> {
    pub instance_id: &'a str,
    /// Requests this router has sent to the instance that have not finished yet.
    pub in_flight: u32,
    /// Leading blocks of the prompt the instance already holds
    /// ([`crate::KvIndex::find_matches`]).
    pub overlap_blocks: u32,
    /// KV blocks the instance's running requests occupy: its last load report, or the
    /// router's own prediction (prompt plus output blocks of what it sent there).
    pub active_decode_blocks: u64,
    /// Requests the instance last reported running.
    pub active_requests: u32,
    /// Requests the instance last reported waiting for a slot.
    pub waiting_requests: u32,
    /// Fraction of the instance's KV cache in use, 0 to 1, from its last load report.
    pub kv_usage: f32,
}

impl<'a> Candidate<'a> {
    /// A candidate known only by its id and this router's in-flight count.
    pub fn new(instance_id: &'a str, in_flight: u32) -> Candidate<'a> {
        Candidate { instance_id, in_flight, ..Candidate::default() }
    }

    /// Requests queued at or running on the instance. The load report lags this router's
    /// latest decisions and this router's count misses other routers' requests, so the
    /// larger of the two is the best lower bound of both.
    pub fn requests(&self) -> u32 {
        self.active_requests.saturating_add(self.waiting_requests).max(self.in_flight)
    }
}

/// What a policy may know about the request it routes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestInfo<'a> {
    /// Chained KV block hashes of the prompt (see [`crate::block_hashes`]).
    pub block_hashes: &'a [u64],
    pub prompt_tokens: usize,
}

impl<'a> RequestInfo<'a> {
    pub fn new(block_hashes: &'a [u64], prompt_tokens: usize) -> RequestInfo<'a> {
        RequestInfo { block_hashes, prompt_tokens }
    }
}

/// Picks the instance that serves a request.
pub trait Policy: Send + Sync + fmt::Debug {
    /// Index into `candidates` of the chosen instance; `None` only when `candidates` is empty.
    fn select(&self, candidates: &[Candidate<'_>], request: &RequestInfo<'_>) -> Option<usize>;
}

/// The policies a router can be started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    RoundRobin,
    Random,
    LeastLoaded,
    PowerOfTwo,
    /// Prefix-cache aware: see [`KvPolicy`].
    #[default]
    Kv,
}

/// Settings of the policies that have any.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PolicyConfig {
    pub kv: KvPolicyConfig,
}

impl PolicyConfig {
    /// Checks every setting, so a bad one fails at start-up, not on the first request.
    pub fn validate(&self) -> Result<(), Error> {
        self.kv.validate()
    }
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 5] = [
        PolicyKind::RoundRobin,
        PolicyKind::Random,
        PolicyKind::LeastLoaded,
        PolicyKind::PowerOfTwo,
        PolicyKind::Kv,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
            PolicyKind::LeastLoaded => "least-loaded",
            PolicyKind::PowerOfTwo => "power-of-two",
            PolicyKind::Kv => "kv",
        }
    }

    /// The policy with default settings.
    pub fn build(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
            PolicyKind::Random => Box::new(RandomPolicy),
            PolicyKind::LeastLoaded => Box::new(LeastLoaded),
            PolicyKind::PowerOfTwo => Box::new(PowerOfTwo),
            PolicyKind::Kv => Box::new(KvPolicy::default()),
        }
    }

    /// The policy with `config`'s settings, which are validated first.
    pub fn build_with(self, config: &PolicyConfig) -> Result<Box<dyn Policy>, Error> {
        config.validate()?;
        Ok(match self {
            PolicyKind::Kv => Box::new(KvPolicy::new(config.kv)?),
            other => other.build(),
        })
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for PolicyKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        PolicyKind::ALL.into_iter().find(|kind| kind.name() == s).ok_or_else(|| {
            Error::UnknownPolicy {
                name: s.to_owned(),
                known: PolicyKind::ALL.map(PolicyKind::name).join(", "),
            }
        })
    }
}

/// Each instance in turn. The counter is shared by all models, which keeps the policy
/// stateless per model while still spreading each model's requests evenly over time.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl Policy for RoundRobin {
    fn select(&self, candidates: &[Candidate<'_>], _: &RequestInfo<'_>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        Some(self.next.fetch_add(1, Ordering::Relaxed) % candidates.len())
    }
}

/// An instance drawn uniformly at random.
#[derive(Debug, Default)]
pub struct RandomPolicy;

impl Policy for RandomPolicy {
    fn select(&self, candidates: &[Candidate<'_>], _: &RequestInfo<'_>) -> Option<usize> {
        if candidates.is_empty() {
            return None;
        }
        Some(rand::rng().random_range(0..candidates.len()))
    }
}

/// Index of the smallest of `keys`, ties broken uniformly at random. Reservoir sampling
/// over the ties keeps it one pass with no allocation; random ties matter because equal
/// candidates are the norm at start-up, and always taking the first would pile onto it.
fn argmin_random_tie<K: PartialOrd>(keys: impl Iterator<Item = K>) -> Option<usize> {
    let mut rng = rand::rng();
    let mut best: Option<(usize, K)> = None;
    let mut ties = 0u32;
    for (i, key) in keys.enumerate() {
        match &best {
            Some((_, min)) if key > *min => {}
            Some((_, min)) if key == *min => {
                ties += 1;
                if rng.random_range(0..ties) == 0 {
                    best = Some((i, key));
                }
            }
            _ => {
                best = Some((i, key));
                ties = 1;
            }
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests;
