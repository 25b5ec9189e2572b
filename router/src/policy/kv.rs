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
    /// The hot-spot guard: an instance is passed over while it would hold more than
    /// `balance_ratio` × the mean requests per instance + `balance_slack` (unless every
    /// instance would). Cache affinity then never piles one prompt onto one worker, however
    /// much its cached prefix saves. 0 turns the guard off; otherwise at least 1.
    pub balance_ratio: f64,
    /// Requests an instance may hold above `balance_ratio` × the mean, so that light load
    /// (a few requests in all) still follows the cache.
    pub balance_slack: f64,
}

impl Default for KvPolicyConfig {
    fn default() -> Self {
        KvPolicyConfig {
            prefill_load_scale: 16.0,
            active_request_weight: 1.0,
            temperature: 0.0,
            balance_ratio: 1.25,
            balance_slack: 2.0,
        }
    }
}

impl KvPolicyConfig {
    pub fn validate(&self) -> Result<(), Error> {
        for (setting, value) in [
            ("prefill_load_scale", self.prefill_load_scale),
            ("active_request_weight", self.active_request_weight),
            ("temperature", self.temperature),
            ("balance_ratio", self.balance_ratio),
            ("balance_slack", self.balance_slack),
        ] {
            if !value.is_finite() || value < 0.0 {
                return Err(Error::InvalidConfig {
                    setting,
                    reason: format!("{value} is not a finite number ≥ 0"),
                });
            }
        }
        if self.balance_ratio > 0.0 && self.balance_ratio < 1.0 {
            return Err(Error::InvalidConfig {
                setting: "balance_ratio",
                reason: format!(
                    "{} would pass over every instance at an even spread; use 0 (off) or ≥ 1",
                    self.balance_ratio
                ),
            });
        }
        Ok(())
    }
}

/// Lowest cost wins, among the instances the hot-spot guard (`balance_ratio`) leaves in,
/// where cost = prefill_load_scale × (prompt blocks − overlap blocks) + active decode blocks
/// + active_request_weight × requests.
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

    /// Most requests an instance may hold with this one added, under the hot-spot guard
    /// (`None`: no limit).
    fn request_cap(&self, candidates: &[Candidate<'_>]) -> Option<f64> {
        if self.config.balance_ratio == 0.0 {
            return None;
        }
        let (total, least) = candidates.iter().fold((0.0, f64::INFINITY), |(total, least), c| {
            let requests = f64::from(c.requests());
            (total + requests, least.min(requests))
        });
        let mean = (total + 1.0) / candidates.len() as f64;
        let cap = self.config.balance_ratio * mean + self.config.balance_slack;
        // With every instance over the cap, the guard has nothing to choose between.
        (least + 1.0 <= cap).then_some(cap)
    }

    /// Each candidate's cost, infinite for those the hot-spot guard passes over.
    fn costs<'c>(
        &'c self,
        candidates: &'c [Candidate<'_>],
        prompt_blocks: usize,
    ) -> impl Iterator<Item = f64> + Clone + 'c {
        let cap = self.request_cap(candidates);
        candidates.iter().map(move |c| match cap {
            Some(cap) if f64::from(c.requests()) + 1.0 > cap => f64::INFINITY,
            _ => self.cost(c, prompt_blocks),
        })
    }

    /// A draw from the softmax over normalized costs (instances the guard passes over have
    /// weight 0). Costs are recomputed on each pass, cheaper than a buffer for them.
    fn sample(&self, candidates: &[Candidate<'_>], prompt_blocks: usize) -> Option<usize> {
        let costs = self.costs(candidates, prompt_blocks);
        let (min, max) = costs
            .clone()
            .filter(|c| c.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), c| (lo.min(c), hi.max(c)));
        let range = max - min;
        if !(range > 0.0 && range.is_finite()) {
            // All eligible costs are equal: the cheapest, ties at random.
            return argmin_random_tie(costs);
        }
        let scale = 1.0 / (range * self.config.temperature);
        let weight = |cost: f64| (-(cost - min) * scale).exp();
        let total: f64 = costs.clone().map(weight).sum();
        let mut left = rand::rng().random::<f64>() * total;
        let mut last = None;
        for (i, cost) in costs.enumerate() {
            if cost.is_finite() {
                last = Some(i);
            }
            left -= weight(cost);
            if left <= 0.0 {
                return Some(i);
            }
        }
        // Rounding can leave a sliver past the last weight: that draw belongs to the last.
        last
    }
}

impl Policy for KvPolicy {
    fn select(&self, candidates: &[Candidate<'_>], request: &RequestInfo<'_>) -> Option<usize> {
        let prompt_blocks = request.block_hashes.len();
        if self.config.temperature > 0.0 {
            return self.sample(candidates, prompt_blocks);
        }
        argmin_random_tie(self.costs(candidates, prompt_blocks))
    }
}
