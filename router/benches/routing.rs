//! Routing benchmarks at fleet scale: 1,000 instances and ~1M indexed blocks.
//!
//! The fleet: a common 8-block system prefix on every instance; 200 prompt templates of 32
//! blocks after it, 10 per instance (~50 holders each); 31 conversations of 32 blocks per
//! instance, each its own. Decisions route 128-block (2,048-token) prompts: prefix,
//! template, 24 blocks of a cached conversation, 64 new blocks.
//!
//! The whole decision of the routing state ([`RoutingState::select`]) runs on the same fleet
//! split into 250 prefill and 750 decode instances, so it includes the pair choice.
//!
//! Besides criterion's timings, `main` prints decision-time percentiles measured one decision
//! at a time, since the target is a p99.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use switchyard_router::{
    Candidate, DisaggConfig, InstanceId, InstanceLoad, InstanceSpec, KvChange, KvEvent, KvIndex,
    KvPolicy, Policy, PrefillPlace, RequestInfo, Role, RouteRequest, RoutingConfig, RoutingState,
};
use xxhash_rust::xxh3::xxh3_64_with_seed;

const INSTANCES: usize = 1_000;
const TEMPLATES: usize = 200;
const TEMPLATES_PER_INSTANCE: usize = 10;
const CONVERSATIONS_PER_INSTANCE: usize = 31;
const PREFIX_BLOCKS: usize = 8;
const TEMPLATE_BLOCKS: usize = 32;
const CONVERSATION_BLOCKS: usize = 32;

/// Chained hashes of `len` one-token blocks continuing the chain `parent`, unique per `tag`,
/// hashed as [`switchyard_router::block_hashes`] does.
fn chain(parent: &[u64], tag: u32, len: usize) -> Vec<u64> {
    let mut last = parent.last().copied().unwrap_or(0);
    (0..len as u32)
        .map(|i| {
            let token = tag.wrapping_mul(1 << 12).wrapping_add(i);
            last = xxh3_64_with_seed(&token.to_le_bytes(), last);
            last
        })
        .collect()
}

struct Instance {
    id: InstanceId,
    /// Its stored events, as (parent, blocks), to replay after removing it.
    stored: Vec<(Option<u64>, Vec<u64>)>,
    next_event_id: u64,
}

struct Fleet {
    index: KvIndex,
    instances: Vec<Instance>,
    names: Vec<String>,
    prompts: Vec<Vec<u64>>,
    /// Per instance, load as a report would give it.
    loads: Vec<(u64, u32)>,
}

impl Fleet {
    fn build() -> Fleet {
        let mut rng = StdRng::seed_from_u64(7);
        let prefix = chain(&[], 1, PREFIX_BLOCKS);
        let templates: Vec<Vec<u64>> = (0..TEMPLATES)
            .map(|t| {
                let mut full = prefix.clone();
                full.extend(chain(&prefix, 10 + t as u32, TEMPLATE_BLOCKS));
                full
            })
            .collect();
        let mut index = KvIndex::default();
        let names: Vec<String> = (0..INSTANCES).map(|i| format!("worker-{i:04}")).collect();
        let mut instances = Vec::with_capacity(INSTANCES);
        let mut conversations = Vec::new();
        let mut tag = 1_000u32;
        for name in &names {
            let id = index.add_instance(name);
            let mut stored = vec![(None, prefix.clone())];
            let mine: Vec<usize> =
                (0..TEMPLATES_PER_INSTANCE).map(|_| rng.random_range(0..TEMPLATES)).collect();
            for &t in &mine {
                let template = &templates[t];
                stored.push((Some(prefix[PREFIX_BLOCKS - 1]), template[PREFIX_BLOCKS..].to_vec()));
            }
            for c in 0..CONVERSATIONS_PER_INSTANCE {
                let template = &templates[mine[c % mine.len()]];
                tag += 1;
                let blocks = chain(template, tag, CONVERSATION_BLOCKS);
                stored.push((template.last().copied(), blocks.clone()));
                let mut full = template.clone();
                full.extend(blocks);
                conversations.push(full);
            }
            let mut instance = Instance { id, stored, next_event_id: 0 };
            replay(&mut index, &mut instance);
            instances.push(instance);
        }
        let prompts = (0..1_000)
            .map(|_| {
                let conversation = &conversations[rng.random_range(0..conversations.len())];
                let cached = PREFIX_BLOCKS + TEMPLATE_BLOCKS + 24;
                tag += 1;
                let mut prompt = conversation[..cached].to_vec();
                prompt.extend(chain(&prompt, tag, 128 - cached));
                prompt
            })
            .collect();
        let loads =
            (0..INSTANCES).map(|_| (rng.random_range(0..4_000), rng.random_range(0..64))).collect();
        Fleet { index, instances, names, prompts, loads }
    }

    /// One routing decision: overlaps from the index, candidates, the kv policy.
    fn decide(&self, policy: &dyn Policy, prompt: &[u64]) -> Option<usize> {
        let scores = self.index.find_matches(prompt);
        let candidates: Vec<Candidate<'_>> = self
            .instances
            .iter()
            .zip(&self.names)
            .zip(&self.loads)
            .map(|((instance, name), &(blocks, requests))| Candidate {
                overlap_blocks: scores.get(instance.id),
                active_decode_blocks: blocks,
                active_requests: requests,
                ..Candidate::new(name, 0)
            })
            .collect();
        policy.select(&candidates, &RequestInfo::new(prompt, prompt.len() * 16))
    }
}

/// Applies every stored event of `instance`, as after registering it.
fn replay(index: &mut KvIndex, instance: &mut Instance) {
    for (parent, blocks) in &instance.stored {
        let event = KvEvent {
            event_id: instance.next_event_id,
            change: KvChange::Stored { parent: *parent, blocks },
        };
        instance.next_event_id += 1;
        let _ = black_box(index.apply(instance.id, &event));
    }
}

/// Instances of the routing-state fleet that prefill; the rest decode.
const PREFILL_INSTANCES: usize = 250;

/// The fleet as a [`RoutingState`] sees it: every instance's events and load applied.
fn routing_state(fleet: &Fleet) -> RoutingState {
    let disagg = DisaggConfig { max_local_prefill_tokens: 256, max_prefill_queue: u32::MAX };
    let mut state = RoutingState::new(RoutingConfig { disagg, ..RoutingConfig::default() });
    let role = |i: usize| if i < PREFILL_INSTANCES { Role::Prefill } else { Role::Decode };
    state.sync(fleet.names.iter().enumerate().map(|(i, name)| InstanceSpec {
        instance: name,
        model: "m",
        role: role(i),
    }));
    for ((instance, name), &(blocks, requests)) in
        fleet.instances.iter().zip(&fleet.names).zip(&fleet.loads)
    {
        for (event_id, (parent, stored)) in instance.stored.iter().enumerate() {
            let change = KvChange::Stored { parent: *parent, blocks: stored };
            let event = KvEvent { event_id: event_id as u64, change };
            let _ = state.apply_kv(name, &event);
        }
        let load = InstanceLoad {
            active_requests: requests,
            active_kv_blocks: blocks,
            total_kv_blocks: 16_384,
            ..InstanceLoad::default()
        };
        state.apply_load(name, load);
    }
    state
}

/// One whole decision of the routing state, its bookings released afterwards (untimed).
fn select_pair(state: &mut RoutingState, policy: &dyn Policy, prompt: &[u64]) -> Duration {
    let request = RouteRequest {
        model: "m",
        block_hashes: prompt,
        prompt_tokens: prompt.len() * 16,
        block_size: 16,
        exclude: &[],
        allow_remote_prefill: true,
    };
    let start = Instant::now();
    let chosen = black_box(state.select(&request, policy, Duration::ZERO));
    let took = start.elapsed();
    if let Some(chosen) = chosen {
        debug_assert_eq!(chosen.place, PrefillPlace::Remote);
        if let Some(prefill) = &chosen.prefill {
            state.release(&prefill.booking);
        }
        state.release(&chosen.decode);
    }
    took
}

fn state_percentiles(state: &mut RoutingState, fleet: &Fleet, policy: &dyn Policy) {
    let mut times: Vec<Duration> = Vec::with_capacity(20_000);
    for round in 0..20 {
        for prompt in &fleet.prompts {
            let took = select_pair(state, policy, prompt);
            if round > 0 {
                times.push(took);
            }
        }
    }
    report("RoutingState::select (decode + prefill pair, 250p/750d)", &mut times);
}

fn report(what: &str, times: &mut [Duration]) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
    println!(
        "{what}, {} samples: p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
        times.len(),
        at(0.5),
        at(0.9),
        at(0.99),
        at(1.0)
    );
}

fn percentiles(fleet: &Fleet, policy: &dyn Policy) {
    let mut times: Vec<Duration> = Vec::with_capacity(20_000);
    for round in 0..20 {
        for prompt in &fleet.prompts {
            let start = Instant::now();
            black_box(fleet.decide(policy, black_box(prompt)));
            if round > 0 {
                times.push(start.elapsed());
            }
        }
    }
    report("decision (find_matches + 1,000 candidates + kv select)", &mut times);
}

fn benches(c: &mut Criterion, fleet: &mut Fleet) {
    let policy = KvPolicy::default();
    let mut group = c.benchmark_group("decision");
    let mut i = 0;
    group.bench_function("find_matches", |b| {
        b.iter(|| {
            i = (i + 1) % fleet.prompts.len();
            black_box(fleet.index.find_matches(black_box(&fleet.prompts[i])))
        })
    });
    group.bench_function("find_matches+kv_select", |b| {
        b.iter(|| {
            i = (i + 1) % fleet.prompts.len();
            black_box(fleet.decide(&policy, black_box(&fleet.prompts[i])))
        })
    });

    // The worst shape for the walk: a 128-block prefix on every instance, each cut at a
    // different length (as uneven evictions leave it), so holder sets change at every block.
    let mut ragged = KvIndex::default();
    let prefix = chain(&[], 3, 128);
    for (i, name) in fleet.names.iter().enumerate() {
        let id = ragged.add_instance(name);
        let blocks = &prefix[..1 + i % prefix.len()];
        let event = KvEvent { event_id: 0, change: KvChange::Stored { parent: None, blocks } };
        let _ = ragged.apply(id, &event);
    }
    group.bench_function("find_matches, 1,000 holders cut at 128 depths", |b| {
        b.iter(|| black_box(ragged.find_matches(black_box(&prefix))))
    });
    let mut state = routing_state(fleet);
    group.bench_function("RoutingState::select, 250 prefill + 750 decode", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    i = (i + 1) % fleet.prompts.len();
                    select_pair(&mut state, &policy, &fleet.prompts[i])
                })
                .sum()
        })
    });
    group.finish();

    let mut group = c.benchmark_group("apply");
    let mut tag = 5_000_000u32;
    let parent = fleet.instances[0].stored[1].1.clone();
    let id = fleet.instances[0].id;
    group.bench_function("store+remove 16 new blocks", |b| {
        b.iter_batched(
            || {
                tag += 1;
                chain(&parent, tag, 16)
            },
            |blocks| {
                let instance = &mut fleet.instances[0];
                for change in [
                    KvChange::Stored { parent: parent.last().copied(), blocks: &blocks },
                    KvChange::Removed { blocks: &blocks },
                ] {
                    let event = KvEvent { event_id: instance.next_event_id, change };
                    instance.next_event_id += 1;
                    black_box(fleet.index.apply(id, &event)).ok();
                }
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();

    c.bench_function("remove_instance (~1,300 blocks)", |b| {
        let mut next = 0;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                next = (next + 1) % INSTANCES;
                let start = Instant::now();
                black_box(fleet.index.remove_instance(fleet.instances[next].id));
                total += start.elapsed();
                let instance = &mut fleet.instances[next];
                instance.id = fleet.index.add_instance(&fleet.names[next]);
                instance.next_event_id = 0;
                replay(&mut fleet.index, instance);
            }
            total
        })
    });
}

fn main() {
    let start = Instant::now();
    let mut fleet = Fleet::build();
    println!(
        "fleet: {} instances, {} blocks in {} runs, built in {:?}",
        fleet.index.instances(),
        fleet.index.blocks(),
        fleet.index.runs(),
        start.elapsed()
    );
    percentiles(&fleet, &KvPolicy::default());
    let mut state = routing_state(&fleet);
    state_percentiles(&mut state, &fleet, &KvPolicy::default());
    let mut criterion = Criterion::default().configure_from_args();
    benches(&mut criterion, &mut fleet);
    criterion.final_summary();
}
