//! The prefix-cache aware policy: send a request where its prefill is cheapest, counting
//! what the instance already caches against what it is already busy with.

use rand::Rng;

use super::{Candidate, Policy, RequestInfo, argmin_random_tie};
use crate::Error;

/// The cost knobs of [`KvPolicy`]; every one is a finite number ≥ 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KvPolicyConfig {
    /// Weight of one prompt block to prefill against one block of running requests' KV.
    /// Higher follows the cache more eagerly; lower balances load more.
    pub prefill_load_scale: f64,
    /// Cost of each request queued or running on the instance, in blocks. It keeps
    /// identical prompts from piling onto the instance that cached them first while their
    /// KV blocks are not yet in its load.
    pub active_request_weight: f64,
    /// 0 picks the cheapest instance (ties at random). Above 0, instances are drawn with
    /// probability ∝ exp(−normalized cost / temperature), costs normalized to 0..1 over the
    /// candidates, which spreads near-equal choices.
    pub temperature: f64,
}

impl Default for KvPolicyConfig {
    fn default() -> Self {
        KvPolicyConfig { prefill_load_scale: 1.0, active_request_weight: 1.0, temperature: 0.0 }
    }
}

impl KvPolicyConfig {
    pub fn validate(&self) -> Result<(), Error> {
        for (setting, value) in [
            ("prefill_load_scale", self.prefill_load_scale),
            ("active_request_weight", self.active_request_weight),
            ("temperature", self.temperature),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(Error::InvalidConfig {
                    setting,
                    reason: format!("{value} is not a finite number ≥ 0"),
                });
            }
        }
        Ok(())
    }
}

/// Lowest cost wins, where cost = prefill_load_scale × (prompt blocks − overlap blocks)
/// + active decode blocks + active_request_weight × requests.
#[derive(Debug, Default)]
pub struct KvPolicy {
    config: KvPolicyConfig,
}

impl KvPolicy {
    pub fn new(config: KvPolicyConfig) -> Result<KvPolicy, Error> {
        config.validate()?;
        Ok(KvPolicy { config })
    }

    /// The cost of sending a request of `prompt_blocks` blocks to `candidate`.
    pub fn cost(&self, candidate: &Candidate<'_>, prompt_blocks: usize) -> f64 {
        let overlap = (candidate.overlap_blocks as usize).min(prompt_blocks);
        let prefill = (prompt_blocks - overlap) as f64;
        self.config.prefill_load_scale * prefill
            + candidate.active_decode_blocks as f64
            + self.config.active_request_weight * f64::from(candidate.requests())
    }

    /// A draw from the softmax over normalized costs. Costs are recomputed on each pass,
    /// which is cheaper than allocating a buffer for them.
    fn sample(&self, candidates: &[Candidate<'_>], prompt_blocks: usize) -> Option<usize> {
        let costs = || candidates.iter().map(|c| self.cost(c, prompt_blocks));
        let (min, max) =
            costs().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| (lo.min(c), hi.max(c)));
        let mut rng = rand::rng();
        let range = max - min;
        if !(range > 0.0 && range.is_finite()) {
            return (!candidates.is_empty()).then(|| rng.random_range(0..candidates.len()));
        }
        let scale = 1.0 / (range * self.config.temperature);
        let weight = |cost: f64| (-(cost - min) * scale).exp();
        let total: f64 = costs().map(weight).sum();
        let mut left = rng.random::<f64>() * total;
        for (i, cost) in costs().enumerate() {
            left -= weight(cost);
            if left <= 0.0 {
                return Some(i);
            }
        }
        // Rounding can leave a sliver past the last weight: that draw belongs to the last.
        Some(candidates.len() - 1)
    }
}

impl Policy for KvPolicy {
    fn select(&self, candidates: &[Candidate<'_>], request: &RequestInfo<'_>) -> Option<usize> {
        let prompt_blocks = request.block_hashes.len();
        if self.config.temperature > 0.0 {
            return self.sample(candidates, prompt_blocks);
        }
        argmin_random_tie(candidates.iter().map(|c| self.cost(c, prompt_blocks)))
    }
}
