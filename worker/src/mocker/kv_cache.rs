//! The paged KV cache: a fixed pool of blocks, ref-counted prefix sharing by chained block
//! hash, LRU eviction of blocks no sequence uses, and the KV events that describe it.

use std::collections::HashMap;

use switchyard_proto::{KvCleared, KvRemoved, KvSnapshot, KvStored, kv_event};
use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::lru::LruList;

/// Index of a block in the pool.
pub(crate) type BlockId = u32;

/// The chained hash of one full block whose parent block hashed to `parent` (0 for the
/// first block); the same function as `switchyard_router::block_hashes`, one block at a
/// time, so blocks completed by generated tokens extend the frontend's chain.
pub(crate) fn block_hash(parent: u64, tokens: &[u32]) -> u64 {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    xxh3_64_with_seed(&bytes, parent)
}

#[derive(Debug, Clone, Copy, Default)]
struct BlockMeta {
    /// Set while the block is registered in `by_hash` (full, computed, first of its hash).
    hash: Option<u64>,
    /// The hash of the block before it in the sequence that registered it.
    parent: Option<u64>,
    /// Sequences holding the block.
    refs: u32,
}

/// Leading blocks of a prompt found in the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CachedPrefix {
    /// Blocks found, from the first.
    pub blocks: usize,
    /// Of those, how many no sequence holds now: taking them uses up free capacity.
    pub evictable: usize,
}

/// Every block is in exactly one state: held (refs > 0), cached and unused (in `lru`), or
/// free (no hash, in `free`). So `active + lru.len() + free.len()` is the pool size.
#[derive(Debug)]
pub(crate) struct KvCache {
    prefix_caching: bool,
    blocks: Vec<BlockMeta>,
    by_hash: HashMap<u64, BlockId>,
    free: Vec<BlockId>,
    lru: LruList,
    active: usize,
    hit_blocks: u64,
    lookup_blocks: u64,
    /// Events since the owner last drained them; ids are assigned by the owner.
    events: Vec<kv_event::Data>,
}

impl KvCache {
    pub(crate) fn new(num_blocks: u32, prefix_caching: bool) -> Self {
        let n = num_blocks as usize;
        Self {
            prefix_caching,
            blocks: vec![BlockMeta::default(); n],
            by_hash: HashMap::with_capacity(n),
            // Reversed so block 0 is handed out first, which keeps tests readable.
            free: (0..num_blocks).rev().collect(),
            lru: LruList::new(n),
            active: 0,
            hit_blocks: 0,
            lookup_blocks: 0,
            events: Vec::new(),
        }
    }

    pub(crate) fn num_blocks(&self) -> usize {
        self.blocks.len()
    }

    /// Blocks held by at least one sequence.
    pub(crate) fn active_blocks(&self) -> usize {
        self.active
    }

    /// Blocks an allocation may take: free ones and cached ones nobody holds.
    pub(crate) fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// Active KV tokens over total KV tokens, in blocks.
    pub(crate) fn usage(&self) -> f64 {
        self.active as f64 / self.blocks.len() as f64
    }

    /// Cumulative prefix-cache hits and lookups, in blocks.
    pub(crate) fn hit_stats(&self) -> (u64, u64) {
        (self.hit_blocks, self.lookup_blocks)
    }

    /// Counts one admission's lookup of `looked_up` blocks, of which `hits` were cached.
    pub(crate) fn record_lookup(&mut self, looked_up: usize, hits: usize) {
        self.lookup_blocks += looked_up as u64;
        self.hit_blocks += hits as u64;
    }

    /// How many leading `hashes` are cached. Reads only.
    pub(crate) fn cached_prefix(&self, hashes: &[u64]) -> CachedPrefix {
        let mut prefix = CachedPrefix::default();
        if !self.prefix_caching {
            return prefix;
        }
        for hash in hashes {
            let Some(&id) = self.by_hash.get(hash) else {
                break;
            };
            prefix.blocks += 1;
            if self.blocks[id as usize].refs == 0 {
                prefix.evictable += 1;
            }
        }
        prefix
    }

    /// Takes a reference on the cached blocks of the first `n` of `hashes` (all present, as
    /// `cached_prefix` said) and appends them to `table`.
    pub(crate) fn acquire_prefix(&mut self, hashes: &[u64], n: usize, table: &mut Vec<BlockId>) {
        for hash in &hashes[..n] {
            let Some(&id) = self.by_hash.get(hash) else {
                debug_assert!(false, "acquire_prefix past the cached prefix");
                return;
            };
            self.take_ref(id);
            table.push(id);
        }
    }

    /// Appends `n` fresh blocks to `table`, evicting the least recently used cached blocks
    /// when no free one is left. All or nothing: false (and no change) when fewer than `n`
    /// are available.
    pub(crate) fn allocate(&mut self, n: usize, table: &mut Vec<BlockId>) -> bool {
        if n > self.available() {
            return false;
        }
        let mut evicted = Vec::new();
        for _ in 0..n {
            let id = match self.free.pop() {
                Some(id) => id,
                None => {
                    let Some(id) = self.lru.pop_front() else {
                        debug_assert!(false, "available() counted a block that is not there");
                        break;
                    };
                    if let Some(hash) = self.blocks[id as usize].hash.take() {
                        self.by_hash.remove(&hash);
                        evicted.push(hash);
                    }
                    id
                }
            };
            self.take_ref(id);
            table.push(id);
        }
        if !evicted.is_empty() {
            self.events.push(kv_event::Data::Removed(KvRemoved { block_hashes: evicted }));
        }
        true
    }

    /// Drops the references `table` holds and empties it. Blocks are released tail first,
    /// so a sequence's last blocks are evicted before its prefix, which others may share.
    pub(crate) fn release(&mut self, table: &mut Vec<BlockId>) {
        for &id in table.iter().rev() {
            let meta = &mut self.blocks[id as usize];
            debug_assert!(meta.refs > 0);
            meta.refs = meta.refs.saturating_sub(1);
            if meta.refs == 0 {
                self.active -= 1;
                if meta.hash.is_some() {
                    self.lru.push_back(id);
                } else {
                    self.free.push(id);
                }
            }
        }
        table.clear();
    }

    /// Registers the now computed full blocks `table[from..to]`, whose chained hashes are
    /// `hashes[from..to]`, so later prompts can share them. A hash already cached under
    /// another block (two sequences computed the same prefix at once) stays with that
    /// block; the duplicate is freed unhashed when released.
    pub(crate) fn register(&mut self, table: &[BlockId], hashes: &[u64], from: usize, to: usize) {
        if !self.prefix_caching || from >= to {
            return;
        }
        let mut run: Option<(Option<u64>, Vec<u64>)> = None;
        for i in from..to {
            let hash = hashes[i];
            let id = table[i];
            let fresh =
                self.blocks[id as usize].hash.is_none() && !self.by_hash.contains_key(&hash);
            if fresh {
                let parent = i.checked_sub(1).map(|p| hashes[p]);
                let meta = &mut self.blocks[id as usize];
                meta.hash = Some(hash);
                meta.parent = parent;
                self.by_hash.insert(hash, id);
                run.get_or_insert_with(|| (parent, Vec::new())).1.push(hash);
            } else if let Some(stored) = run.take() {
                self.push_stored(stored);
            }
        }
        if let Some(stored) = run {
            self.push_stored(stored);
        }
    }

    /// Caches the blocks of `hashes` (a chain from the first block, handed over by another
    /// worker) that are not cached yet, as unused cached blocks, evicting older ones if
    /// needed; they are announced as stored. Stops early when no block can be had. Returns
    /// how many leading blocks are cached afterwards.
    pub(crate) fn import(&mut self, hashes: &[u64]) -> usize {
        if !self.prefix_caching {
            return 0;
        }
        let mut run: Option<(Option<u64>, Vec<u64>)> = None;
        let mut cached = 0;
        for (i, &hash) in hashes.iter().enumerate() {
            if !self.by_hash.contains_key(&hash) {
                let mut table = Vec::with_capacity(1);
                if !self.allocate(1, &mut table) {
                    break;
                }
                let parent = i.checked_sub(1).map(|p| hashes[p]);
                let id = table[0];
                let meta = &mut self.blocks[id as usize];
                meta.hash = Some(hash);
                meta.parent = parent;
                self.by_hash.insert(hash, id);
                run.get_or_insert_with(|| (parent, Vec::new())).1.push(hash);
                self.release(&mut table);
            } else if let Some(stored) = run.take() {
                self.push_stored(stored);
            }
            cached += 1;
        }
        if let Some(stored) = run {
            self.push_stored(stored);
        }
        cached
    }

    /// Forgets every cached block nobody holds, e.g. when the engine stops.
    pub(crate) fn clear(&mut self) {
        while let Some(id) = self.lru.pop_front() {
            if let Some(hash) = self.blocks[id as usize].hash.take() {
                self.by_hash.remove(&hash);
            }
            self.free.push(id);
        }
        self.events.push(kv_event::Data::Cleared(KvCleared {}));
    }

    /// Queues a [`KvSnapshot`] of every cached block after the events already queued, for a
    /// router that lost track. Chains run from blocks whose parent is not cached (or that
    /// have none) down single-child runs, so a parent always comes before its children.
    pub(crate) fn snapshot(&mut self) {
        let mut children: HashMap<Option<u64>, Vec<u64>> = HashMap::new();
        for (&hash, &id) in &self.by_hash {
            let parent = self.blocks[id as usize].parent.filter(|p| self.by_hash.contains_key(p));
            children.entry(parent).or_default().push(hash);
        }
        let mut chains = Vec::new();
        // (parent, first block) of the chains still to write.
        let mut pending: Vec<(Option<u64>, u64)> = children
            .remove(&None)
            .unwrap_or_default()
            .into_iter()
            .map(|hash| (None, hash))
            .collect();
        while let Some((parent_hash, first)) = pending.pop() {
            let mut block_hashes = vec![first];
            let mut last = first;
            while let Some(mut next) = children.remove(&Some(last)) {
                if next.len() == 1 {
                    last = next[0];
                    block_hashes.push(last);
                } else {
                    pending.extend(next.drain(..).map(|hash| (Some(last), hash)));
                    break;
                }
            }
            chains.push(KvStored { parent_hash, block_hashes });
        }
        self.events.push(kv_event::Data::Snapshot(KvSnapshot { chains }));
    }

    /// Takes the events produced since the last call, oldest first.
    pub(crate) fn drain_events(&mut self) -> std::vec::Drain<'_, kv_event::Data> {
        self.events.drain(..)
    }

    fn push_stored(&mut self, (parent_hash, block_hashes): (Option<u64>, Vec<u64>)) {
        self.events.push(kv_event::Data::Stored(KvStored { parent_hash, block_hashes }));
    }

    fn take_ref(&mut self, id: BlockId) {
        let meta = &mut self.blocks[id as usize];
        if meta.refs == 0 {
            self.active += 1;
            self.lru.remove(id);
        }
        meta.refs += 1;
    }

    /// The hashes a router may find here.
    #[cfg(test)]
    pub(crate) fn cached_hashes(&self) -> std::collections::HashSet<u64> {
        self.by_hash.keys().copied().collect()
    }

    /// Panics when the block states disagree; O(blocks), for tests.
    #[cfg(test)]
    pub(crate) fn check_invariants(&self) {
        assert_eq!(self.active + self.lru.len() + self.free.len(), self.blocks.len());
        assert!(self.by_hash.len() <= self.blocks.len());
        let held = self.blocks.iter().filter(|b| b.refs > 0).count();
        assert_eq!(held, self.active);
        for (&hash, &id) in &self.by_hash {
            assert_eq!(self.blocks[id as usize].hash, Some(hash));
        }
        for &id in &self.free {
            let meta = self.blocks[id as usize];
            assert!(meta.refs == 0 && meta.hash.is_none(), "free block {id} is {meta:?}");
        }
        for (id, meta) in self.blocks.iter().enumerate() {
            let in_lru = self.lru.contains(id as u32);
            assert_eq!(in_lru, meta.refs == 0 && meta.hash.is_some(), "block {id}: {meta:?}");
        }
    }
}

#[cfg(test)]
#[path = "kv_cache_tests.rs"]
mod tests;
