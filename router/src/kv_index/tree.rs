//! The block tree behind [`super::KvIndex`]: chained block hashes grouped into runs of
//! consecutive blocks that share one set of holders, so a lookup intersects holder sets once
//! per run rather than once per block.
//!
//! A chained hash names its whole prefix, so a block is found by its hash alone (`locs`) and
//! its parent edge is implicit; runs only compress chains whose blocks have the same holders.
//! Invariants, checked by `check` in tests:
//! - every indexed hash lies in exactly one run, at the offset `locs` gives;
//! - a run's holders are exactly the instances holding each of its blocks, never empty;
//! - an instance's `held` set is the union of the runs it is a holder of.

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState;

use super::slot_bits::SlotBits;

/// Holders from which a run also keeps its holders as bits, for word-wise intersection.
/// Small in tests, so the property tests' few instances cross it both ways.
const WIDE_RUN: usize = if cfg!(test) { 4 } else { 32 };

/// The blocks one instance holds. Block hashes are XXH3 outputs, but prompts are user input,
/// so the map is still keyed (foldhash's per-process seed) rather than hashed by identity.
pub(super) type BlockSet = HashSet<u64, RandomState>;

/// Where a block lives. Two `u32`s keep a map entry at 16 bytes.
#[derive(Debug, Clone, Copy)]
struct Loc {
    run: u32,
    offset: u32,
}

/// Consecutive blocks of one chain (each the parent of the next) held by the same instances.
#[derive(Debug, Clone, Default)]
struct Run {
    /// The block before `hashes[0]` in its chain, if known: lets the run be merged back into
    /// its parent's run once their holders agree again, which undoes fragmentation.
    parent: Option<u64>,
    hashes: Vec<u64>,
    /// Sorted instance slots, each holding every block of the run.
    holders: Vec<u32>,
    /// `holders` as bits, kept for runs with many holders (see [`Run::add_holder`]).
    wide: Option<SlotBits>,
}

impl Run {
    fn new(parent: Option<u64>, slot: u32) -> Run {
        Run { parent, hashes: Vec::new(), holders: vec![slot], wide: None }
    }

    fn add_holder(&mut self, slot: u32) {
        if let Err(at) = self.holders.binary_search(&slot) {
            self.holders.insert(at, slot);
            match &mut self.wide {
                Some(bits) => bits.insert(slot),
                None if self.holders.len() >= WIDE_RUN => {
                    self.wide = Some(SlotBits::from_sorted(&self.holders));
                }
                None => {}
            }
        }
    }

    fn remove_holder(&mut self, slot: u32) -> bool {
        let Ok(at) = self.holders.binary_search(&slot) else {
            return false;
        };
        self.holders.remove(at);
        // Dropped well below the threshold only, so a run hovering at it does not rebuild.
        if self.holders.len() < WIDE_RUN / 2 {
            self.wide = None;
        } else if let Some(bits) = &mut self.wide {
            bits.remove(slot);
        }
        true
    }
}

#[derive(Debug, Clone, Default)]
pub(super) struct BlockTree {
    locs: HashMap<u64, Loc, RandomState>,
    runs: Vec<Run>,
    /// Ids of emptied runs, reused so `runs` does not grow with churn.
    free_runs: Vec<u32>,
}

impl BlockTree {
    /// Distinct blocks indexed.
    pub fn blocks(&self) -> usize {
        self.locs.len()
    }

    /// Runs in use: how fragmented the index is (one per block at worst).
    pub fn runs(&self) -> usize {
        self.runs.len() - self.free_runs.len()
    }

    /// Records that `slot` holds the chain `hashes`, whose first block's parent is `parent`.
    /// `held` is that instance's block set. At most `room` blocks new to it are added, the
    /// chain cut after the last that fits; returns false when some were left out.
    pub fn store(
        &mut self,
        slot: u32,
        held: &mut BlockSet,
        parent: Option<u64>,
        hashes: &[u64],
        room: usize,
    ) -> bool {
        let mut left = room;
        let cut = hashes.iter().position(|h| {
            let new = !held.contains(h);
            let over = new && left == 0;
            left -= usize::from(new && !over);
            over
        });
        let hashes = &hashes[..cut.unwrap_or(hashes.len())];
        // Blocks others hold already: add `slot` to (pieces of) their runs.
        let known = self.locate(hashes.iter().filter(|h| !held.contains(*h)));
        self.for_each_range_descending(&known, |tree, piece| {
            let run = &mut tree.runs[piece as usize];
            run.add_holder(slot);
            held.extend(run.hashes.iter().copied());
            tree.merge_into_parent(piece);
        });
        // Blocks nobody holds: new runs, or the tail of `slot`'s own run they continue.
        let mut prev = parent;
        let mut open: Option<u32> = None;
        for &hash in hashes {
            if self.locs.contains_key(&hash) {
                open = None;
                prev = Some(hash);
                continue;
            }
            let run = match open {
                Some(run) => run,
                None => match prev.and_then(|p| self.ends_run_held_only_by(p, slot)) {
                    Some(run) => run,
                    None => self.alloc_run(Run::new(prev, slot)),
                },
            };
            let hashes = &mut self.runs[run as usize].hashes;
            let offset = hashes.len() as u32;
            hashes.push(hash);
            self.locs.insert(hash, Loc { run, offset });
            held.insert(hash);
            open = Some(run);
            prev = Some(hash);
        }
        cut.is_none()
    }

    /// Records that `slot` no longer holds `hashes` (any order; unknown ones are skipped).
    pub fn remove(&mut self, slot: u32, held: &mut BlockSet, hashes: &[u64]) {
        let known = self.locate(hashes.iter().filter(|h| held.contains(*h)));
        self.for_each_range_descending(&known, |tree, piece| {
            let run = &mut tree.runs[piece as usize];
            run.remove_holder(slot);
            for hash in &run.hashes {
                held.remove(hash);
            }
            if run.holders.is_empty() {
                tree.free_run(piece);
            } else {
                tree.merge_into_parent(piece);
            }
        });
    }

    /// Drops every block `slot` holds, emptying `held`: O(blocks held), no scan of the index.
    pub fn remove_all(&mut self, slot: u32, held: &mut BlockSet) {
        for hash in held.drain() {
            let Some(&Loc { run: id, .. }) = self.locs.get(&hash) else {
                continue;
            };
            let run = &mut self.runs[id as usize];
            // The first of a run's blocks drained drops `slot` from the whole run; its
            // other blocks then find `slot` gone (or the run freed or merged) and are skipped.
            if !run.remove_holder(slot) {
                continue;
            }
            if run.holders.is_empty() {
                self.free_run(id);
            } else {
                self.merge_into_parent(id);
            }
        }
    }

    /// Sets `depths[slot]`, for every instance holding `hashes[0]`, to the number of leading
    /// blocks of `hashes` it holds. Cost: one comparison per block inside a run; per run
    /// boundary, one map lookup and an intersection of O(slots / 64) words, or O(survivors)
    /// into a run of few holders; plus one write per instance reported.
    pub fn find(&self, hashes: &[u64], depths: &mut [u32]) {
        let Some(loc) = hashes.first().and_then(|h| self.locs.get(h)) else {
            return;
        };
        let mut run = &self.runs[loc.run as usize];
        let mut offset = loc.offset as usize;
        let mut active = match &run.wide {
            Some(bits) => bits.clone(),
            None => SlotBits::from_sorted(&run.holders),
        };
        let mut depth = 1;
        while let Some(&next) = hashes.get(depth) {
            if run.hashes.get(offset + 1) == Some(&next) {
                offset += 1;
                depth += 1;
                continue;
            }
            let Some(loc) = self.locs.get(&next) else {
                break;
            };
            run = &self.runs[loc.run as usize];
            offset = loc.offset as usize;
            let blocks = depth as u32;
            let mut gone = |slot: u32| {
                if let Some(d) = depths.get_mut(slot as usize) {
                    *d = blocks;
                }
            };
            match &run.wide {
                Some(bits) => active.retain_in(bits, gone),
                None => active.retain(|slot| run.holders.binary_search(&slot).is_ok(), &mut gone),
            }
            if active.is_empty() {
                return;
            }
            depth += 1;
        }
        active.for_each(|slot| {
            if let Some(d) = depths.get_mut(slot as usize) {
                *d = depth as u32;
            }
        });
    }

    /// `(run, offset)` of the given hashes that are indexed, sorted and without repeats.
    fn locate<'h>(&self, hashes: impl Iterator<Item = &'h u64>) -> Vec<(u32, u32)> {
        let mut known: Vec<(u32, u32)> =
            hashes.filter_map(|h| self.locs.get(h)).map(|loc| (loc.run, loc.offset)).collect();
        known.sort_unstable();
        known.dedup();
        known
    }

    /// Splits off each maximal range of consecutive offsets in `known` (sorted) as a run of
    /// its own and hands it to `change`. Ranges are visited from the highest offset down, so
    /// a split, which keeps the lower blocks in place, never moves a range not yet visited.
    fn for_each_range_descending(
        &mut self,
        known: &[(u32, u32)],
        mut change: impl FnMut(&mut Self, u32),
    ) {
        let mut end = known.len();
        while end > 0 {
            let (run, last) = known[end - 1];
            let mut start = end - 1;
            while start > 0 && known[start - 1].0 == run && known[start - 1].1 + 1 == known[start].1
            {
                start -= 1;
            }
            let piece = self.isolate(run, known[start].1 as usize, last as usize + 1);
            change(self, piece);
            end = start;
        }
    }

    /// Splits run `id` so that its blocks `[from, to)` form a run of their own; returns it.
    fn isolate(&mut self, id: u32, from: usize, to: usize) -> u32 {
        if to < self.runs[id as usize].hashes.len() {
            self.split_off(id, to);
        }
        if from > 0 { self.split_off(id, from) } else { id }
    }

    /// Moves the blocks of run `id` from offset `at` (> 0) on into a new run with the same
    /// holders; returns the new run.
    fn split_off(&mut self, id: u32, at: usize) -> u32 {
        let run = &mut self.runs[id as usize];
        let hashes = run.hashes.split_off(at);
        let tail = Run {
            parent: run.hashes.last().copied(),
            hashes,
            holders: run.holders.clone(),
            wide: run.wide.clone(),
        };
        let new = self.alloc_run(tail);
        self.relocate(new, 0);
        new
    }

    /// Appends run `id` to the run its parent block ends, when both have the same holders.
    fn merge_into_parent(&mut self, id: u32) {
        let Some(parent) = self.runs[id as usize].parent else {
            return;
        };
        let Some(&Loc { run: into, offset }) = self.locs.get(&parent) else {
            return;
        };
        let (child, target) = (&self.runs[id as usize], &self.runs[into as usize]);
        if into == id
            || offset as usize + 1 != target.hashes.len()
            || child.holders != target.holders
        {
            return;
        }
        let child = std::mem::take(&mut self.runs[id as usize]);
        let base = self.runs[into as usize].hashes.len();
        self.runs[into as usize].hashes.extend(child.hashes);
        self.relocate(into, base);
        self.free_runs.push(id);
    }

    /// The run that `hash` ends when `slot` alone holds it: new blocks continuing that chain
    /// are appended to it instead of starting a run.
    fn ends_run_held_only_by(&self, hash: u64, slot: u32) -> Option<u32> {
        let loc = self.locs.get(&hash)?;
        let run = &self.runs[loc.run as usize];
        (loc.offset as usize + 1 == run.hashes.len() && run.holders == [slot]).then_some(loc.run)
    }

    /// Points `locs` at run `id` for its blocks from offset `from` on.
    fn relocate(&mut self, id: u32, from: usize) {
        for (offset, hash) in self.runs[id as usize].hashes.iter().enumerate().skip(from) {
            if let Some(loc) = self.locs.get_mut(hash) {
                *loc = Loc { run: id, offset: offset as u32 };
            }
        }
    }

    fn alloc_run(&mut self, run: Run) -> u32 {
        if let Some(id) = self.free_runs.pop() {
            self.runs[id as usize] = run;
            id
        } else {
            self.runs.push(run);
            (self.runs.len() - 1) as u32
        }
    }

    /// Forgets run `id` and its blocks; its memory is released, its id reused.
    fn free_run(&mut self, id: u32) {
        let run = std::mem::take(&mut self.runs[id as usize]);
        for hash in &run.hashes {
            self.locs.remove(hash);
        }
        self.free_runs.push(id);
    }

    /// Panics when an invariant of the module doc does not hold; `held` is each slot's set.
    #[cfg(test)]
    pub fn check(&self, held: &[(u32, &BlockSet)]) {
        let free: HashSet<u32> = self.free_runs.iter().copied().collect();
        let mut seen = 0;
        for (id, run) in self.runs.iter().enumerate() {
            if free.contains(&(id as u32)) {
                assert!(run.hashes.is_empty(), "freed run {id} has blocks");
                continue;
            }
            assert!(!run.hashes.is_empty(), "run {id} is empty");
            assert!(!run.holders.is_empty(), "run {id} has no holders");
            assert!(run.holders.windows(2).all(|w| w[0] < w[1]), "run {id}: holders unsorted");
            if let Some(bits) = &run.wide {
                let mut from_bits = Vec::new();
                bits.for_each(|slot| from_bits.push(slot));
                assert_eq!(from_bits, run.holders, "run {id}: bits disagree with holders");
            }
            assert!(run.wide.is_some() || run.holders.len() < WIDE_RUN, "run {id}: not wide");
            for (offset, hash) in run.hashes.iter().enumerate() {
                let loc = self.locs[hash];
                assert_eq!((loc.run, loc.offset as usize), (id as u32, offset), "loc of {hash}");
                for (slot, blocks) in held {
                    let holds = run.holders.contains(slot);
                    assert_eq!(blocks.contains(hash), holds, "slot {slot}, block {hash}");
                }
                seen += 1;
            }
        }
        assert_eq!(seen, self.locs.len(), "blocks outside any run");
        for (slot, blocks) in held {
            assert!(blocks.iter().all(|h| self.locs.contains_key(h)), "slot {slot}");
        }
    }
}
