//! The KV index: which instances hold which KV blocks, fed by the workers' KV events (or, for
//! workers that send none, by the router's own decisions), asked how much of a prompt's
//! prefix each instance holds.
//!
//! Memory, for sizing (hash tables at 7/8 load and power-of-two growth, so each range is
//! from just-grown to just-before-growing): each distinct block 28–55 bytes (a 16-byte map
//! entry, 8 in its run); each (block, instance) pair 10–21 bytes in the instance's block
//! set; each run ~90 bytes, 4 per holder, and slots / 8 bytes once it has many holders.
//! A million blocks held by one instance each: 40–80 MB. The benchmark's fleet (1,000
//! instances, 1M blocks, 1.3M pairs) packs into ~31k runs. [`KvIndexConfig`] bounds what
//! one worker can make the index hold.

mod slot_bits;
mod tree;
mod types;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use foldhash::fast::RandomState;

use crate::Error;
use tree::{BlockSet, BlockTree};
pub use types::{Applied, InstanceId, KvChange, KvEvent, OverlapScores, ResyncReason};

/// Limits of a [`KvIndex`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvIndexConfig {
    /// Most blocks one instance may hold in the index. A worker never caches more than its KV
    /// capacity, so this only bites when its removals were lost; the index then keeps what
    /// fits and asks for a resync.
    pub max_blocks_per_instance: usize,
}

impl Default for KvIndexConfig {
    fn default() -> Self {
        // 4M blocks of 16 tokens: 64M tokens of KV, beyond any single worker today.
        KvIndexConfig { max_blocks_per_instance: 1 << 22 }
    }
}

/// A prefix tree over chained block hashes: for each cached block, the instances holding it.
#[derive(Debug, Clone, Default)]
pub struct KvIndex {
    tree: BlockTree,
    slots: Vec<Slot>,
    /// Each slot's generation, bumped when the slot is freed so handles to the old instance
    /// go stale. Apart from `slots` so overlap scores copy it in one go.
    generations: Vec<u32>,
    /// Slots of removed instances, reused so dense per-slot arrays stay as small as the fleet.
    free_slots: Vec<u32>,
    by_name: HashMap<Box<str>, InstanceId>,
    /// Recorded decisions, soonest expiry first.
    decisions: BinaryHeap<Reverse<Decision>>,
    config: KvIndexConfig,
}

#[derive(Debug, Clone, Default)]
struct Slot {
    /// The instance's id; `None` while the slot is free.
    name: Option<Box<str>>,
    /// Every block the instance holds, so removing it costs O(its blocks), not O(index).
    held: BlockSet,
    /// The event id expected next; `None` until the instance's first event.
    next_event_id: Option<u64>,
    /// For an instance tracked by recorded decisions: when each of its blocks expires.
    recorded: Option<HashMap<u64, Duration, RandomState>>,
}

/// A routing decision recorded for an instance that sends no KV events.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Decision {
    expires: Duration,
    id: InstanceId,
    hashes: Box<[u64]>,
}

impl KvIndex {
    pub fn new(config: KvIndexConfig) -> KvIndex {
        KvIndex { config, ..KvIndex::default() }
    }

    /// The handle of instance `name`, registering it if it is new.
    pub fn add_instance(&mut self, name: &str) -> InstanceId {
        if let Some(&id) = self.by_name.get(name) {
            return id;
        }
        let name: Box<str> = name.into();
        let slot = match self.free_slots.pop() {
            Some(slot) => slot,
            None => {
                self.slots.push(Slot::default());
                self.generations.push(0);
                (self.slots.len() - 1) as u32
            }
        };
        self.slots[slot as usize].name = Some(name.clone());
        let id = InstanceId { slot, generation: self.generations[slot as usize] };
        self.by_name.insert(name, id);
        id
    }

    /// The handle of instance `name`, if it is registered.
    pub fn instance(&self, name: &str) -> Option<InstanceId> {
        self.by_name.get(name).copied()
    }

    /// The event id the index expects next from instance `id` (`None` before its first event
    /// or for an unknown handle).
    pub fn next_event_id(&self, id: InstanceId) -> Option<u64> {
        self.slot(id).ok()?.next_event_id
    }

    /// The instance id string behind a handle.
    pub fn instance_name(&self, id: InstanceId) -> Option<&str> {
        self.slot(id).ok()?.name.as_deref()
    }

    /// Forgets an instance and every block it holds, in O(its blocks). Returns false for a
    /// stale or unknown handle.
    pub fn remove_instance(&mut self, id: InstanceId) -> bool {
        let Ok(slot) = self.slot_mut_index(id) else {
            return false;
        };
        let entry = &mut self.slots[slot];
        self.tree.remove_all(id.slot, &mut entry.held);
        if let Some(name) = entry.name.take() {
            self.by_name.remove(&name);
        }
        // A fresh slot releases the block set's memory; decisions still queued for the old
        // generation are skipped when they expire.
        *entry = Slot::default();
        self.generations[slot] = self.generations[slot].wrapping_add(1);
        self.free_slots.push(id.slot);
        true
    }

    /// Applies one KV event of instance `id`.
    ///
    /// Event ids must follow each other: a first event other than 0, or a gap, is applied but
    /// answered with [`Applied::ResyncNeeded`]; an id already passed is ignored as stale,
    /// except 0, which means the worker restarted (with an empty cache, so the index drops
    /// what it held). An instance that sends events stops being tracked by decisions.
    pub fn apply(&mut self, id: InstanceId, event: &KvEvent<'_>) -> Result<Applied, Error> {
        let slot = self.slot_mut_index(id)?;
        let entry = &mut self.slots[slot];
        let got = event.event_id;
        let restarted = entry.next_event_id.is_some_and(|next| got == 0 && next > 0);
        let mut applied = match entry.next_event_id {
            None if got == 0 => Applied::InOrder,
            None => Applied::ResyncNeeded(ResyncReason::Joined { first: got }),
            Some(expected) if got == expected => Applied::InOrder,
            Some(expected) if got > expected => {
                Applied::ResyncNeeded(ResyncReason::Gap { expected, got })
            }
            Some(_) if restarted => Applied::InOrder,
            Some(_) => return Ok(Applied::Stale),
        };
        if restarted || entry.recorded.take().is_some() {
            self.tree.remove_all(id.slot, &mut entry.held);
        }
        entry.next_event_id = Some(got.saturating_add(1));
        if !self.change(slot, id.slot, event.change) && !applied.needs_resync() {
            applied = Applied::ResyncNeeded(ResyncReason::OverCapacity {
                limit: self.config.max_blocks_per_instance,
            });
        }
        Ok(applied)
    }

    /// Replaces what the index holds for instance `id` with a worker's full set of cached
    /// blocks, given as stored chains (`parent`, `blocks`) as of just before event
    /// `next_event_id`. Returns false when the set did not fit in the instance's limit.
    pub fn resync<'a>(
        &mut self,
        id: InstanceId,
        next_event_id: u64,
        stored: impl IntoIterator<Item = (Option<u64>, &'a [u64])>,
    ) -> Result<bool, Error> {
        let slot = self.slot_mut_index(id)?;
        let entry = &mut self.slots[slot];
        entry.recorded = None;
        entry.next_event_id = Some(next_event_id);
        self.tree.remove_all(id.slot, &mut entry.held);
        let mut fits = true;
        for (parent, blocks) in stored {
            fits &= self.change(slot, id.slot, KvChange::Stored { parent, blocks });
        }
        Ok(fits)
    }

    /// Per instance, how many leading blocks of `hashes` (a prompt's chained block hashes)
    /// it holds. O(prompt blocks), plus one intersection of holder sets per run boundary.
    pub fn find_matches(&self, hashes: &[u64]) -> OverlapScores {
        let mut depths = vec![0; self.slots.len()];
        self.tree.find(hashes, &mut depths);
        OverlapScores::new(depths, self.generations.clone())
    }

    /// Approximate mode, for an instance that sends no KV events: assume it caches `hashes`
    /// (the prompt just routed to it) until `now + ttl`. Expired decisions are dropped first.
    /// `now` is any monotonic time the caller keeps; the index reads no clock. Returns false,
    /// recording nothing, for an instance that sends events: they are the truth.
    pub fn record_decision(
        &mut self,
        id: InstanceId,
        hashes: &[u64],
        now: Duration,
        ttl: Duration,
    ) -> Result<bool, Error> {
        self.expire(now);
        let slot = self.slot_mut_index(id)?;
        let entry = &mut self.slots[slot];
        if entry.next_event_id.is_some() {
            return Ok(false);
        }
        let expires = now.saturating_add(ttl);
        let recorded = entry.recorded.get_or_insert_with(HashMap::default);
        for &hash in hashes {
            let at = recorded.entry(hash).or_insert(expires);
            *at = (*at).max(expires);
        }
        let parent = None;
        self.change(slot, id.slot, KvChange::Stored { parent, blocks: hashes });
        self.decisions.push(Reverse(Decision { expires, id, hashes: hashes.into() }));
        Ok(true)
    }

    /// Drops the blocks of recorded decisions that expired by `now`, unless a later decision
    /// recorded them again.
    pub fn expire(&mut self, now: Duration) {
        while self.decisions.peek().is_some_and(|Reverse(decision)| decision.expires <= now) {
            let Some(Reverse(decision)) = self.decisions.pop() else {
                break;
            };
            let id = decision.id;
            if self.generations.get(id.slot as usize) != Some(&id.generation) {
                continue;
            }
            let Some(entry) = self.slots.get_mut(id.slot as usize) else {
                continue;
            };
            let Some(recorded) = entry.recorded.as_mut() else {
                continue;
            };
            let expired: Vec<u64> = decision
                .hashes
                .iter()
                .copied()
                .filter(|hash| recorded.get(hash).is_some_and(|&at| at <= now))
                .collect();
            for hash in &expired {
                recorded.remove(hash);
            }
            self.tree.remove(id.slot, &mut entry.held, &expired);
        }
    }

    /// Distinct blocks indexed.
    pub fn blocks(&self) -> usize {
        self.tree.blocks()
    }

    /// Runs of blocks sharing their holders: at most [`KvIndex::blocks`], fewer the better.
    pub fn runs(&self) -> usize {
        self.tree.runs()
    }

    /// Instances registered.
    pub fn instances(&self) -> usize {
        self.by_name.len()
    }

    /// Blocks instance `id` holds (0 for a stale handle).
    pub fn instance_blocks(&self, id: InstanceId) -> usize {
        self.slot(id).map_or(0, |entry| entry.held.len())
    }

    /// Applies one change to slot `slot`; false when the instance's limit cut it short.
    fn change(&mut self, index: usize, slot: u32, change: KvChange<'_>) -> bool {
        let held = &mut self.slots[index].held;
        match change {
            KvChange::Stored { parent, blocks } => {
                let room = self.config.max_blocks_per_instance.saturating_sub(held.len());
                self.tree.store(slot, held, parent, blocks, room)
            }
            KvChange::Removed { blocks } => {
                self.tree.remove(slot, held, blocks);
                true
            }
            KvChange::Cleared => {
                self.tree.remove_all(slot, held);
                true
            }
        }
    }

    fn slot(&self, id: InstanceId) -> Result<&Slot, Error> {
        self.slots
            .get(id.slot as usize)
            .filter(|entry| {
                entry.name.is_some()
                    && self.generations.get(id.slot as usize) == Some(&id.generation)
            })
            .ok_or(Error::UnknownInstance { id })
    }

    fn slot_mut_index(&self, id: InstanceId) -> Result<usize, Error> {
        self.slot(id).map(|_| id.slot as usize)
    }

    /// Checks the tree's invariants against every slot's block set.
    #[cfg(test)]
    fn check(&self) {
        let held: Vec<(u32, &BlockSet)> =
            (0..).zip(&self.slots).map(|(slot, entry)| (slot, &entry.held)).collect();
        self.tree.check(&held);
    }
}

#[cfg(test)]
mod tests;
