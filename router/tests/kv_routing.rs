//! The KV index and the kv policy together, the way a router drives them: overlaps from
//! the index, load the router tracks itself, the decision fed back into both.

use std::collections::VecDeque;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use switchyard_router::{
    Candidate, InstanceId, KvChange, KvEvent, KvIndex, KvPolicy, KvPolicyConfig, Policy,
    PolicyKind, RequestInfo, block_hashes,
};

/// A router over `n` instances with its own load bookkeeping: requests in flight and the KV
/// blocks they occupy, released in order once more than `concurrency` are running.
struct Router {
    index: KvIndex,
    names: Vec<String>,
    ids: Vec<InstanceId>,
    in_flight: Vec<u32>,
    blocks: Vec<u64>,
    running: VecDeque<(usize, u64)>,
    concurrency: usize,
    next_event_id: Vec<u64>,
}

impl Router {
    fn new(n: usize, concurrency: usize) -> Router {
        let mut index = KvIndex::default();
        let names: Vec<String> = (0..n).map(|i| format!("worker-{i}")).collect();
        let ids = names.iter().map(|name| index.add_instance(name)).collect();
        Router {
            index,
            names,
            ids,
            in_flight: vec![0; n],
            blocks: vec![0; n],
            running: VecDeque::new(),
            concurrency,
            next_event_id: vec![0; n],
        }
    }

    /// Routes one prompt; returns the chosen instance and the overlap it had.
    fn route(&mut self, policy: &dyn Policy, hashes: &[u64]) -> (usize, u32) {
        let scores = self.index.find_matches(hashes);
        let candidates: Vec<Candidate<'_>> = (0..self.names.len())
            .map(|i| Candidate {
                overlap_blocks: scores.get(self.ids[i]),
                active_decode_blocks: self.blocks[i],
                ..Candidate::new(&self.names[i], self.in_flight[i])
            })
            .collect();
        let chosen =
            policy.select(&candidates, &RequestInfo::new(hashes, hashes.len() * 16)).expect("one");
        let footprint = hashes.len() as u64 + 4;
        self.in_flight[chosen] += 1;
        self.blocks[chosen] += footprint;
        self.running.push_back((chosen, footprint));
        if self.running.len() > self.concurrency
            && let Some((done, footprint)) = self.running.pop_front()
        {
            self.in_flight[done] -= 1;
            self.blocks[done] -= footprint;
        }
        (chosen, scores.get(self.ids[chosen]))
    }

    /// The worker's KV event for a prompt it just cached.
    fn worker_stores(&mut self, i: usize, hashes: &[u64]) {
        let event = KvEvent {
            event_id: self.next_event_id[i],
            change: KvChange::Stored { parent: None, blocks: hashes },
        };
        self.next_event_id[i] += 1;
        assert!(!self.index.apply(self.ids[i], &event).expect("known").needs_resync());
    }
}

impl Router {
    fn worker_removes(&mut self, i: usize, hashes: &[u64]) {
        let event = KvEvent {
            event_id: self.next_event_id[i],
            change: KvChange::Removed { blocks: hashes },
        };
        self.next_event_id[i] += 1;
        assert!(!self.index.apply(self.ids[i], &event).expect("known").needs_resync());
    }
}

fn assert_spread(received: &[usize]) {
    let mean = received.iter().sum::<usize>() as f64 / received.len() as f64;
    let max = *received.iter().max().expect("instances") as f64;
    assert!(max <= 2.0 * mean, "max {max} vs mean {mean}: {received:?}");
}

#[test]
fn identical_prompts_spread_in_approximate_mode() {
    let hashes = block_hashes(&(0..2048).collect::<Vec<u32>>(), 16);
    for policy in [KvPolicy::default(), cache_following()] {
        identical_prompts_spread_recorded(&policy, &hashes);
    }
}

fn identical_prompts_spread_recorded(policy: &dyn Policy, hashes: &[u64]) {
    let mut router = Router::new(8, 32);
    let mut received = vec![0; 8];
    for step in 0..2000u64 {
        let (chosen, _) = router.route(policy, hashes);
        received[chosen] += 1;
        let now = Duration::from_millis(step * 10);
        let recorded =
            router.index.record_decision(router.ids[chosen], hashes, now, Duration::from_secs(30));
        assert!(recorded.expect("known"));
    }
    assert_spread(&received);
}

#[test]
fn identical_prompts_spread_with_kv_events() {
    let hashes = block_hashes(&(0..4096).collect::<Vec<u32>>(), 16);
    let policies: [Box<dyn Policy>; 4] = [
        PolicyKind::Kv.build(),
        Box::new(cache_following()),
        PolicyKind::LeastLoaded.build(),
        PolicyKind::PowerOfTwo.build(),
    ];
    for policy in policies {
        let mut router = Router::new(16, 64);
        let mut received = vec![0; 16];
        for _ in 0..3000 {
            let (chosen, _) = router.route(policy.as_ref(), &hashes);
            received[chosen] += 1;
            router.worker_stores(chosen, &hashes);
        }
        assert_spread(&received);
    }
}

/// 32 groups of 16 prompts, each a 2,048-token system prompt of its group and a 256-token
/// question, in random order, over 4 instances that each cache at most 12 groups (LRU by
/// group): there is room for every group on one instance, not on all of them. Returns the
/// fraction of prompt blocks found cached.
fn shared_prefix_hits(policy: &dyn Policy) -> f64 {
    const GROUPS: u32 = 32;
    const CAPACITY: usize = 12;
    let mut router = Router::new(4, 16);
    // Per instance: cached groups, least recently used first, with the blocks stored.
    let mut cached: Vec<VecDeque<(u32, Vec<u64>)>> = vec![VecDeque::new(); 4];
    let mut order: Vec<u32> = (0..16).flat_map(|_| 0..GROUPS).collect();
    order.shuffle(&mut StdRng::seed_from_u64(3));
    let (mut hit, mut total) = (0u64, 0u64);
    for (n, group) in order.into_iter().enumerate() {
        let mut tokens: Vec<u32> = (0..2048).map(|t| group * 100_000 + t).collect();
        tokens.extend((0..256).map(|t| 50_000_000 + n as u32 * 1_000 + t));
        let hashes = block_hashes(&tokens, 16);
        let (chosen, overlap) = router.route(policy, &hashes);
        hit += u64::from(overlap);
        total += hashes.len() as u64;
        let lru = &mut cached[chosen];
        let mut entry = match lru.iter().position(|(g, _)| *g == group) {
            Some(at) => lru.remove(at).expect("present"),
            None => (group, Vec::new()),
        };
        entry.1.extend(&hashes);
        lru.push_back(entry);
        router.worker_stores(chosen, &hashes);
        if lru.len() > CAPACITY
            && let Some((_, blocks)) = lru.pop_front()
        {
            router.worker_removes(chosen, &blocks);
        }
    }
    hit as f64 / total as f64
}

/// A kv policy that follows the cache as hard as it can, with the default hot-spot guard.
fn cache_following() -> KvPolicy {
    KvPolicy::new(cache_following_config()).expect("valid")
}

/// Requests each of 4 instances receives of 400 identical prompts, 16 in flight.
fn identical_prompts_received(policy: &dyn Policy) -> Vec<usize> {
    let hashes = block_hashes(&(0..1024).collect::<Vec<u32>>(), 16);
    let mut router = Router::new(4, 16);
    let mut received = vec![0; 4];
    for _ in 0..400 {
        let (chosen, _) = router.route(policy, &hashes);
        if received[chosen] == 0 {
            router.worker_stores(chosen, &hashes);
        }
        received[chosen] += 1;
    }
    received
}

#[test]
fn the_hot_spot_guard_is_what_spreads_identical_prompts() {
    assert_spread(&identical_prompts_received(&cache_following()));
    // The same cost without the guard piles every request onto the first holder.
    let unguarded = KvPolicyConfig { balance_ratio: 0.0, ..cache_following_config() };
    let received = identical_prompts_received(&KvPolicy::new(unguarded).expect("valid"));
    assert_eq!(received.iter().max(), Some(&400), "{received:?}");
}

fn cache_following_config() -> KvPolicyConfig {
    KvPolicyConfig { prefill_load_scale: 64.0, ..KvPolicyConfig::default() }
}

#[test]
fn kv_routing_reuses_shared_prefixes_where_round_robin_does_not() {
    // The oracle: each group on one instance misses only its first prompt's system prompt.
    let oracle = (15.0 * 128.0) / (16.0 * 144.0);
    let kv = shared_prefix_hits(&KvPolicy::default());
    let round_robin = shared_prefix_hits(PolicyKind::RoundRobin.build().as_ref());
    assert!(kv >= 0.95 * oracle, "kv {kv:.3} vs oracle {oracle:.3}");
    assert!(kv > 2.0 * round_robin, "kv {kv:.3} vs round-robin {round_robin:.3}");
}

#[test]
fn a_removed_worker_leaves_the_index_and_its_prefix_goes_elsewhere() {
    let hashes = block_hashes(&(0..1024).collect::<Vec<u32>>(), 16);
    let policy = KvPolicy::default();
    let mut router = Router::new(3, 1000);
    let (first, _) = router.route(&policy, &hashes);
    router.worker_stores(first, &hashes);
    assert_eq!(router.index.find_matches(&hashes).get(router.ids[first]), 64);
    assert!(router.index.remove_instance(router.ids[first]));
    assert_eq!(router.index.blocks(), 0);
    assert_eq!(router.index.find_matches(&hashes).max(), 0);
}
