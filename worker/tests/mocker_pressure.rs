//! The mocker under memory pressure: preemption keeps every request finishing, the cache
//! never holds more blocks than it has, and its KV events tell a router exactly what it
//! holds.

mod mocker_support;

use std::collections::HashSet;
use std::time::Duration;

use futures::future::join_all;
use mocker_support::{Response, generate, request, start};
use proptest::prelude::*;
use switchyard_proto::{FinishReason, KvEvent, kv_event};
use switchyard_worker::engine::Engine;
use switchyard_worker::mocker::{MockerConfig, MockerEngine};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

fn tight_config() -> MockerConfig {
    MockerConfig {
        block_size: 16,
        num_gpu_blocks: 64,
        watermark: 0.0,
        max_num_seqs: 32,
        max_num_batched_tokens: 2048,
        context_length: 4096,
        ..MockerConfig::default()
    }
}

async fn run_all(engine: &MockerEngine, n: u32) -> Vec<Response> {
    join_all((0..n).map(|i| {
        let prompt: Vec<u32> = (0..200).map(|t| t * 31 + i).collect();
        generate(engine, request(&format!("r{i}"), prompt, 300))
    }))
    .await
}

#[tokio::test(start_paused = true)]
async fn preemption_under_pressure_still_finishes_every_request() {
    let (engine, _shutdown) = start(tight_config());
    // 30 requests of 13 prompt blocks growing to 32 each, in a cache of 64 blocks.
    let tight = run_all(&engine, 30).await;
    assert!(engine.preemptions() > 0);
    let load = engine.load().unwrap_or_default();
    assert_eq!((load.active_requests, load.active_kv_blocks), (0, 0));

    let (roomy, _shutdown) = start(MockerConfig { num_gpu_blocks: 4096, ..tight_config() });
    let calm = run_all(&roomy, 30).await;
    assert_eq!(roomy.preemptions(), 0);
    for (t, c) in tight.iter().zip(&calm) {
        assert_eq!(t.finish(), FinishReason::Length);
        assert_eq!(t.tokens.len(), 300);
        assert_eq!(t.last.usage.unwrap_or_default().completion_tokens, 300);
        // Recompute after preemption yields the same tokens.
        assert_eq!(t.tokens, c.tokens);
    }
    // Preempted requests waited: the slowest took longer than without pressure.
    let slowest = |rs: &[Response]| rs.iter().filter_map(|r| r.times.last()).max().copied();
    assert!(slowest(&tight) > slowest(&calm));
}

/// A router's view of the engine, rebuilt from its KV events.
#[derive(Default)]
struct Replayed {
    hashes: HashSet<u64>,
    next_id: u64,
    largest: usize,
}

impl Replayed {
    fn apply(&mut self, event: KvEvent) {
        assert_eq!(event.event_id, self.next_id, "event ids must not skip");
        self.next_id += 1;
        match event.data {
            Some(kv_event::Data::Stored(s)) => {
                for h in s.block_hashes {
                    assert!(self.hashes.insert(h), "stored twice");
                }
            }
            Some(kv_event::Data::Removed(r)) => {
                for h in r.block_hashes {
                    assert!(self.hashes.remove(&h), "removed but never stored");
                }
            }
            Some(kv_event::Data::Cleared(_)) => self.hashes.clear(),
            Some(kv_event::Data::Snapshot(s)) => {
                self.hashes =
                    s.chains.iter().flat_map(|c| c.block_hashes.iter().copied()).collect();
            }
            None => panic!("an event without data"),
        }
        self.largest = self.largest.max(self.hashes.len());
    }

    /// Prompt tokens a request should find cached, per this view.
    fn predicted_hit_tokens(&self, prompt: &[u32], block_size: usize) -> usize {
        let hashes = switchyard_router::block_hashes(prompt, block_size);
        let usable = (prompt.len() - 1) / block_size;
        hashes[..usable.min(hashes.len())].iter().take_while(|h| self.hashes.contains(h)).count()
            * block_size
    }
}

async fn replay_until(
    events: &mut broadcast::Receiver<KvEvent>,
    view: &mut Replayed,
    engine: &MockerEngine,
    done: CancellationToken,
) {
    let total = engine.card().kv_total_blocks;
    loop {
        tokio::select! {
            event = events.recv() => {
                match event {
                    Ok(event) => view.apply(event),
                    Err(e) => panic!("event stream broke: {e}"),
                }
                let load = engine.load().unwrap_or_default();
                assert!(load.active_kv_blocks <= total);
            }
            () = done.cancelled() => break,
        }
    }
    while let Ok(event) = events.try_recv() {
        view.apply(event);
    }
}

/// A request: shared prefix `prefix` cut to `shared_blocks`, a private tail, an output
/// length and an arrival time.
type Spec = (usize, usize, Vec<u32>, u32, u64);

fn prompt_of(spec: &Spec, block_size: usize) -> Vec<u32> {
    let (prefix, shared_blocks, tail, _, _) = spec;
    let mut prompt: Vec<u32> =
        (0..(shared_blocks * block_size) as u32).map(|i| 1000 * (*prefix as u32 + 1) + i).collect();
    prompt.extend(tail);
    prompt
}

async fn random_traffic(num_gpu_blocks: usize, specs: Vec<Spec>) {
    let block_size = 4usize;
    let (engine, _shutdown) = start(MockerConfig {
        block_size: block_size as u32,
        num_gpu_blocks: num_gpu_blocks as u64,
        max_num_seqs: 8,
        max_num_batched_tokens: 64,
        context_length: 4096,
        ..MockerConfig::default()
    });
    let mut events = engine.kv_events();
    let mut view = Replayed::default();
    let done = CancellationToken::new();
    let work = async {
        let responses = join_all(specs.iter().enumerate().map(|(i, spec)| {
            let engine = &engine;
            async move {
                tokio::time::sleep(Duration::from_millis(spec.4)).await;
                let prompt = prompt_of(spec, block_size);
                generate(engine, request(&format!("r{i}"), prompt, spec.3)).await
            }
        }))
        .await;
        done.cancel();
        responses
    };
    let (responses, ()) =
        tokio::join!(work, replay_until(&mut events, &mut view, &engine, done.clone()));
    for (r, spec) in responses.iter().zip(&specs) {
        assert_eq!(r.finish(), FinishReason::Length);
        assert_eq!(r.tokens.len(), spec.3 as usize);
    }
    assert!(view.largest <= num_gpu_blocks, "{} > {num_gpu_blocks}", view.largest);

    // The events told the whole truth: what they say is cached is what a new request hits.
    for (i, spec) in specs.iter().enumerate().take(4) {
        let prompt = prompt_of(spec, block_size);
        let predicted = view.predicted_hit_tokens(&prompt, block_size);
        let r = generate(&engine, request(&format!("probe{i}"), prompt, 1)).await;
        let cached = r.last.usage.unwrap_or_default().cached_tokens as usize;
        assert_eq!(cached, predicted, "probe {i}");
        while let Ok(event) = events.try_recv() {
            view.apply(event);
        }
    }

    // A snapshot, asked for now, says what the events said, in the same id sequence.
    assert!(engine.request_kv_snapshot());
    loop {
        let event = events.recv().await.expect("a snapshot event");
        assert_eq!(event.event_id, view.next_id, "the snapshot takes its place in the sequence");
        if let Some(kv_event::Data::Snapshot(snapshot)) = &event.data {
            let snapshot: HashSet<u64> =
                snapshot.chains.iter().flat_map(|c| c.block_hashes.iter().copied()).collect();
            assert_eq!(snapshot, view.hashes);
            break;
        }
        // Events of the last probe still on their way.
        view.apply(event);
    }
}

fn spec() -> impl Strategy<Value = Spec> {
    (0usize..3, 0usize..12, proptest::collection::vec(0u32..50, 1..20), 1u32..40, 0u64..300)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn the_cache_never_holds_more_than_it_has_and_events_match_it(
        num_gpu_blocks in 28usize..64,
        specs in proptest::collection::vec(spec(), 1..40),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build();
        let Ok(runtime) = runtime else {
            panic!("no runtime");
        };
        runtime.block_on(random_traffic(num_gpu_blocks, specs));
    }
}
