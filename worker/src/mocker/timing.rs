//! The mocker's time model: how long one forward pass (a scheduler step) takes on the
//! simulated GPU.

use std::time::Duration;

use crate::{Error, Result};

/// `c2·x² + c1·x + c0`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Quadratic {
    pub c2: f64,
    pub c1: f64,
    pub c0: f64,
}

impl Quadratic {
    pub fn eval(&self, x: f64) -> f64 {
        (self.c2 * x + self.c1) * x + self.c0
    }

    fn is_finite(&self) -> bool {
        self.c2.is_finite() && self.c1.is_finite() && self.c0.is_finite()
    }
}

/// Step latencies of one GPU + model pair, fitted on a real engine.
///
/// A step's simulated duration is `prefill_ms(t)` when it computes `t > 0` prompt tokens,
/// plus `decode_ms(u)` when it also decodes at least one sequence, divided by the speed-up
/// ratio. The two are added, not maxed, because a mixed batch really does both kinds of
/// work in one pass: the prompt chunk's compute-bound matmuls and the decodes' KV reads.
/// The sum over-counts the fixed per-pass overhead (weights are read once), which makes a
/// mixed step slightly pessimistic; it is also how Dynamo's mocker combines them, so
/// studies made with either stay comparable.
#[derive(Debug, Clone, PartialEq)]
pub struct TimingProfile {
    /// Where the numbers come from (GPU, model, engine, source).
    pub name: String,
    /// Milliseconds for a step over `t` new prompt tokens (cache hits are not computed).
    pub prefill: Quadratic,
    /// Milliseconds for a decode step as a function of `u` = active KV tokens / total KV
    /// tokens, i.e. blocks held by running sequences over all blocks.
    pub decode: Quadratic,
    /// Lower bound on a decode step: the fitted parabola turns down near `u = 1`, and a
    /// step is never free.
    pub decode_floor_ms: f64,
}

impl Default for TimingProfile {
    fn default() -> Self {
        Self::h100()
    }
}

impl TimingProfile {
    /// One H100: the polynomials of NVIDIA Dynamo's mocker (`lib/mocker/src/perf_model.rs`,
    /// `PerfModel::Polynomial`, its default): prefill_ms = 4.209989e-7·t² + 0.01518344·t +
    /// 16.50142 over the uncached prompt tokens `t` of a step, decode_ms = −25.74·u² +
    /// 54.01·u + 5.74 over KV usage `u`, floored at 1 ms. Dynamo computes `u` as active KV
    /// tokens over a fixed 16384; here it is over this cache's capacity, so `u` stays in
    /// 0..=1 whatever the cache size.
    pub fn h100() -> Self {
        Self {
            name: "h100 (NVIDIA Dynamo mocker default polynomials)".to_owned(),
            prefill: Quadratic { c2: 4.209989e-7, c1: 0.01518344, c0: 16.50142 },
            decode: Quadratic { c2: -25.74, c1: 54.01, c0: 5.74 },
            decode_floor_ms: 1.0,
        }
    }

    /// Milliseconds to compute `new_tokens` prompt tokens in one step.
    pub fn prefill_ms(&self, new_tokens: usize) -> f64 {
        self.prefill.eval(new_tokens as f64).max(0.0)
    }

    /// Milliseconds for one decode step at KV usage `kv_usage` (0..=1).
    pub fn decode_ms(&self, kv_usage: f64) -> f64 {
        self.decode.eval(kv_usage).max(self.decode_floor_ms)
    }

    /// Milliseconds of a step that computes `prefill_tokens` prompt tokens and decodes
    /// `decodes` sequences at KV usage `kv_usage`, before the speed-up ratio.
    pub fn step_ms(&self, prefill_tokens: usize, decodes: usize, kv_usage: f64) -> f64 {
        let prefill = if prefill_tokens > 0 { self.prefill_ms(prefill_tokens) } else { 0.0 };
        let decode = if decodes > 0 { self.decode_ms(kv_usage) } else { 0.0 };
        prefill + decode
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if !(self.prefill.is_finite() && self.decode.is_finite()) {
            return Err(Error::Config(format!(
                "timing profile `{}` has a coefficient that is not a finite number",
                self.name
            )));
        }
        if !(self.decode_floor_ms.is_finite() && self.decode_floor_ms > 0.0) {
            return Err(Error::Config(format!(
                "timing profile `{}`: decode_floor_ms must be > 0, got {}",
                self.name, self.decode_floor_ms
            )));
        }
        Ok(())
    }
}

/// Converts simulated milliseconds to wall-clock time under `speedup_ratio`.
pub fn scaled(ms: f64, speedup_ratio: f64) -> Duration {
    Duration::from_secs_f64((ms / speedup_ratio / 1000.0).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h100_matches_the_published_polynomials() {
        let p = TimingProfile::h100();
        let t = 1000.0;
        let want = 4.209989e-7 * t * t + 0.01518344 * t + 16.50142;
        assert!((p.prefill_ms(1000) - want).abs() < 1e-9);
        let u: f64 = 0.5;
        let want = -25.74 * u * u + 54.01 * u + 5.74;
        assert!((p.decode_ms(u) - want).abs() < 1e-9);
    }

    #[test]
    fn decode_never_drops_below_the_floor() {
        let mut p = TimingProfile::h100();
        p.decode.c0 = -100.0;
        assert_eq!(p.decode_ms(0.0), 1.0);
    }

    #[test]
    fn a_mixed_step_adds_prefill_and_decode() {
        let p = TimingProfile::h100();
        assert_eq!(p.step_ms(0, 0, 0.3), 0.0);
        assert_eq!(p.step_ms(100, 0, 0.3), p.prefill_ms(100));
        assert_eq!(p.step_ms(0, 7, 0.3), p.decode_ms(0.3));
        assert_eq!(p.step_ms(100, 7, 0.3), p.prefill_ms(100) + p.decode_ms(0.3));
    }

    #[test]
    fn speedup_divides_time() {
        assert_eq!(scaled(20.0, 2.0), Duration::from_millis(10));
    }
}
