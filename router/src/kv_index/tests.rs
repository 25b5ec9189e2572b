//! Tests of the KV index: examples, event-id handling, approximate mode, and property tests
//! against a brute-force model (a plain set of blocks per instance).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::block_hashes;

fn stored(event_id: u64, parent: Option<u64>, blocks: &[u64]) -> KvEvent<'_> {
    KvEvent { event_id, change: KvChange::Stored { parent, blocks } }
}

fn removed(event_id: u64, blocks: &[u64]) -> KvEvent<'_> {
    KvEvent { event_id, change: KvChange::Removed { blocks } }
}

fn scores(index: &KvIndex, hashes: &[u64]) -> Vec<(InstanceId, u32)> {
    let mut found: Vec<_> = index.find_matches(hashes).iter().collect();
    found.sort();
    found
}

#[test]
fn overlap_is_the_leading_blocks_each_instance_holds() {
    let mut index = KvIndex::default();
    let (a, b) = (index.add_instance("a"), index.add_instance("b"));
    let chain = [10, 11, 12, 13];
    index.apply(a, &stored(0, None, &chain)).expect("known");
    index.apply(b, &stored(0, None, &chain[..2])).expect("known");
    index.check();
    assert_eq!(scores(&index, &chain), vec![(a, 4), (b, 2)]);
    assert_eq!(scores(&index, &[10, 11, 99]), vec![(a, 2), (b, 2)]);
    assert_eq!(scores(&index, &[99, 10]), vec![]);
    assert_eq!(index.find_matches(&chain).max(), 4);
    // A held block past a missing one does not count: the engine stops at the first miss.
    index.apply(a, &removed(1, &[11])).expect("known");
    index.check();
    assert_eq!(scores(&index, &chain), vec![(a, 1), (b, 2)]);
    assert_eq!(index.blocks(), 4);
}

#[test]
fn shared_prefixes_stay_one_run_as_holders_store_them_in_pieces() {
    let mut index = KvIndex::default();
    let chain: Vec<u64> = (1..=64).collect();
    for (i, cut) in [8, 20, 33, 50].into_iter().enumerate() {
        let id = index.add_instance(&format!("w{i}"));
        index.apply(id, &stored(0, None, &chain[..cut])).expect("known");
        let rest = KvEvent {
            event_id: 1,
            change: KvChange::Stored { parent: Some(chain[cut - 1]), blocks: &chain[cut..] },
        };
        index.apply(id, &rest).expect("known");
        index.check();
    }
    assert_eq!(index.runs(), 1, "splits are merged back once holders agree");
    assert!(scores(&index, &chain).iter().all(|&(_, n)| n == 64));
}

#[test]
fn removing_an_instance_leaves_the_others_and_stales_its_handle() {
    let mut index = KvIndex::default();
    let (a, b) = (index.add_instance("a"), index.add_instance("b"));
    index.apply(a, &stored(0, None, &[1, 2, 3])).expect("known");
    index.apply(b, &stored(0, None, &[1, 2])).expect("known");
    assert!(index.remove_instance(a));
    index.check();
    assert!(!index.remove_instance(a));
    assert_eq!(index.blocks(), 2);
    assert_eq!(scores(&index, &[1, 2, 3]), vec![(b, 2)]);
    assert!(matches!(index.apply(a, &stored(1, None, &[4])), Err(Error::UnknownInstance { .. })));
    // The slot is reused under a new generation; the old handle still reads nothing.
    let c = index.add_instance("c");
    index.apply(c, &stored(0, None, &[1, 2, 3])).expect("known");
    let found = index.find_matches(&[1, 2, 3]);
    assert_eq!((found.get(c), found.get(a)), (3, 0));
    assert_eq!(index.instance("a"), None);
    assert_eq!(index.instance_name(c), Some("c"));
    assert_eq!(index.instances(), 2);
}

#[test]
fn event_ids_detect_gaps_late_joins_duplicates_and_restarts() {
    let mut index = KvIndex::default();
    let a = index.add_instance("a");
    let b = index.add_instance("b");
    let apply = |index: &mut KvIndex, id, event| index.apply(id, &event).expect("known");
    assert_eq!(apply(&mut index, a, stored(0, None, &[1])), Applied::InOrder);
    assert_eq!(apply(&mut index, a, stored(1, Some(1), &[2])), Applied::InOrder);
    assert_eq!(apply(&mut index, a, stored(1, Some(1), &[2])), Applied::Stale);
    let gap = apply(&mut index, a, stored(4, Some(2), &[3]));
    assert_eq!(gap, Applied::ResyncNeeded(ResyncReason::Gap { expected: 2, got: 4 }));
    assert_eq!(index.instance_blocks(a), 3, "the event is applied all the same");
    let joined = apply(&mut index, b, removed(7, &[1]));
    assert_eq!(joined, Applied::ResyncNeeded(ResyncReason::Joined { first: 7 }));

    // The resync replaces a's blocks; events it covers are stale, later ones in order.
    let fits = index.resync(a, 9, [(None, &[1, 2][..]), (Some(2), &[5][..])]);
    assert!(fits.expect("known"));
    index.check();
    assert_eq!(scores(&index, &[1, 2, 5]), vec![(a, 3)]);
    assert_eq!(apply(&mut index, a, removed(8, &[1])), Applied::Stale);
    assert_eq!(apply(&mut index, a, removed(9, &[5])), Applied::InOrder);

    // Event 0 again: the worker restarted with an empty cache.
    assert_eq!(apply(&mut index, a, stored(0, None, &[7])), Applied::InOrder);
    index.check();
    assert_eq!(index.instance_blocks(a), 1);
    assert_eq!(scores(&index, &[1]), vec![]);
}

#[test]
fn an_instance_over_its_limit_keeps_what_fits_and_asks_for_a_resync() {
    let mut index = KvIndex::new(KvIndexConfig { max_blocks_per_instance: 3 });
    let a = index.add_instance("a");
    let over = index.apply(a, &stored(0, None, &[1, 2, 3, 4, 5])).expect("known");
    assert_eq!(over, Applied::ResyncNeeded(ResyncReason::OverCapacity { limit: 3 }));
    assert_eq!(index.instance_blocks(a), 3);
    assert_eq!(scores(&index, &[1, 2, 3, 4]), vec![(a, 3)]);
    // Blocks it already holds take no room.
    let again = index.apply(a, &stored(1, None, &[1, 2, 3])).expect("known");
    assert_eq!(again, Applied::InOrder);
    index.apply(a, &removed(2, &[3])).expect("known");
    let one_more = index.apply(a, &stored(3, None, &[1, 2, 3, 4])).expect("known");
    assert!(one_more.needs_resync());
    assert_eq!(scores(&index, &[1, 2, 3, 4]), vec![(a, 3)]);
    index.check();
}

#[test]
fn cleared_drops_every_block_of_the_instance() {
    let mut index = KvIndex::default();
    let (a, b) = (index.add_instance("a"), index.add_instance("b"));
    index.apply(a, &stored(0, None, &[1, 2])).expect("known");
    index.apply(b, &stored(0, None, &[1])).expect("known");
    let cleared = KvEvent { event_id: 1, change: KvChange::Cleared };
    assert_eq!(index.apply(a, &cleared).expect("known"), Applied::InOrder);
    index.check();
    assert_eq!(index.blocks(), 1);
    assert_eq!(scores(&index, &[1, 2]), vec![(b, 1)]);
}

#[test]
fn recorded_decisions_expire_unless_renewed_and_events_take_over() {
    let mut index = KvIndex::default();
    let a = index.add_instance("a");
    let secs = Duration::from_secs;
    assert!(index.record_decision(a, &[1, 2, 3], secs(0), secs(10)).expect("known"));
    assert!(index.record_decision(a, &[1, 2], secs(5), secs(10)).expect("known"));
    assert_eq!(scores(&index, &[1, 2, 3]), vec![(a, 3)]);
    index.expire(secs(12));
    index.check();
    assert_eq!(scores(&index, &[1, 2, 3]), vec![(a, 2)], "1 and 2 were renewed");
    index.expire(secs(15));
    assert_eq!(index.blocks(), 0);

    index.record_decision(a, &[1], secs(20), secs(10)).expect("known");
    index.apply(a, &stored(0, None, &[4])).expect("known");
    index.check();
    assert_eq!(scores(&index, &[1]), vec![], "events replace the recorded guesses");
    assert!(!index.record_decision(a, &[1], secs(21), secs(10)).expect("known"));
    index.expire(secs(100));
    assert_eq!(scores(&index, &[4]), vec![(a, 1)]);
}

// ---------------------------------------------------------------------------------------
// Property tests against a brute-force model.
// ---------------------------------------------------------------------------------------

const INSTANCES: usize = 6;

/// A prompt over a 2-token alphabet with 1-token blocks: prompts share prefixes often.
fn prompt() -> impl Strategy<Value = Vec<u64>> {
    prop::collection::vec(0u32..2, 1..10).prop_map(|tokens| block_hashes(&tokens, 1))
}

/// A prompt that is usually a prefix of one of three long chains that share prefixes of 3
/// and 6 blocks, so that many instances hold the same blocks cut at different depths.
fn shared_prompt() -> impl Strategy<Value = Vec<u64>> {
    let pooled = (0usize..3, 1usize..=12).prop_map(|(k, len)| {
        let tokens: Vec<u32> = (0..12).map(|t| u32::from(t >= [12, 6, 3][k])).collect();
        block_hashes(&tokens[..len], 1)
    });
    prop_oneof![3 => pooled, 1 => prompt()]
}

#[derive(Debug, Clone)]
enum Op {
    /// Store `chain[from..to]` (wrapped into range) with its true parent.
    Store(usize, Vec<u64>, usize, usize),
    /// Remove these blocks, picked from `chain` in any order, repeats allowed.
    Remove(usize, Vec<u64>, Vec<usize>),
    Clear(usize),
    RemoveInstance(usize),
    /// Drop an event: the next one shows a gap, and the test resyncs from the model.
    LoseEvent(usize),
}

fn op() -> impl Strategy<Value = Op> {
    let inst = 0..INSTANCES;
    prop_oneof![
        6 => (inst.clone(), shared_prompt(), any::<usize>(), any::<usize>())
            .prop_map(|(i, chain, from, to)| Op::Store(i, chain, from, to)),
        3 => (inst.clone(), shared_prompt(), prop::collection::vec(any::<usize>(), 1..6))
            .prop_map(|(i, chain, picks)| Op::Remove(i, chain, picks)),
        1 => inst.clone().prop_map(Op::Clear),
        1 => inst.clone().prop_map(Op::RemoveInstance),
        1 => inst.prop_map(Op::LoseEvent),
    ]
}

/// The model: each instance's set of blocks; overlap = leading blocks in the set.
fn model_scores(
    model: &[HashSet<u64>],
    ids: &[InstanceId],
    hashes: &[u64],
) -> Vec<(InstanceId, u32)> {
    let mut found: Vec<_> = model
        .iter()
        .zip(ids)
        .map(|(held, &id)| (id, hashes.iter().take_while(|h| held.contains(h)).count() as u32))
        .filter(|&(_, n)| n > 0)
        .collect();
    found.sort();
    found
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn index_agrees_with_brute_force(ops in prop::collection::vec(op(), 1..40),
                                     queries in prop::collection::vec(prompt(), 4)) {
        let mut index = KvIndex::default();
        let mut ids: Vec<InstanceId> =
            (0..INSTANCES).map(|i| index.add_instance(&format!("w{i}"))).collect();
        let mut model = vec![HashSet::new(); INSTANCES];
        let mut next_id = [0u64; INSTANCES];
        let mut queries = queries;
        for op in ops {
            if let Op::Store(_, chain, ..) | Op::Remove(_, chain, _) = &op {
                queries.push(chain.clone());
            }
            let removed_blocks: Vec<u64>;
            let (i, change) = match &op {
                Op::Store(i, chain, from, to) => {
                    let from = from % chain.len();
                    let to = from + 1 + to % (chain.len() - from);
                    let parent = from.checked_sub(1).map(|p| chain[p]);
                    model[*i].extend(&chain[from..to]);
                    (*i, KvChange::Stored { parent, blocks: &chain[from..to] })
                }
                Op::Remove(i, chain, picks) => {
                    removed_blocks = picks.iter().map(|p| chain[p % chain.len()]).collect();
                    for b in &removed_blocks {
                        model[*i].remove(b);
                    }
                    (*i, KvChange::Removed { blocks: &removed_blocks })
                }
                Op::Clear(i) => {
                    model[*i].clear();
                    (*i, KvChange::Cleared)
                }
                Op::RemoveInstance(i) => {
                    prop_assert!(index.remove_instance(ids[*i]));
                    model[*i].clear();
                    ids[*i] = index.add_instance(&format!("w{i}"));
                    next_id[*i] = 0;
                    index.check();
                    continue;
                }
                Op::LoseEvent(i) => {
                    next_id[*i] += 1;
                    continue;
                }
            };
            let event = KvEvent { event_id: next_id[i], change };
            let applied = index.apply(ids[i], &event).expect("known");
            next_id[i] += 1;
            if applied.needs_resync() {
                let chains: Vec<Vec<u64>> = model[i].iter().map(|&h| vec![h]).collect();
                let fits = index.resync(ids[i], next_id[i], chains.iter().map(|c| (None, &c[..])));
                prop_assert!(fits.expect("known"));
            }
            index.check();
        }
        let union: HashSet<u64> = model.iter().flatten().copied().collect();
        prop_assert_eq!(index.blocks(), union.len());
        for (held, &id) in model.iter().zip(&ids) {
            prop_assert_eq!(index.instance_blocks(id), held.len());
        }
        for hashes in &queries {
            prop_assert_eq!(scores(&index, hashes), model_scores(&model, &ids, hashes));
        }
    }

    #[test]
    fn recorded_decisions_agree_with_brute_force(
        steps in prop::collection::vec((0..INSTANCES, shared_prompt(), 0u64..20, 0u64..8), 1..40),
        queries in prop::collection::vec(prompt(), 4),
    ) {
        let mut index = KvIndex::default();
        let ids: Vec<InstanceId> =
            (0..INSTANCES).map(|i| index.add_instance(&format!("w{i}"))).collect();
        // Block → latest expiry, per instance.
        let mut model: Vec<HashMap<u64, u64>> = vec![HashMap::new(); INSTANCES];
        let mut queries = queries;
        let mut now = 0;
        for (i, chain, ttl, advance) in steps {
            now += advance;
            let at = Duration::from_secs(now);
            prop_assert!(index.record_decision(ids[i], &chain, at, Duration::from_secs(ttl)).expect("known"));
            queries.push(chain.clone());
            for &h in &chain {
                let e = model[i].entry(h).or_insert(now + ttl);
                *e = (*e).max(now + ttl);
            }
            index.check();
        }
        index.expire(Duration::from_secs(now));
        index.check();
        let live: Vec<HashSet<u64>> = model
            .iter()
            .map(|m| m.iter().filter(|&(_, &e)| e > now).map(|(&h, _)| h).collect())
            .collect();
        for hashes in &queries {
            prop_assert_eq!(scores(&index, hashes), model_scores(&live, &ids, hashes));
        }
    }
}
