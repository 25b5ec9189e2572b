//! The continuous-batching scheduler, vLLM style: each step continues the running
//! sequences, preempts the newest when the cache is full, admits waiting ones within the
//! token budget (chunked prefill), and says how long the step takes. Pure and synchronous;
//! the actor gives it time.

use std::collections::{HashMap, VecDeque};

use switchyard_proto::{
    ErrorKind, FinishReason, GenerateChunk, KvHandle, LoadReport, WorkerError, kv_event,
};

use super::MockerConfig;
use super::kv_cache::KvCache;
use super::sequence::{SeqId, Sequence};

/// One sequence's share of a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Scheduled {
    pub id: SeqId,
    /// Tokens computed for it in this step: a prompt chunk, or 1 when decoding.
    pub tokens: usize,
    pub prefill: bool,
}

/// What a step does and costs, for the time model and for tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct StepSummary {
    /// Simulated milliseconds, before the speed-up ratio.
    pub ms: f64,
    pub prefill_tokens: usize,
    pub decodes: usize,
    /// KV usage the decode time was computed at.
    pub kv_usage: f64,
}

#[derive(Debug)]
struct Entry {
    seq: Sequence,
    running: bool,
}

#[derive(Debug)]
pub(crate) struct Scheduler {
    config: MockerConfig,
    watermark_blocks: usize,
    cache: KvCache,
    sequences: HashMap<SeqId, Entry>,
    /// First in line at the front; preempted sequences go back to the front. Ids of
    /// sequences cancelled while waiting are skipped when they reach the front.
    waiting: VecDeque<SeqId>,
    num_waiting: usize,
    /// In admission order; preemption takes from the back.
    running: Vec<SeqId>,
    /// The step in flight.
    step: Vec<Scheduled>,
    preemptions: u64,
    /// Blocks of finished prefill-only sequences, held for a decode worker's pull, by
    /// transfer id.
    held: HashMap<String, Held>,
    /// Transfer ids held since the owner last asked, so it can start their leases.
    new_holds: Vec<String>,
    /// Makes transfer ids unique across engines: decode workers quote them to any of them.
    transfer_prefix: String,
}

/// The KV of a prompt a prefill-only sequence computed, waiting for its pull.
#[derive(Debug)]
struct Held {
    blocks: Vec<super::kv_cache::BlockId>,
    /// Hashes of the prompt's full blocks.
    hashes: Vec<u64>,
    tokens: usize,
    /// Set once a pull took it: a second pull of the same handle is refused.
    exporting: bool,
}

/// What a pull of held blocks needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeldKv {
    pub hashes: Vec<u64>,
    pub tokens: usize,
}

impl Scheduler {
    /// `config` must be validated.
    pub(crate) fn new(config: MockerConfig) -> Self {
        let blocks = u32::try_from(config.num_gpu_blocks).unwrap_or(u32::MAX);
        Self {
            watermark_blocks: config.watermark_blocks(),
            cache: KvCache::new(blocks, config.enable_prefix_caching),
            sequences: HashMap::new(),
            waiting: VecDeque::new(),
            num_waiting: 0,
            running: Vec::new(),
            step: Vec::new(),
            preemptions: 0,
            held: HashMap::new(),
            new_holds: Vec::new(),
            transfer_prefix: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
            config,
        }
    }

    pub(crate) fn add(&mut self, seq: Sequence) {
        self.waiting.push_back(seq.id);
        self.num_waiting += 1;
        self.sequences.insert(seq.id, Entry { seq, running: false });
    }

    pub(crate) fn has_work(&self) -> bool {
        !self.running.is_empty() || self.num_waiting > 0
    }

    /// Preemptions since start.
    pub(crate) fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Plans the next step: allocates its blocks and returns its cost. An empty step
    /// (`prefill_tokens + decodes == 0`) means nothing could run.
    pub(crate) fn schedule(&mut self) -> StepSummary {
        let bs = self.config.block_tokens();
        let mut budget = self.config.max_num_batched_tokens;
        self.step.clear();
        let mut preempted = false;

        let mut i = 0;
        while i < self.running.len() && budget > 0 {
            let id = self.running[i];
            let Some(entry) = self.sequences.get(&id) else {
                i += 1;
                continue;
            };
            let prefill = entry.seq.is_prefilling();
            let tokens = (entry.seq.len() - entry.seq.computed()).min(budget);
            let need = entry.seq.blocks_needed(tokens, bs);
            let mut fits = true;
            while need > self.cache.available() {
                let Some(&victim) = self.running.last() else {
                    break;
                };
                self.preempt(victim);
                preempted = true;
                if victim == id {
                    fits = false;
                    break;
                }
            }
            if !fits {
                break;
            }
            if let Some(entry) = self.sequences.get_mut(&id) {
                let ok = self.cache.allocate(need, &mut entry.seq.blocks);
                debug_assert!(ok, "room was made above");
            }
            self.step.push(Scheduled { id, tokens, prefill });
            budget -= tokens;
            i += 1;
        }

        // As in vLLM: a step that had to preempt admits nobody, or the newcomer would take
        // the blocks the preempted sequence just gave up.
        if !preempted {
            self.admit_waiting(budget);
        }

        let prefill_tokens = self.step.iter().filter(|s| s.prefill).map(|s| s.tokens).sum();
        let decodes = self.step.iter().filter(|s| !s.prefill).count();
        let kv_usage = self.cache.usage();
        StepSummary {
            ms: self.config.profile.step_ms(prefill_tokens, decodes, kv_usage),
            prefill_tokens,
            decodes,
            kv_usage,
        }
    }

    fn admit_waiting(&mut self, mut budget: usize) {
        let bs = self.config.block_tokens();
        while budget > 0 && self.running.len() < self.config.max_num_seqs {
            let Some(&id) = self.waiting.front() else {
                break;
            };
            let Some(entry) = self.sequences.get(&id).filter(|e| !e.running) else {
                self.waiting.pop_front();
                continue;
            };
            let lookup = entry.seq.lookup_hashes(bs);
            let looked_up = lookup.len();
            let prefix = self.cache.cached_prefix(lookup);
            let computed = entry.seq.computed_at_admission(prefix.blocks, bs);
            let remaining = entry.seq.len() - computed;
            let tokens = if self.config.enable_chunked_prefill {
                remaining.min(budget)
            } else if remaining <= budget {
                remaining
            } else {
                break;
            };
            let fresh = (computed + tokens).div_ceil(bs) - prefix.blocks;
            if fresh + prefix.evictable + self.watermark_blocks > self.cache.available() {
                break;
            }
            self.waiting.pop_front();
            self.num_waiting -= 1;
            self.cache.record_lookup(looked_up, prefix.blocks);
            let Some(entry) = self.sequences.get_mut(&id) else {
                continue;
            };
            let seq = &mut entry.seq;
            let mut blocks = std::mem::take(&mut seq.blocks);
            self.cache.acquire_prefix(seq.hashes(), prefix.blocks, &mut blocks);
            let ok = self.cache.allocate(fresh, &mut blocks);
            debug_assert!(ok, "capacity was checked above");
            seq.blocks = blocks;
            seq.admit(prefix.blocks, bs);
            let prefill = seq.is_prefilling();
            entry.running = true;
            self.running.push(id);
            self.step.push(Scheduled { id, tokens, prefill });
            budget -= tokens;
        }
    }

    /// vLLM's recompute preemption: the sequence gives up its blocks and goes back to the
    /// front of the queue, keeping the tokens it generated.
    fn preempt(&mut self, id: SeqId) {
        self.running.retain(|&r| r != id);
        if let Some(entry) = self.sequences.get_mut(&id) {
            self.cache.release(&mut entry.seq.blocks);
            entry.seq.preempt();
            entry.running = false;
            self.waiting.push_front(id);
            self.num_waiting += 1;
            self.preemptions += 1;
            tracing::debug!(seq = id, "mocker preempted a sequence: KV cache full");
        }
    }

    /// Completes the planned step: marks tokens computed, registers full blocks, emits one
    /// token per sequence that reached the end of what it knew, and retires finished ones.
    pub(crate) fn finish_step(&mut self) {
        let bs = self.config.block_tokens();
        let step = std::mem::take(&mut self.step);
        let mut done = Vec::new();
        for s in &step {
            // Gone when cancelled during the step.
            let Some(entry) = self.sequences.get_mut(&s.id) else {
                continue;
            };
            let seq = &mut entry.seq;
            let (from, to) = seq.advance(s.tokens, bs);
            self.cache.register(&seq.blocks, seq.hashes(), from, to);
            if !seq.needs_token() {
                continue;
            }
            let sampled = seq.push_token(bs);
            let finish = if sampled.stops {
                FinishReason::Stop
            } else if seq.at_max_tokens() {
                FinishReason::Length
            } else {
                FinishReason::Unspecified
            };
            let last = finish != FinishReason::Unspecified;
            let kv_handle = (last && seq.hands_off(sampled.stops)).then(|| {
                let transfer_id = format!("{}-{}", self.transfer_prefix, s.id);
                let tokens = seq.prompt_len();
                let hashes = seq.hashes()[..tokens / bs].to_vec();
                let handle = KvHandle {
                    block_hashes: hashes.clone(),
                    bytes: self.config.handoff.full_bytes(tokens),
                    transfer_id: transfer_id.clone(),
                    lease_ms: u64::try_from(self.config.handoff.lease.as_millis())
                        .unwrap_or(u64::MAX),
                    tokens: u32::try_from(tokens).unwrap_or(u32::MAX),
                    ..KvHandle::default()
                };
                let blocks = std::mem::take(&mut seq.blocks);
                self.held
                    .insert(transfer_id.clone(), Held { blocks, hashes, tokens, exporting: false });
                self.new_holds.push(transfer_id);
                handle
            });
            let chunk = GenerateChunk {
                token_ids: vec![sampled.token],
                finish_reason: finish as i32,
                usage: last.then(|| seq.usage()),
                kv_handle,
                ..GenerateChunk::default()
            };
            // A closed stream means the client left: free its blocks now.
            if seq.output.send(chunk).is_err() || last {
                done.push(s.id);
            }
        }
        self.step = step;
        self.step.clear();
        if !done.is_empty() {
            // All of them were running; one pass over `running` for the lot.
            for id in done {
                self.take(id);
            }
            let sequences = &self.sequences;
            self.running.retain(|id| sequences.contains_key(id));
        }
    }

    /// Cancels `id` if it is still here: it leaves the batch, frees its blocks, and its
    /// stream (if still read) ends with a `Cancelled` chunk.
    pub(crate) fn cancel(&mut self, id: SeqId) {
        if let Some(seq) = self.remove(id) {
            let _ = seq.output.send(GenerateChunk {
                finish_reason: FinishReason::Cancelled as i32,
                usage: Some(seq.usage()),
                ..GenerateChunk::default()
            });
        }
    }

    /// Ends `id` with an error chunk.
    pub(crate) fn fail(&mut self, id: SeqId, kind: ErrorKind, message: &str) {
        if let Some(seq) = self.remove(id) {
            let _ = seq.output.send(error_chunk(&seq, kind, message));
        }
    }

    /// Ends every sequence with an error chunk and forgets the cache, as when the engine
    /// stops.
    pub(crate) fn fail_all(&mut self, kind: ErrorKind, message: &str) {
        let ids: Vec<SeqId> = self.sequences.keys().copied().collect();
        for id in ids {
            self.fail(id, kind, message);
        }
        let held: Vec<String> = self.held.keys().cloned().collect();
        for transfer_id in held {
            self.release_hold(&transfer_id);
        }
        self.waiting.clear();
        self.cache.clear();
    }

    /// The sequence to give up on when nothing at all could be scheduled: the first in
    /// line, else the oldest running.
    pub(crate) fn stuck_sequence(&self) -> Option<SeqId> {
        self.waiting
            .iter()
            .copied()
            .find(|id| self.sequences.get(id).is_some_and(|e| !e.running))
            .or_else(|| self.running.first().copied())
    }

    fn remove(&mut self, id: SeqId) -> Option<Sequence> {
        let entry = self.take(id)?;
        if entry.running {
            self.running.retain(|&r| r != id);
        } else {
            self.num_waiting -= 1;
        }
        Some(entry.seq)
    }

    /// Drops `id` and frees its blocks; the caller fixes `running` or `num_waiting`.
    fn take(&mut self, id: SeqId) -> Option<Entry> {
        let mut entry = self.sequences.remove(&id)?;
        self.cache.release(&mut entry.seq.blocks);
        // Retires the actor's watch on this sequence's cancellation.
        entry.seq.abort.cancel();
        Some(entry)
    }

    /// Transfer ids held since the last call.
    pub(crate) fn take_new_holds(&mut self) -> Vec<String> {
        std::mem::take(&mut self.new_holds)
    }

    /// Starts the pull of a held transfer: what it carries, or `None` when the id is unknown,
    /// its lease expired or another pull took it. The blocks stay held until
    /// [`Scheduler::release_hold`].
    pub(crate) fn export_hold(&mut self, transfer_id: &str) -> Option<HeldKv> {
        let held = self.held.get_mut(transfer_id).filter(|h| !h.exporting)?;
        held.exporting = true;
        Some(HeldKv { hashes: held.hashes.clone(), tokens: held.tokens })
    }

    /// Frees a held transfer's blocks (pulled, or its lease expired); they stay cached.
    pub(crate) fn release_hold(&mut self, transfer_id: &str) {
        if let Some(mut held) = self.held.remove(transfer_id) {
            self.cache.release(&mut held.blocks);
        }
    }

    /// Caches handed-over blocks (see [`KvCache::import`]); returns how many leading ones
    /// are cached now.
    pub(crate) fn import(&mut self, hashes: &[u64]) -> usize {
        self.cache.import(hashes)
    }

    pub(crate) fn load(&self) -> LoadReport {
        let (cache_hit_blocks, cache_lookup_blocks) = self.cache.hit_stats();
        LoadReport {
            active_requests: u32::try_from(self.running.len()).unwrap_or(u32::MAX),
            waiting_requests: u32::try_from(self.num_waiting).unwrap_or(u32::MAX),
            active_kv_blocks: self.cache.active_blocks() as u64,
            total_kv_blocks: self.cache.num_blocks() as u64,
            cache_hit_blocks,
            cache_lookup_blocks,
        }
    }

    /// Queues a snapshot of the cache after the events already queued.
    pub(crate) fn snapshot_kv(&mut self) {
        self.cache.snapshot();
    }

    pub(crate) fn drain_events(&mut self) -> std::vec::Drain<'_, kv_event::Data> {
        self.cache.drain_events()
    }

    #[cfg(test)]
    pub(crate) fn cache(&self) -> &KvCache {
        &self.cache
    }
}

fn error_chunk(seq: &Sequence, kind: ErrorKind, message: &str) -> GenerateChunk {
    GenerateChunk {
        finish_reason: FinishReason::Error as i32,
        usage: Some(seq.usage()),
        error: Some(WorkerError {
            kind: kind as i32,
            message: message.to_owned(),
            ..Default::default()
        }),
        ..GenerateChunk::default()
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
