//! The best prefix-cache hit rate a workload allows: what a server would report if every
//! prompt found, already cached, every leading KV block that any earlier prompt of the workload
//! computed — one worker with an unbounded cache, or a router that kept every shared prefix on
//! the worker that first computed it. Routing results are read against this bound.
//!
//! Counted as engines count hits: whole blocks of `block_size` tokens, and never the prompt's
//! last token, which is always recomputed because its forward pass yields the first output
//! token.

use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};

use crate::dataset::{Dataset, Prompt};
use crate::{Error, TokenCounter};

/// The bound over the text prompts of `dataset` in workload order, tokenized with
/// `tokenizer` (as the server tokenizes a completion's text). `None` when the workload has
/// chat prompts, whose tokens depend on the server's chat template, or no prompt tokens.
pub fn prefix_cache_bound(
    dataset: &Dataset,
    tokenizer: &TokenCounter,
    block_size: usize,
) -> Result<Option<f64>, Error> {
    if block_size == 0 {
        return Err(Error::Config("--kv-block-size must be at least 1".into()));
    }
    let mut texts = Vec::with_capacity(dataset.num_requests());
    for turn in dataset.sessions.iter().flat_map(|s| &s.turns) {
        match &turn.prompt {
            Prompt::Text(text) => texts.push(text.as_str()),
            Prompt::Messages(_) => return Ok(None),
        }
    }
    let prompts = tokenizer.ids_batch(texts)?;
    Ok(bound_of(prompts.iter().map(Vec::as_slice), block_size))
}

/// Cached tokens over prompt tokens when each prompt reuses the longest run of leading blocks
/// seen in any earlier prompt.
fn bound_of<'a>(prompts: impl Iterator<Item = &'a [u32]>, block_size: usize) -> Option<f64> {
    // Chained hashes: a block is known only together with everything before it.
    let hasher = std::hash::RandomState::new();
    let mut seen: HashSet<u64> = HashSet::new();
    let (mut cached, mut total) = (0u64, 0u64);
    for tokens in prompts {
        total += tokens.len() as u64;
        let usable = tokens.len().saturating_sub(1) / block_size;
        let mut parent = 0u64;
        let mut hit = true;
        for (i, block) in tokens.chunks_exact(block_size).enumerate() {
            let mut h = hasher.build_hasher();
            h.write_u64(parent);
            for &t in block {
                h.write_u32(t);
            }
            parent = h.finish();
            let known = !seen.insert(parent);
            hit &= known && i < usable;
            if hit {
                cached += block_size as u64;
            }
        }
    }
    (total > 0).then(|| cached as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_leading_blocks_count_once_computed() {
        let a: Vec<u32> = (0..40).collect();
        // Same first two blocks of 16, then different.
        let mut b: Vec<u32> = (0..32).collect();
        b.extend([900; 8]);
        // Same as `a` entirely: every full block but the one holding the last token.
        let c = a.clone();
        let prompts = [a.as_slice(), b.as_slice(), c.as_slice()];
        let bound = bound_of(prompts.into_iter(), 16).unwrap();
        // a: 0 cached; b: 32 of 40; c: 32 of 40 (its 2 full blocks; the rest is partial).
        assert!((bound - 64.0 / 120.0).abs() < 1e-12, "{bound}");
    }

    #[test]
    fn a_prompt_of_whole_blocks_recomputes_its_last_block() {
        let a: Vec<u32> = (0..32).collect();
        let prompts = [a.as_slice(), a.as_slice()];
        // The second reuses one block: the second holds its last token.
        assert_eq!(bound_of(prompts.into_iter(), 16), Some(16.0 / 64.0));
    }

    #[test]
    fn a_block_matches_only_after_the_same_prefix() {
        let a: Vec<u32> = (0..32).collect();
        let mut b: Vec<u32> = (100..116).collect();
        b.extend(16..33);
        let prompts = [a.as_slice(), b.as_slice()];
        assert_eq!(bound_of(prompts.into_iter(), 16), Some(0.0));
        assert_eq!(bound_of(std::iter::empty(), 16), None);
    }
}
