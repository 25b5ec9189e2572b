//! The arrival process: when each session is scheduled, as an offset from the start of the run.
//! Gaps are gamma-distributed with shape `burstiness` and mean `1 / rate` (shape 1 is a Poisson
//! process), as in vLLM and sglang.bench_serving; an infinite rate schedules everything at 0.

use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Gamma};

use crate::Error;
use crate::config::RequestRate;

/// Scheduled send offsets of `n` sessions. The first goes at 0; each later one a drawn gap
/// after the one before, like bench_serving's generator (which sleeps after yielding).
pub fn schedule(
    n: usize,
    rate: RequestRate,
    burstiness: f64,
    seed: u64,
) -> Result<Vec<Duration>, Error> {
    if rate.is_infinite() {
        return Ok(vec![Duration::ZERO; n]);
    }
    let scale = 1.0 / (rate.0 * burstiness);
    let gamma = Gamma::new(burstiness, scale)
        .map_err(|e| Error::Config(format!("--burstiness {burstiness} / --request-rate: {e}")))?;
    // Its own stream, so the schedule does not change when the dataset draws more numbers.
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_a771_7a15);
    let mut at = 0.0_f64;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(Duration::from_secs_f64(at));
        at += gamma.sample(&mut rng);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(rate: f64, burstiness: f64) -> Vec<f64> {
        let at = schedule(20_000, RequestRate(rate), burstiness, 3).unwrap();
        at.windows(2).map(|w| (w[1] - w[0]).as_secs_f64()).collect()
    }

    fn mean_and_cv(x: &[f64]) -> (f64, f64) {
        let mean = x.iter().sum::<f64>() / x.len() as f64;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / x.len() as f64;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn poisson_gaps_have_the_rate_and_unit_variation() {
        let (mean, cv) = mean_and_cv(&gaps(10.0, 1.0));
        assert!((mean - 0.1).abs() < 0.005, "{mean}");
        assert!((cv - 1.0).abs() < 0.05, "{cv}");
    }

    #[test]
    fn burstiness_changes_variation_not_rate() {
        // Gamma with shape k has a coefficient of variation of 1/sqrt(k).
        let (mean, cv) = mean_and_cv(&gaps(10.0, 4.0));
        assert!((mean - 0.1).abs() < 0.005, "{mean}");
        assert!((cv - 0.5).abs() < 0.05, "{cv}");
        let (_, cv) = mean_and_cv(&gaps(10.0, 0.25));
        assert!((cv - 2.0).abs() < 0.2, "{cv}");
    }

    #[test]
    fn infinite_rate_sends_all_at_once_and_schedule_is_seeded() {
        assert!(schedule(5, RequestRate::INFINITE, 1.0, 0).unwrap().iter().all(|d| d.is_zero()));
        let a = schedule(10, RequestRate(5.0), 1.0, 9).unwrap();
        assert_eq!(a, schedule(10, RequestRate(5.0), 1.0, 9).unwrap());
        assert_eq!(a[0], Duration::ZERO);
    }
}
