//! Cancellations that arrived before their request: a request and its cancel come in on two
//! subscriptions, so the cancel of a request given up at once may be read first.

use std::collections::{HashSet, VecDeque};

/// Cancellations remembered for requests not seen yet; past it the oldest are forgotten (a
/// cancel that outlived its request by this many others belonged to one that already ended).
pub(super) const EARLY_CANCELS: usize = 4096;

/// Reply subjects of cancels that matched no running request, oldest first, at most
/// [`EARLY_CANCELS`] of them.
#[derive(Default)]
pub(super) struct EarlyCancels {
    order: VecDeque<String>,
    keys: HashSet<String>,
}

impl EarlyCancels {
    pub(super) fn insert(&mut self, key: String) {
        if self.keys.insert(key.clone()) {
            self.order.push_back(key);
        }
        while self.order.len() > EARLY_CANCELS {
            if let Some(oldest) = self.order.pop_front() {
                self.keys.remove(&oldest);
            }
        }
    }

    /// Whether `key` was cancelled early; forgets it either way.
    pub(super) fn take(&mut self, key: &str) -> bool {
        if !self.keys.remove(key) {
            return false;
        }
        self.order.retain(|k| k != key);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_cancels_are_bounded_and_taken_once() {
        let mut early = EarlyCancels::default();
        for i in 0..EARLY_CANCELS + 10 {
            early.insert(format!("k{i}"));
        }
        assert_eq!(early.order.len(), EARLY_CANCELS);
        assert!(!early.take("k0"), "the oldest were forgotten");
        assert!(early.take(&format!("k{}", EARLY_CANCELS + 9)));
        assert!(!early.take(&format!("k{}", EARLY_CANCELS + 9)), "taken once");
    }
}
