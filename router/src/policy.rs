//! Routing policies: pure functions over a snapshot of the live instances of one model.
//!
//! A policy sees the candidates and the request, and returns the index of the chosen
//! candidate. It keeps no I/O and no clocks, so it is tested and benchmarked on its own.

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};

use rand::Rng;

use crate::Error;

/// One live instance as a policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub instance_id: &'a str,
    /// Requests this router has sent to the instance that have not finished yet.
    pub in_flight: u32,
}

/// What a policy may know about the request it routes.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestInfo<'a> {
    /// Chained KV block hashes of the prompt (see [`crate::block_hashes`]).
    pub block_hashes: &'a [u64],
    pub prompt_tokens: usize,
}

/// Picks the instance that serves a request.
pub trait Policy: Send + Sync + fmt::Debug {
    /// Index into `candidates` of the chosen instance; `None` only when `candidates` is empty.
    fn select(&self, candidates: &[Candidate<'_>], request: &RequestInfo<'_>) -> Option<usize>;
}

/// The policies a router can be started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    #[default]
    RoundRobin,
    Random,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 2] = [PolicyKind::RoundRobin, PolicyKind::Random];

    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round-robin",
            PolicyKind::Random => "random",
        }
    }

    pub fn build(self) -> Box<dyn Policy> {
        match self {
            PolicyKind::RoundRobin => Box::new(RoundRobin::default()),
            PolicyKind::Random => Box::new(RandomPolicy),
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn candidates(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("w{i}")).collect()
    }

    fn select_many(policy: &dyn Policy, n: usize, rounds: usize) -> Vec<usize> {
        let ids = candidates(n);
        let view: Vec<Candidate<'_>> =
            ids.iter().map(|id| Candidate { instance_id: id, in_flight: 0 }).collect();
        let mut counts = vec![0; n];
        for _ in 0..rounds {
            let i = policy.select(&view, &RequestInfo::default()).expect("a candidate");
            counts[i] += 1;
        }
        counts
    }

    #[test]
    fn round_robin_spreads_evenly() {
        assert_eq!(select_many(&RoundRobin::default(), 3, 300), vec![100, 100, 100]);
    }

    #[test]
    fn random_reaches_every_instance() {
        let counts = select_many(&RandomPolicy, 4, 4000);
        assert!(counts.iter().all(|&c| c > 700), "{counts:?}");
    }

    #[test]
    fn no_candidates_no_choice() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.build().select(&[], &RequestInfo::default()), None);
        }
    }

    #[test]
    fn names_round_trip() {
        for kind in PolicyKind::ALL {
            assert_eq!(kind.name().parse::<PolicyKind>().expect("known"), kind);
        }
        let err = "fastest".parse::<PolicyKind>().expect_err("unknown");
        assert!(err.to_string().contains("round-robin"), "{err}");
    }
}
