//! One request inside the mocker: its tokens, block hashes, KV blocks and progress, and the
//! checks that admit it.

use switchyard_proto::{GenerateChunk, GenerateRequest, SamplingParams, Usage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::MockerConfig;
use super::kv_cache::{BlockId, block_hash};
use super::sampler::{Sampled, TokenSampler};
use crate::{Error, Result};

/// The mocker's own id of a sequence; request ids from clients may repeat.
pub(crate) type SeqId = u64;

#[derive(Debug)]
pub(crate) struct Sequence {
    pub id: SeqId,
    /// Prompt then generated tokens.
    tokens: Vec<u32>,
    prompt_len: usize,
    /// Chained hashes of the full blocks of `tokens`; grows as generated tokens fill blocks.
    hashes: Vec<u64>,
    /// KV blocks held, in token order.
    pub blocks: Vec<BlockId>,
    /// Leading blocks already registered in the cache (or found there at admission).
    registered: usize,
    /// Tokens whose KV is computed.
    computed: usize,
    /// Tokens known at the last admission: below it the sequence computes a prompt (after a
    /// preemption, the prompt plus what it had generated), at or above it decodes.
    prefill_end: usize,
    max_tokens: u32,
    /// Set for a prefill-only request: it generates one token, then its blocks are held
    /// for a decode worker to pull (when the client asked for more than one token).
    pub prefill_only: bool,
    /// The client's `max_tokens` (a prefill-only sequence itself stops after one).
    client_max_tokens: u32,
    /// Prompt tokens whose KV a prefill worker handed over and this engine imported: at the
    /// first admission they count as computed when their full blocks are cached.
    imported_tokens: usize,
    sampler: TokenSampler,
    /// Prompt tokens served from the prefix cache at the first admission.
    cached_tokens: Option<u32>,
    pub output: mpsc::UnboundedSender<GenerateChunk>,
    /// Fired by the caller's token, by dropping the output stream, or by the engine when
    /// the sequence leaves; the actor learns of client-side cancellation through it.
    pub abort: CancellationToken,
}

impl Sequence {
    /// Validates `request` against `config` and builds its sequence.
    pub(crate) fn new(
        id: SeqId,
        config: &MockerConfig,
        request: GenerateRequest,
        output: mpsc::UnboundedSender<GenerateChunk>,
        abort: CancellationToken,
    ) -> Result<Self> {
        let sampling = request.sampling.clone().unwrap_or_default();
        let sampler = TokenSampler::new(config, &sampling, &request.request_id);
        validate(config, &request, &sampling, &sampler)?;
        let bs = config.block_tokens();
        let disaggregated = request.disaggregated.unwrap_or_default();
        let prompt_len = request.token_ids.len();
        let imported_tokens = disaggregated
            .kv_handle
            .as_ref()
            .map_or(0, |handle| (handle.tokens as usize).min(prompt_len));
        let mut tokens = request.token_ids;
        tokens.extend_from_slice(&disaggregated.generated_token_ids);
        let hashes = if tokens.len() == prompt_len {
            prompt_hashes(&tokens, &request.block_hashes, bs)
        } else {
            switchyard_router::block_hashes(&tokens, bs)
        };
        let prefill_only = disaggregated.prefill_only;
        Ok(Self {
            id,
            prompt_len,
            tokens,
            hashes,
            blocks: Vec::new(),
            registered: 0,
            computed: 0,
            prefill_end: 0,
            max_tokens: if prefill_only { 1 } else { sampling.max_tokens },
            prefill_only,
            client_max_tokens: sampling.max_tokens,
            imported_tokens,
            sampler,
            cached_tokens: None,
            output,
            abort,
        })
    }

    /// Tokens known: prompt plus generated.
    pub(crate) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(crate) fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    pub(crate) fn computed(&self) -> usize {
        self.computed
    }

    /// Whether the next step computes prompt tokens rather than one decode token.
    pub(crate) fn is_prefilling(&self) -> bool {
        self.computed < self.prefill_end
    }

    /// Hashes a cache lookup may use at admission. The last token is always recomputed,
    /// as in vLLM, since its forward pass yields the next token.
    pub(crate) fn lookup_hashes(&self, block_size: usize) -> &[u64] {
        let usable = (self.tokens.len() - 1) / block_size;
        &self.hashes[..usable.min(self.hashes.len())]
    }

    pub(crate) fn hashes(&self) -> &[u64] {
        &self.hashes
    }

    /// Tokens computed once admitted with `hit_blocks` leading blocks cached: those
    /// blocks, or the whole imported prompt when its full blocks are all there (the partial
    /// last block came with them).
    pub(crate) fn computed_at_admission(&self, hit_blocks: usize, block_size: usize) -> usize {
        if self.imported_tokens > 0 && hit_blocks >= self.imported_tokens / block_size {
            self.imported_tokens
        } else {
            hit_blocks * block_size
        }
    }

    /// Starts (or restarts after preemption) with `hit_blocks` leading blocks from the
    /// cache, already appended to `blocks`. An imported prompt goes on as a decode: its
    /// generated tokens are computed one step at a time.
    pub(crate) fn admit(&mut self, hit_blocks: usize, block_size: usize) {
        self.computed = self.computed_at_admission(hit_blocks, block_size);
        self.registered = hit_blocks;
        self.prefill_end = if self.computed == self.imported_tokens && self.imported_tokens > 0 {
            self.computed
        } else {
            self.tokens.len()
        };
        if self.cached_tokens.is_none() {
            self.cached_tokens = Some(u32::try_from(self.computed).unwrap_or(u32::MAX));
        }
    }

    /// Back to waiting after its blocks were released: everything is recomputed.
    pub(crate) fn preempt(&mut self) {
        debug_assert!(self.blocks.is_empty());
        self.computed = 0;
        self.registered = 0;
        // The imported partial block is gone with the blocks: everything is recomputed.
        self.imported_tokens = 0;
    }

    /// Blocks the sequence must hold to compute `new_tokens` more tokens.
    pub(crate) fn blocks_needed(&self, new_tokens: usize, block_size: usize) -> usize {
        (self.computed + new_tokens).div_ceil(block_size).saturating_sub(self.blocks.len())
    }

    /// Marks `new_tokens` as computed; returns the range of blocks that just became full
    /// and must be registered in the cache.
    pub(crate) fn advance(&mut self, new_tokens: usize, block_size: usize) -> (usize, usize) {
        self.computed += new_tokens;
        let full = (self.computed / block_size).min(self.hashes.len());
        let from = self.registered;
        self.registered = full.max(from);
        (from, self.registered)
    }

    /// Whether every known token is computed, so the step produced the next token.
    pub(crate) fn needs_token(&self) -> bool {
        self.computed == self.tokens.len()
    }

    /// Draws the next token and appends it, hashing a block it completes.
    pub(crate) fn push_token(&mut self, block_size: usize) -> Sampled {
        let index = u32::try_from(self.generated()).unwrap_or(u32::MAX);
        let sampled = self.sampler.sample(index);
        self.tokens.push(sampled.token);
        if self.tokens.len().is_multiple_of(block_size) {
            let parent = self.hashes.last().copied().unwrap_or(0);
            let block = &self.tokens[self.tokens.len() - block_size..];
            self.hashes.push(block_hash(parent, block));
        }
        sampled
    }

    /// Whether `max_tokens` is reached.
    pub(crate) fn at_max_tokens(&self) -> bool {
        self.generated() >= self.max_tokens as usize
    }

    /// Whether a finished prefill-only sequence hands its blocks to a decode worker: the
    /// client wants more tokens than this one and it did not end the sequence.
    pub(crate) fn hands_off(&self, stopped: bool) -> bool {
        self.prefill_only && !stopped && self.client_max_tokens > 1
    }

    pub(crate) fn prompt_len(&self) -> usize {
        self.prompt_len
    }

    pub(crate) fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: u32::try_from(self.prompt_len).unwrap_or(u32::MAX),
            completion_tokens: u32::try_from(self.generated()).unwrap_or(u32::MAX),
            cached_tokens: self.cached_tokens.unwrap_or(0),
        }
    }
}

fn validate(
    config: &MockerConfig,
    request: &GenerateRequest,
    sampling: &SamplingParams,
    sampler: &TokenSampler,
) -> Result<()> {
    let invalid = |m: String| Err(Error::InvalidRequest(m));
    let prompt = request.token_ids.len();
    if prompt == 0 {
        return invalid("the prompt is empty: at least one token is needed".to_owned());
    }
    let max_tokens = sampling.max_tokens as usize;
    if let Some(d) = &request.disaggregated {
        if d.prefill_only && (d.kv_handle.is_some() || !d.generated_token_ids.is_empty()) {
            return invalid(
                "a prefill-only request carries no KV handle or generated tokens".into(),
            );
        }
        if d.generated_token_ids.len() >= max_tokens.max(1) {
            return invalid(format!(
                "{} generated tokens given, but max_tokens is {max_tokens}",
                d.generated_token_ids.len()
            ));
        }
    }
    if max_tokens == 0 {
        return invalid("max_tokens must be at least 1".to_owned());
    }
    if sampling.min_tokens > sampling.max_tokens {
        return invalid(format!(
            "min_tokens ({}) must not exceed max_tokens ({})",
            sampling.min_tokens, sampling.max_tokens
        ));
    }
    if !sampler.can_avoid_stopping() {
        return invalid(
            "stop_token_ids and eos ids cover the whole vocabulary, so min_tokens cannot be \
             honoured"
                .to_owned(),
        );
    }
    let context = config.context_length as usize;
    if prompt + max_tokens > context {
        return invalid(format!(
            "the prompt ({prompt} tokens) plus max_tokens ({max_tokens}) is {} tokens, over \
             the context length of {context}",
            prompt + max_tokens
        ));
    }
    // A sequence alone must be able to reach its last token, or it would be preempted
    // forever. The last generated token's KV is never computed, hence the -1.
    let bs = config.block_tokens();
    let admissible = config.total_blocks() - config.watermark_blocks();
    let prompt_blocks = prompt.div_ceil(bs);
    if prompt_blocks > admissible {
        return invalid(format!(
            "the prompt needs {prompt_blocks} KV blocks of {bs} tokens but the cache admits at \
             most {admissible} ({} blocks, {} kept free)",
            config.num_gpu_blocks,
            config.watermark_blocks()
        ));
    }
    let total_blocks = (prompt + max_tokens - 1).div_ceil(bs);
    if total_blocks > admissible {
        return invalid(format!(
            "the prompt plus max_tokens needs {total_blocks} KV blocks of {bs} tokens but the \
             cache admits at most {admissible} ({} blocks, {} kept free); lower max_tokens",
            config.num_gpu_blocks,
            config.watermark_blocks()
        ));
    }
    Ok(())
}

/// The frontend's hashes when they are of this block size, else our own. A count that fits
/// and an equal first block make a different block size (or a different hash) implausible.
fn prompt_hashes(tokens: &[u32], given: &[u64], block_size: usize) -> Vec<u64> {
    let full = tokens.len() / block_size;
    if given.len() == full && (full == 0 || given[0] == block_hash(0, &tokens[..block_size])) {
        return given.to_vec();
    }
    switchyard_router::block_hashes(tokens, block_size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_hashes_of_another_block_size_are_replaced() {
        let tokens: Vec<u32> = (0..64).collect();
        let ours = switchyard_router::block_hashes(&tokens, 16);
        assert_eq!(prompt_hashes(&tokens, &ours, 16), ours);
        let theirs = switchyard_router::block_hashes(&tokens, 32);
        assert_eq!(prompt_hashes(&tokens, &theirs, 16), ours);
        assert_eq!(prompt_hashes(&tokens, &[], 16), ours);
        let wrong = vec![1, 2, 3, 4];
        assert_eq!(prompt_hashes(&tokens, &wrong, 16), ours);
    }
}
