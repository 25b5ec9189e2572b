//! The values [`super::KvIndex`] takes and returns: instance ids, KV events, overlap scores.

use std::fmt;

/// A compact handle on an instance registered with a [`super::KvIndex`], so the hot path
/// compares integers, never instance-id strings. The generation makes a handle kept past
/// [`super::KvIndex::remove_instance`] stale instead of pointing at whoever reuses the slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceId {
    pub(super) slot: u32,
    pub(super) generation: u32,
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}.{}", self.slot, self.generation)
    }
}

/// One KV event of a worker, borrowed from whatever carried it (no copy of the hashes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvEvent<'a> {
    /// Increases by one per event of a worker; a gap means events were lost.
    pub event_id: u64,
    pub change: KvChange<'a>,
}

/// What a KV event says happened to the worker's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvChange<'a> {
    /// The worker cached `blocks`, a chain whose first block's parent is `parent`.
    Stored { parent: Option<u64>, blocks: &'a [u64] },
    /// The worker evicted these blocks.
    Removed { blocks: &'a [u64] },
    /// The worker dropped every cached block.
    Cleared,
}

/// What [`super::KvIndex::apply`] made of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The next event in order: applied.
    InOrder,
    /// An id the index had already passed (a duplicate, or one covered by a resync): ignored.
    Stale,
    /// Applied, but the index's view of the worker is incomplete: the caller asks the worker
    /// for its full set of cached blocks and passes it to [`super::KvIndex::resync`].
    ResyncNeeded(ResyncReason),
}

impl Applied {
    pub fn needs_resync(self) -> bool {
        matches!(self, Applied::ResyncNeeded(_))
    }
}

/// Why the index needs a worker's full set of cached blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResyncReason {
    /// The first event seen from the worker was not its first: earlier ones were missed.
    Joined { first: u64 },
    /// Events between `expected` and `got` were lost.
    Gap { expected: u64, got: u64 },
    /// The worker claims more blocks than the index allows one instance: removals were lost.
    OverCapacity { limit: usize },
}

/// Per instance, how many leading blocks of a prompt it holds.
///
/// Dense over the index's slots, so a policy looking up every candidate pays O(1) each.
#[derive(Debug, Clone, Default)]
pub struct OverlapScores {
    /// Leading blocks held, by slot; 0 for instances that match nothing.
    blocks: Vec<u32>,
    /// The slots' generations when the scores were taken, to tell stale handles apart.
    generations: Vec<u32>,
}

impl OverlapScores {
    pub(super) fn new(blocks: Vec<u32>, generations: Vec<u32>) -> OverlapScores {
        OverlapScores { blocks, generations }
    }

    /// Leading prompt blocks `id` holds; 0 for an instance the index does not know.
    pub fn get(&self, id: InstanceId) -> u32 {
        let slot = id.slot as usize;
        match (self.blocks.get(slot), self.generations.get(slot)) {
            (Some(&blocks), Some(&generation)) if generation == id.generation => blocks,
            _ => 0,
        }
    }

    /// The largest overlap of any instance.
    pub fn max(&self) -> u32 {
        self.blocks.iter().copied().max().unwrap_or(0)
    }

    /// Instances with a non-zero overlap, and their overlap, by slot.
    pub fn iter(&self) -> impl Iterator<Item = (InstanceId, u32)> + '_ {
        (0u32..)
            .zip(self.blocks.iter().zip(&self.generations))
            .filter(|(_, (blocks, _))| **blocks > 0)
            .map(|(slot, (&blocks, &generation))| (InstanceId { slot, generation }, blocks))
    }
}
