//! Summary statistics computed as numpy computes them in bench_serving: population standard
//! deviation, percentiles by linear interpolation between closest ranks.

/// Mean, median, spread and tail of one latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Distribution {
    pub mean: f64,
    pub median: f64,
    pub std: f64,
    pub p90: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Distribution {
    /// Summarises `values` (any order). An empty set summarises to zeros, as bench_serving's
    /// `np.mean(x or 0)` does.
    pub fn of(values: &mut [f64]) -> Distribution {
        if values.is_empty() {
            return Distribution::default();
        }
        values.sort_unstable_by(f64::total_cmp);
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
        Distribution {
            mean,
            median: percentile_sorted(values, 50.0),
            std: var.sqrt(),
            p90: percentile_sorted(values, 90.0),
            p95: percentile_sorted(values, 95.0),
            p99: percentile_sorted(values, 99.0),
            max: values[values.len() - 1],
        }
    }
}

/// numpy's default (`linear`) percentile of sorted values; 0 for none.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => 0.0,
        1 => sorted[0],
        n => {
            let rank = p / 100.0 * (n - 1) as f64;
            // rank is within [0, n-1]: the casts cannot lose anything that matters.
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy() {
        // np.percentile([1,2,3,4,10], [50, 90, 99]) == [3, 7.6, 9.76]; np.std == 3.16227766
        let d = Distribution::of(&mut [10.0, 2.0, 4.0, 1.0, 3.0]);
        assert_eq!(d.median, 3.0);
        assert!((d.p90 - 7.6).abs() < 1e-9, "{}", d.p90);
        assert!((d.p99 - 9.76).abs() < 1e-9, "{}", d.p99);
        assert!((d.std - 3.162_277_66).abs() < 1e-6, "{}", d.std);
        assert_eq!((d.mean, d.max), (4.0, 10.0));
        assert_eq!(Distribution::of(&mut []), Distribution::default());
        assert_eq!(percentile_sorted(&[5.0], 99.0), 5.0);
    }
}
