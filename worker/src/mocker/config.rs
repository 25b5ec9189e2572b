//! The mocker's configuration: cache geometry, scheduler limits, token sampling and timing.

use super::timing::TimingProfile;
use crate::{Error, Result};

/// How the simulated engine is shaped. Defaults follow vLLM's defaults on one H100.
#[derive(Debug, Clone, PartialEq)]
pub struct MockerConfig {
    /// Tokens per KV block; also the block size of the prefix hashes published in the card
    /// and in KV events.
    pub block_size: u32,
    /// KV blocks the simulated GPU holds; the cache never holds more.
    pub num_gpu_blocks: u64,
    /// Most sequences running in one step (vLLM's `max_num_seqs`).
    pub max_num_seqs: usize,
    /// Token budget of one step: decode tokens plus prompt tokens computed
    /// (vLLM's `max_num_batched_tokens`).
    pub max_num_batched_tokens: usize,
    /// Equal prompt prefixes share KV blocks; unused blocks stay cached until evicted.
    pub enable_prefix_caching: bool,
    /// A prompt longer than the step's remaining budget is computed over several steps;
    /// without it a prompt waits until it fits in one step.
    pub enable_chunked_prefill: bool,
    /// Simulated times are divided by this, so a benchmark can run faster than real time.
    pub speedup_ratio: f64,
    /// Fraction of the blocks kept free when admitting a new sequence, so running
    /// sequences have room to grow before they must be preempted.
    pub watermark: f64,
    /// Chance that each generated token is an end-of-sequence token. 0 makes every output
    /// run to `max_tokens`, which is what a benchmark with fixed output lengths wants.
    pub eos_probability: f64,
    /// Generated ids lie in `0..vocab_size`; should match the tokenizer the frontend uses
    /// so every id detokenizes.
    pub vocab_size: u32,
    /// End-of-sequence ids: never generated except when `eos_probability` draws one.
    pub eos_token_ids: Vec<u32>,
    /// Most tokens (prompt + output) of one request; published in the model card.
    pub context_length: u32,
    /// Step latencies of the simulated GPU + model.
    pub profile: TimingProfile,
    /// Recorded outputs to replay instead of random tokens: a request's output is entry
    /// `seed mod len` (entry 0 without a seed), then EOS. For exercising clients and output
    /// parsers with real models' outputs; empty for random tokens.
    pub replay: Vec<std::sync::Arc<[u32]>>,
}

impl Default for MockerConfig {
    fn default() -> Self {
        Self {
            block_size: 16,
            num_gpu_blocks: 16_384,
            max_num_seqs: 256,
            max_num_batched_tokens: 8_192,
            enable_prefix_caching: true,
            enable_chunked_prefill: true,
            speedup_ratio: 1.0,
            watermark: 0.01,
            eos_probability: 0.0,
            // Llama 2's vocabulary and `</s>`; set both from the served tokenizer.
            vocab_size: 32_000,
            eos_token_ids: vec![2],
            context_length: 8_192,
            profile: TimingProfile::default(),
            replay: Vec::new(),
        }
    }
}

impl MockerConfig {
    /// Checks that the engine can run with this configuration.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("block_size", self.block_size as usize),
            ("num_gpu_blocks", self.total_blocks()),
            ("max_num_seqs", self.max_num_seqs),
            ("max_num_batched_tokens", self.max_num_batched_tokens),
            ("vocab_size", self.vocab_size as usize),
            ("context_length", self.context_length as usize),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(config_error(format!("{name} must be at least 1")));
        }
        if u32::try_from(self.num_gpu_blocks).is_err() {
            return Err(config_error(format!(
                "num_gpu_blocks must be below 2^32, got {}",
                self.num_gpu_blocks
            )));
        }
        if self.max_num_batched_tokens < self.max_num_seqs {
            return Err(config_error(format!(
                "max_num_batched_tokens ({}) must be at least max_num_seqs ({}) so every \
                 running sequence can decode in each step",
                self.max_num_batched_tokens, self.max_num_seqs
            )));
        }
        if !self.enable_chunked_prefill
            && self.max_num_batched_tokens < self.context_length as usize
        {
            return Err(config_error(format!(
                "without chunked prefill, max_num_batched_tokens ({}) must be at least \
                 context_length ({}) or long prompts could never be scheduled",
                self.max_num_batched_tokens, self.context_length
            )));
        }
        if !(self.speedup_ratio.is_finite() && self.speedup_ratio > 0.0) {
            return Err(config_error(format!(
                "speedup_ratio must be a finite number > 0, got {}",
                self.speedup_ratio
            )));
        }
        if !(0.0..1.0).contains(&self.watermark) {
            return Err(config_error(format!(
                "watermark must be in [0, 1), got {}",
                self.watermark
            )));
        }
        if !(0.0..=1.0).contains(&self.eos_probability) {
            return Err(config_error(format!(
                "eos_probability must be in [0, 1], got {}",
                self.eos_probability
            )));
        }
        if self.eos_probability > 0.0 && self.eos_token_ids.is_empty() {
            return Err(config_error(
                "eos_probability > 0 needs at least one id in eos_token_ids".to_owned(),
            ));
        }
        if let Some(id) = self.eos_token_ids.iter().find(|&&id| id >= self.vocab_size) {
            return Err(config_error(format!(
                "eos token id {id} is outside the vocabulary (vocab_size {})",
                self.vocab_size
            )));
        }
        let mut eos = self.eos_token_ids.clone();
        eos.sort_unstable();
        eos.dedup();
        if eos.len() >= self.vocab_size as usize {
            return Err(config_error(
                "eos_token_ids cover the whole vocabulary: no ordinary token is left".to_owned(),
            ));
        }
        self.profile.validate()
    }

    /// `block_size` as an index type.
    pub(crate) fn block_tokens(&self) -> usize {
        self.block_size as usize
    }

    /// `num_gpu_blocks` as an index type; validation keeps it below 2^32.
    pub(crate) fn total_blocks(&self) -> usize {
        usize::try_from(self.num_gpu_blocks).unwrap_or(usize::MAX)
    }

    /// Blocks admission keeps free (vLLM's `watermark_blocks`).
    pub(crate) fn watermark_blocks(&self) -> usize {
        // The product is below num_gpu_blocks, so the cast cannot overflow.
        (self.watermark * self.num_gpu_blocks as f64) as usize
    }
}

fn config_error(message: String) -> Error {
    Error::Config(format!("mocker: {message}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(config: &MockerConfig) -> String {
        match config.validate() {
            Err(Error::Config(m)) => m,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    #[test]
    fn the_default_is_valid() {
        assert!(MockerConfig::default().validate().is_ok());
    }

    #[test]
    fn bad_values_are_named() {
        let bad = MockerConfig { block_size: 0, ..MockerConfig::default() };
        assert!(message(&bad).contains("block_size"));
        let bad = MockerConfig { speedup_ratio: 0.0, ..MockerConfig::default() };
        assert!(message(&bad).contains("speedup_ratio"));
        let bad = MockerConfig { watermark: 1.0, ..MockerConfig::default() };
        assert!(message(&bad).contains("watermark"));
        let bad = MockerConfig {
            eos_probability: 0.5,
            eos_token_ids: Vec::new(),
            ..MockerConfig::default()
        };
        assert!(message(&bad).contains("eos_token_ids"));
        let bad = MockerConfig {
            max_num_seqs: 512,
            max_num_batched_tokens: 256,
            ..MockerConfig::default()
        };
        assert!(message(&bad).contains("max_num_seqs"));
        let bad = MockerConfig {
            enable_chunked_prefill: false,
            max_num_batched_tokens: 2048,
            ..MockerConfig::default()
        };
        assert!(message(&bad).contains("chunked prefill"));
        let bad =
            MockerConfig { vocab_size: 2, eos_token_ids: vec![0, 1], ..MockerConfig::default() };
        assert!(message(&bad).contains("whole vocabulary"));
    }

    #[test]
    fn watermark_blocks_rounds_down() {
        let config =
            MockerConfig { num_gpu_blocks: 150, watermark: 0.01, ..MockerConfig::default() };
        assert_eq!(config.watermark_blocks(), 1);
    }
}
