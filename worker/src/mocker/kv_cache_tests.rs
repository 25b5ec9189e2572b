//! Unit tests of the paged KV cache: sharing, eviction order, capacity and KV events.

use std::collections::HashSet;

use proptest::prelude::*;
use switchyard_proto::kv_event;

use super::*;

const BS: usize = 4;

fn hashes(tokens: &[u32]) -> Vec<u64> {
    switchyard_router::block_hashes(tokens, BS)
}

/// Admits a sequence the way the scheduler does: shared prefix, then fresh blocks, then the
/// full blocks are registered as computed.
fn admit(cache: &mut KvCache, tokens: &[u32]) -> Option<Vec<BlockId>> {
    let hashes = hashes(tokens);
    let prefix = cache.cached_prefix(&hashes);
    let needed = tokens.len().div_ceil(BS);
    if needed - prefix.blocks + prefix.evictable > cache.available() {
        return None;
    }
    let mut table = Vec::new();
    cache.acquire_prefix(&hashes, prefix.blocks, &mut table);
    assert!(cache.allocate(needed - prefix.blocks, &mut table));
    cache.register(&table, &hashes, prefix.blocks, hashes.len());
    Some(table)
}

/// What a router learns from the events.
fn replay(cache: &mut KvCache, index: &mut HashSet<u64>) {
    for event in cache.drain_events() {
        match event {
            kv_event::Data::Stored(s) => {
                for h in s.block_hashes {
                    assert!(index.insert(h), "stored twice: {h}");
                }
            }
            kv_event::Data::Removed(r) => {
                for h in r.block_hashes {
                    assert!(index.remove(&h), "removed but never stored: {h}");
                }
            }
            kv_event::Data::Cleared(_) => index.clear(),
            kv_event::Data::Snapshot(snapshot) => {
                index.clear();
                for chain in snapshot.chains {
                    for h in chain.block_hashes {
                        assert!(index.insert(h), "in the snapshot twice: {h}");
                    }
                }
            }
        }
    }
}

#[test]
fn block_hash_extends_the_routers_chain() {
    let tokens: Vec<u32> = (0..13).collect();
    let want = hashes(&tokens);
    let mut parent = 0;
    let got: Vec<u64> = tokens
        .chunks_exact(BS)
        .map(|block| {
            parent = block_hash(parent, block);
            parent
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn equal_prefixes_share_blocks() {
    let mut cache = KvCache::new(8, true);
    let a = admit(&mut cache, &[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap_or_default();
    assert_eq!(cache.active_blocks(), 3);
    let prefix = cache.cached_prefix(&hashes(&[1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 0, 0]));
    assert_eq!(prefix, CachedPrefix { blocks: 2, evictable: 0 });
    let b = admit(&mut cache, &[1, 2, 3, 4, 5, 6, 7, 8, 0]).unwrap_or_default();
    assert_eq!(a[..2], b[..2]);
    assert_ne!(a[2], b[2]);
    assert_eq!(cache.active_blocks(), 4);
    cache.check_invariants();
}

#[test]
fn released_blocks_stay_cached_and_are_evicted_tail_first() {
    let mut cache = KvCache::new(3, true);
    let mut a = admit(&mut cache, &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]).unwrap_or_default();
    cache.release(&mut a);
    assert_eq!(cache.active_blocks(), 0);
    assert_eq!(cache.available(), 3);
    let h = hashes(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]);
    assert_eq!(cache.cached_prefix(&h), CachedPrefix { blocks: 3, evictable: 3 });
    cache.drain_events().for_each(drop);

    // One fresh block evicts the last block of the released sequence, not its prefix.
    let mut table = Vec::new();
    assert!(cache.allocate(1, &mut table));
    let events: Vec<_> = cache.drain_events().collect();
    assert_eq!(events, vec![kv_event::Data::Removed(KvRemoved { block_hashes: vec![h[2]] })]);
    assert_eq!(cache.cached_prefix(&h).blocks, 2);
    cache.check_invariants();
}

#[test]
fn allocation_is_all_or_nothing() {
    let mut cache = KvCache::new(2, true);
    let mut table = Vec::new();
    assert!(!cache.allocate(3, &mut table));
    assert!(table.is_empty());
    assert_eq!(cache.available(), 2);
}

#[test]
fn a_duplicate_block_is_not_stored_twice() {
    let mut cache = KvCache::new(4, true);
    let tokens = [1, 2, 3, 4];
    let h = hashes(&tokens);
    // Two sequences computed the same block in the same step, before either registered.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    assert!(cache.allocate(1, &mut a));
    assert!(cache.allocate(1, &mut b));
    cache.register(&a, &h, 0, 1);
    cache.register(&b, &h, 0, 1);
    let stored = cache.drain_events().filter(|e| matches!(e, kv_event::Data::Stored(_))).count();
    assert_eq!(stored, 1);
    cache.release(&mut b);
    cache.release(&mut a);
    cache.check_invariants();
    assert_eq!(cache.cached_hashes().len(), 1);
}

#[test]
fn stored_events_chain_to_their_parent() {
    let mut cache = KvCache::new(4, true);
    let tokens: Vec<u32> = (0..12).collect();
    let h = hashes(&tokens);
    let mut table = Vec::new();
    assert!(cache.allocate(3, &mut table));
    cache.register(&table, &h, 0, 1);
    cache.register(&table, &h, 1, 3);
    let events: Vec<_> = cache.drain_events().collect();
    assert_eq!(
        events,
        vec![
            kv_event::Data::Stored(KvStored { parent_hash: None, block_hashes: vec![h[0]] }),
            kv_event::Data::Stored(KvStored {
                parent_hash: Some(h[0]),
                block_hashes: vec![h[1], h[2]]
            }),
        ]
    );
}

#[test]
fn without_prefix_caching_nothing_is_shared_or_published() {
    let mut cache = KvCache::new(4, false);
    let mut a = admit(&mut cache, &[1, 2, 3, 4]).unwrap_or_default();
    cache.release(&mut a);
    assert_eq!(cache.cached_prefix(&hashes(&[1, 2, 3, 4])).blocks, 0);
    assert_eq!(cache.drain_events().count(), 0);
    cache.check_invariants();
}

#[test]
fn clear_forgets_unused_blocks() {
    let mut cache = KvCache::new(4, true);
    let mut index = HashSet::new();
    let mut a = admit(&mut cache, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap_or_default();
    cache.release(&mut a);
    cache.clear();
    replay(&mut cache, &mut index);
    assert!(index.is_empty());
    assert_eq!(cache.available(), 4);
    cache.check_invariants();
}

#[derive(Debug, Clone)]
enum Op {
    /// A prompt made of shared prefix `prefix` (0..4 blocks of it) and a private tail.
    Admit { prefix: u8, shared_blocks: u8, tail: Vec<u32> },
    /// Finish the `n`-th live sequence (mod the count).
    Release(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..3, 0u8..5, proptest::collection::vec(0u32..3, 0..10))
            .prop_map(|(prefix, shared_blocks, tail)| Op::Admit { prefix, shared_blocks, tail }),
        any::<usize>().prop_map(Op::Release),
    ]
}

proptest! {
    #[test]
    fn capacity_and_events_hold_under_random_traffic(
        blocks in 1u32..24,
        ops in proptest::collection::vec(op(), 1..120),
    ) {
        let mut cache = KvCache::new(blocks, true);
        let mut live: Vec<Vec<BlockId>> = Vec::new();
        let mut index = HashSet::new();
        for op in ops {
            match op {
                Op::Admit { prefix, shared_blocks, tail } => {
                    let mut tokens: Vec<u32> = (0..u32::from(shared_blocks) * BS as u32)
                        .map(|i| 100 * u32::from(prefix) + i)
                        .collect();
                    tokens.extend(tail);
                    if tokens.is_empty() {
                        continue;
                    }
                    if let Some(table) = admit(&mut cache, &tokens) {
                        live.push(table);
                    }
                }
                Op::Release(n) => {
                    if !live.is_empty() {
                        let mut table = live.swap_remove(n % live.len());
                        cache.release(&mut table);
                    }
                }
            }
            cache.check_invariants();
            prop_assert!(cache.active_blocks() <= blocks as usize);
            replay(&mut cache, &mut index);
            prop_assert!(index.len() <= blocks as usize);
            prop_assert_eq!(&index, &cache.cached_hashes());
        }
        // A snapshot rebuilds the same set, each chain after the chain holding its parent.
        cache.snapshot();
        let events: Vec<_> = cache.drain_events().collect();
        prop_assert_eq!(events.len(), 1);
        let Some(kv_event::Data::Snapshot(snapshot)) = events.into_iter().next() else {
            panic!("not a snapshot");
        };
        let mut seen = HashSet::new();
        for chain in snapshot.chains {
            if let Some(parent) = chain.parent_hash {
                prop_assert!(seen.contains(&parent), "a chain before its parent");
            }
            for h in chain.block_hashes {
                prop_assert!(seen.insert(h), "in the snapshot twice: {}", h);
            }
        }
        prop_assert_eq!(&seen, &cache.cached_hashes());
    }
}
