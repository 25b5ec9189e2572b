//! Load-only policies: the least-loaded instance, or the less loaded of two drawn at random.

use rand::Rng;

use super::{Candidate, Policy, RequestInfo, argmin_random_tie};

/// How loaded a candidate is, compared in order: requests queued or running, then KV blocks
/// they occupy, then KV cache usage.
fn load(candidate: &Candidate<'_>) -> (u32, u64, f32) {
    (candidate.requests(), candidate.active_decode_blocks, candidate.kv_usage)
}

/// The instance with the least load; ties broken at random.
#[derive(Debug, Default)]
pub struct LeastLoaded;

impl Policy for LeastLoaded {
    fn select(&self, candidates: &[Candidate<'_>], _: &RequestInfo<'_>) -> Option<usize> {
        argmin_random_tie(candidates.iter().map(load))
    }
}

/// The less loaded of two instances drawn at random. Unlike least-loaded, several routers
/// with the same stale view of the load do not all pick the same instance.
#[derive(Debug, Default)]
pub struct PowerOfTwo;

impl Policy for PowerOfTwo {
    fn select(&self, candidates: &[Candidate<'_>], _: &RequestInfo<'_>) -> Option<usize> {
        let n = candidates.len();
        if n < 2 {
            return (n == 1).then_some(0);
        }
        let mut rng = rand::rng();
        let first = rng.random_range(0..n);
        // Draw the second among the other n - 1, so the two are distinct.
        let mut second = rng.random_range(0..n - 1);
        if second >= first {
            second += 1;
        }
        // Both are random draws, so keeping `first` on a tie is itself a random choice.
        if load(&candidates[second]) < load(&candidates[first]) {
            Some(second)
        } else {
            Some(first)
        }
    }
}
