//! Deterministic token "sampling": a counter-based generator keyed by the request's seed,
//! so a token depends only on (seed, position) and survives preemption and recompute.

use switchyard_proto::SamplingParams;
use xxhash_rust::xxh3::xxh3_64;

use super::MockerConfig;

/// A generated token and whether it ends the sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sampled {
    pub token: u32,
    /// EOS (drawn by `eos_probability`) or one of the request's stop token ids.
    pub stops: bool,
}

#[derive(Debug, Clone)]
pub(crate) struct TokenSampler {
    seed: u64,
    vocab_size: u32,
    /// 0 when the request ignores EOS.
    eos_probability: f64,
    /// Sorted, deduplicated, inside the vocabulary.
    eos_ids: Vec<u32>,
    /// Sorted, deduplicated.
    stop_ids: Vec<u32>,
    /// Ids never drawn as ordinary tokens: EOS only comes from `eos_probability`.
    excluded: Vec<u32>,
    /// `excluded` plus the stop ids: what is masked before `min_tokens`, as vLLM does.
    excluded_early: Vec<u32>,
    min_tokens: u32,
    /// The recorded output this request replays, if the engine replays.
    replay: Option<std::sync::Arc<[u32]>>,
}

impl TokenSampler {
    /// The sampler of one request. The seed is `sampling.seed`, or derived from the request
    /// id so a retried request generates the same text.
    pub(crate) fn new(config: &MockerConfig, sampling: &SamplingParams, request_id: &str) -> Self {
        let seed = sampling.seed.unwrap_or_else(|| xxh3_64(request_id.as_bytes()));
        let replay = (!config.replay.is_empty()).then(|| {
            let pick = sampling.seed.unwrap_or(0) % config.replay.len() as u64;
            config.replay[pick as usize].clone()
        });
        let eos_ids = sorted_in_vocab(config.eos_token_ids.iter().copied(), config.vocab_size);
        let stop_ids = sorted_in_vocab(sampling.stop_token_ids.iter().copied(), u32::MAX);
        let excluded_early =
            sorted_in_vocab(eos_ids.iter().chain(&stop_ids).copied(), config.vocab_size);
        Self {
            seed,
            vocab_size: config.vocab_size,
            eos_probability: if sampling.ignore_eos { 0.0 } else { config.eos_probability },
            excluded: eos_ids.clone(),
            eos_ids,
            stop_ids,
            excluded_early,
            min_tokens: sampling.min_tokens,
            replay,
        }
    }

    /// Whether `min_tokens` can be honoured: some id is neither EOS nor a stop id.
    pub(crate) fn can_avoid_stopping(&self) -> bool {
        self.min_tokens == 0 || (self.excluded_early.len() as u64) < u64::from(self.vocab_size)
    }

    /// The token at output position `index` (0 for the first generated token).
    pub(crate) fn sample(&self, index: u32) -> Sampled {
        if let Some(replay) = &self.replay {
            return match replay.get(index as usize) {
                Some(&token) => Sampled { token, stops: false },
                None => Sampled { token: self.eos_ids.first().copied().unwrap_or(0), stops: true },
            };
        }
        let may_stop = index >= self.min_tokens;
        if may_stop && self.eos_probability > 0.0 && !self.eos_ids.is_empty() {
            let draw = unit_f64(self.draw(index, 1));
            if draw < self.eos_probability {
                let pick = self.draw(index, 2) % self.eos_ids.len() as u64;
                return Sampled { token: self.eos_ids[pick as usize], stops: true };
            }
        }
        let excluded = if may_stop { &self.excluded } else { &self.excluded_early };
        let choices = u64::from(self.vocab_size) - excluded.len() as u64;
        // Multiply-shift maps the draw onto 0..choices without modulo bias worth noting.
        let mut token = ((u128::from(self.draw(index, 0)) * u128::from(choices)) >> 64) as u32;
        // Skip over excluded ids (ascending) so the result is uniform over the rest.
        for &skip in excluded {
            if token >= skip {
                token += 1;
            } else {
                break;
            }
        }
        Sampled { token, stops: may_stop && self.stop_ids.binary_search(&token).is_ok() }
    }

    /// SplitMix64 over (seed, index, stream): independent streams per purpose.
    fn draw(&self, index: u32, stream: u64) -> u64 {
        let counter = (u64::from(index) << 2) | stream;
        let mut z =
            self.seed.wrapping_add(counter.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

fn unit_f64(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

fn sorted_in_vocab(ids: impl Iterator<Item = u32>, vocab_size: u32) -> Vec<u32> {
    let mut ids: Vec<u32> = ids.filter(|&id| id < vocab_size).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(config: &MockerConfig, sampling: SamplingParams) -> TokenSampler {
        TokenSampler::new(config, &sampling, "req-1")
    }

    #[test]
    fn ordinary_tokens_avoid_eos_and_stay_in_vocab() {
        let config =
            MockerConfig { vocab_size: 5, eos_token_ids: vec![0, 3], ..MockerConfig::default() };
        let s = sampler(&config, SamplingParams::default());
        let mut seen = [0u32; 5];
        for i in 0..3000 {
            let out = s.sample(i);
            assert!(!out.stops);
            seen[out.token as usize] += 1;
        }
        assert_eq!(seen[0] + seen[3], 0);
        // Roughly uniform over the three allowed ids.
        for id in [1, 2, 4] {
            assert!((800..1200).contains(&seen[id]), "{seen:?}");
        }
    }

    #[test]
    fn same_seed_same_tokens_and_the_request_id_seeds_by_default() {
        let config = MockerConfig::default();
        let seeded = SamplingParams { seed: Some(7), ..SamplingParams::default() };
        let a = TokenSampler::new(&config, &seeded, "a");
        let b = TokenSampler::new(&config, &seeded, "b");
        let c = TokenSampler::new(&config, &SamplingParams::default(), "a");
        let d = TokenSampler::new(&config, &SamplingParams::default(), "a");
        let tokens = |s: &TokenSampler| (0..32).map(|i| s.sample(i).token).collect::<Vec<_>>();
        assert_eq!(tokens(&a), tokens(&b));
        assert_eq!(tokens(&c), tokens(&d));
        assert_ne!(tokens(&a), tokens(&c));
    }

    #[test]
    fn eos_is_drawn_with_its_probability_but_not_before_min_tokens_or_when_ignored() {
        let config = MockerConfig {
            eos_probability: 0.25,
            eos_token_ids: vec![2],
            ..MockerConfig::default()
        };
        let params = SamplingParams { min_tokens: 10, ..SamplingParams::default() };
        let s = sampler(&config, params.clone());
        assert!((0..10).all(|i| !s.sample(i).stops));
        let eos = (10..4010).filter(|&i| s.sample(i).stops).count();
        assert!((800..1200).contains(&eos), "{eos}");
        assert!((10..4010).filter(|&i| s.sample(i).stops).all(|i| s.sample(i).token == 2));
        let ignoring = sampler(&config, SamplingParams { ignore_eos: true, ..params });
        assert!((0..4000).all(|i| !ignoring.sample(i).stops));
    }

    #[test]
    fn stop_token_ids_stop_only_after_min_tokens() {
        let config =
            MockerConfig { vocab_size: 4, eos_token_ids: vec![0], ..MockerConfig::default() };
        let s = sampler(
            &config,
            SamplingParams { stop_token_ids: vec![1], min_tokens: 5, ..SamplingParams::default() },
        );
        assert!((0..5).all(|i| !s.sample(i).stops && s.sample(i).token != 1));
        let first_stop = (5..1000).find(|&i| s.sample(i).stops);
        assert!(first_stop.is_some());
        assert!(s.can_avoid_stopping());
        let impossible = sampler(
            &config,
            SamplingParams {
                stop_token_ids: vec![1, 2, 3],
                min_tokens: 1,
                ..SamplingParams::default()
            },
        );
        assert!(!impossible.can_avoid_stopping());
    }
}
