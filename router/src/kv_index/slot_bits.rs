//! A bit set of instance slots: how the block tree intersects wide holder sets in
//! O(slots / 64) word operations instead of one step per holder.

/// Instance slots as bits; slots past the end are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SlotBits {
    words: Vec<u64>,
}

impl SlotBits {
    pub fn from_sorted(slots: &[u32]) -> SlotBits {
        let mut bits = SlotBits::default();
        if let Some(&last) = slots.last() {
            bits.words = vec![0; last as usize / 64 + 1];
        }
        for &slot in slots {
            bits.insert(slot);
        }
        bits
    }

    pub fn insert(&mut self, slot: u32) {
        let word = slot as usize / 64;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        self.words[word] |= 1 << (slot % 64);
    }

    pub fn remove(&mut self, slot: u32) {
        if let Some(word) = self.words.get_mut(slot as usize / 64) {
            *word &= !(1 << (slot % 64));
        }
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|&word| word == 0)
    }

    /// Keeps the slots that are also in `other`, calling `gone` for each one dropped.
    pub fn retain_in(&mut self, other: &SlotBits, mut gone: impl FnMut(u32)) {
        for (i, word) in self.words.iter_mut().enumerate() {
            let keep = other.words.get(i).copied().unwrap_or(0);
            each_bit(i, *word & !keep, &mut gone);
            *word &= keep;
        }
    }

    /// Keeps the slots `keep` accepts, calling `gone` for each one dropped.
    pub fn retain(&mut self, keep: impl Fn(u32) -> bool, mut gone: impl FnMut(u32)) {
        for (i, word) in self.words.iter_mut().enumerate() {
            let mut dropped = 0;
            each_bit(i, *word, |slot| {
                if !keep(slot) {
                    dropped |= 1 << (slot % 64);
                    gone(slot);
                }
            });
            *word &= !dropped;
        }
    }

    pub fn for_each(&self, mut f: impl FnMut(u32)) {
        for (i, &word) in self.words.iter().enumerate() {
            each_bit(i, word, &mut f);
        }
    }
}

/// Calls `f` with the slot of each bit set in `word`, the `index`-th word.
fn each_bit(index: usize, mut word: u64, mut f: impl FnMut(u32)) {
    while word != 0 {
        f(index as u32 * 64 + word.trailing_zeros());
        word &= word - 1;
    }
}
