//! An intrusive LRU list over block ids: O(1) push, remove and pop-oldest, no allocation
//! after construction.

const NONE: u32 = u32::MAX;

/// Cached blocks no sequence uses, oldest first. Links live in arrays indexed by block id,
/// so removing a block that a new request hits costs no search.
#[derive(Debug)]
pub(crate) struct LruList {
    prev: Vec<u32>,
    next: Vec<u32>,
    linked: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl LruList {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            prev: vec![NONE; capacity],
            next: vec![NONE; capacity],
            linked: vec![false; capacity],
            head: NONE,
            tail: NONE,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn contains(&self, id: u32) -> bool {
        self.linked[id as usize]
    }

    /// Appends `id` as the most recently used.
    pub(crate) fn push_back(&mut self, id: u32) {
        debug_assert!(!self.contains(id));
        let i = id as usize;
        self.prev[i] = self.tail;
        self.next[i] = NONE;
        if self.tail == NONE {
            self.head = id;
        } else {
            self.next[self.tail as usize] = id;
        }
        self.tail = id;
        self.linked[i] = true;
        self.len += 1;
    }

    /// Unlinks `id`; returns whether it was linked.
    pub(crate) fn remove(&mut self, id: u32) -> bool {
        let i = id as usize;
        if !self.linked[i] {
            return false;
        }
        let (p, n) = (self.prev[i], self.next[i]);
        if p == NONE {
            self.head = n;
        } else {
            self.next[p as usize] = n;
        }
        if n == NONE {
            self.tail = p;
        } else {
            self.prev[n as usize] = p;
        }
        self.linked[i] = false;
        self.len -= 1;
        true
    }

    /// Unlinks and returns the least recently used id.
    pub(crate) fn pop_front(&mut self) -> Option<u32> {
        let id = self.head;
        if id == NONE {
            return None;
        }
        self.remove(id);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pops_in_insertion_order_and_skips_removed() {
        let mut lru = LruList::new(5);
        for id in [3, 1, 4, 0] {
            lru.push_back(id);
        }
        assert!(lru.remove(1));
        assert!(!lru.remove(1));
        assert_eq!(lru.len(), 3);
        lru.push_back(1);
        let order: Vec<u32> = std::iter::from_fn(|| lru.pop_front()).collect();
        assert_eq!(order, vec![3, 4, 0, 1]);
        assert_eq!(lru.len(), 0);
    }

    #[test]
    fn removing_head_and_tail_keeps_links_right() {
        let mut lru = LruList::new(3);
        for id in 0..3 {
            lru.push_back(id);
        }
        lru.remove(0);
        lru.remove(2);
        assert_eq!(lru.pop_front(), Some(1));
        assert_eq!(lru.pop_front(), None);
        lru.push_back(2);
        assert_eq!(lru.pop_front(), Some(2));
    }
}
