//! The mocker through the `Engine` seam: tokens and stop conditions, validation,
//! cancellation, shutdown, the model card and the load report.

mod mocker_support;

use std::time::Duration;

use futures::StreamExt;
use mocker_support::{WAIT, collect, eventually, generate, request, start};
use switchyard_proto::{ErrorKind, FinishReason, GenerateRequest, SamplingParams, kv_event};
use switchyard_worker::Error;
use switchyard_worker::engine::Engine;
use switchyard_worker::mocker::{MockerConfig, MockerEngine};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

fn with_sampling(id: &str, tokens: Vec<u32>, sampling: SamplingParams) -> GenerateRequest {
    GenerateRequest { sampling: Some(sampling), ..request(id, tokens, 0) }
}

async fn rejection(engine: &MockerEngine, request: GenerateRequest) -> String {
    match timeout(WAIT, engine.generate(request, CancellationToken::new())).await {
        Ok(Err(Error::InvalidRequest(message))) => message,
        Ok(Err(e)) => panic!("expected InvalidRequest, got {e:?}"),
        Ok(Ok(_)) => panic!("expected InvalidRequest, got a stream"),
        Err(_) => panic!("generate timed out"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_card_describes_the_simulated_engine() {
    let (engine, _shutdown) = start(MockerConfig {
        block_size: 32,
        num_gpu_blocks: 1234,
        context_length: 4096,
        ..MockerConfig::default()
    });
    let card = engine.card();
    assert_eq!(card.model, "mock-model");
    assert_eq!(card.engine, "mocker");
    assert_eq!((card.kv_block_size, card.kv_total_blocks), (32, 1234));
    assert_eq!(card.context_length, 4096);
    let load = engine.load().unwrap_or_default();
    assert_eq!((load.total_kv_blocks, load.active_kv_blocks), (1234, 0));
}

#[tokio::test]
async fn an_invalid_config_is_refused_at_start() {
    let bad = MockerConfig { speedup_ratio: -1.0, ..MockerConfig::default() };
    let started = MockerEngine::start(bad, mocker_support::card(), CancellationToken::new());
    match started {
        Err(Error::Config(m)) => assert!(m.contains("speedup_ratio"), "{m}"),
        Err(e) => panic!("expected a config error, got {e:?}"),
        Ok(_) => panic!("expected a config error"),
    }
}

#[tokio::test(start_paused = true)]
async fn outputs_run_to_max_tokens_one_chunk_per_token() {
    let (engine, _shutdown) = start(MockerConfig::default());
    let r = generate(&engine, request("a", vec![1, 2, 3], 17)).await;
    assert_eq!(r.tokens.len(), 17);
    // 17 token chunks, the last one also carrying the finish reason and usage.
    assert_eq!(r.chunks, 17);
    assert_eq!(r.finish(), FinishReason::Length);
    assert_eq!(r.last.seq, 0);
    let usage = r.last.usage.unwrap_or_default();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (3, 17));
    assert!(r.tokens.iter().all(|&t| t < 32_000 && t != 2));
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_tokens() {
    let (engine, _shutdown) = start(MockerConfig::default());
    let seeded = |id: &str, seed| {
        with_sampling(
            id,
            vec![5; 40],
            SamplingParams { max_tokens: 32, seed: Some(seed), ..SamplingParams::default() },
        )
    };
    let a = generate(&engine, seeded("a", 9)).await;
    let b = generate(&engine, seeded("b", 9)).await;
    let c = generate(&engine, seeded("c", 10)).await;
    assert_eq!(a.tokens, b.tokens);
    assert_ne!(a.tokens, c.tokens);
    // Without a seed, the request id decides.
    let d = generate(&engine, request("same-id", vec![5; 40], 32)).await;
    let e = generate(&engine, request("same-id", vec![5; 40], 32)).await;
    let f = generate(&engine, request("other-id", vec![5; 40], 32)).await;
    assert_eq!(d.tokens, e.tokens);
    assert_ne!(d.tokens, f.tokens);
}

#[tokio::test(start_paused = true)]
async fn eos_probability_min_tokens_and_ignore_eos() {
    let (engine, _shutdown) = start(MockerConfig {
        eos_probability: 1.0,
        eos_token_ids: vec![7],
        ..MockerConfig::default()
    });
    let sampling = |min_tokens, ignore_eos| SamplingParams {
        max_tokens: 20,
        min_tokens,
        ignore_eos,
        ..SamplingParams::default()
    };
    // EOS is certain, but not before min_tokens.
    let r = generate(&engine, with_sampling("a", vec![1; 8], sampling(4, false))).await;
    assert_eq!(r.tokens.len(), 5);
    assert_eq!(r.tokens[4], 7);
    assert!(r.tokens[..4].iter().all(|&t| t != 7));
    assert_eq!(r.finish(), FinishReason::Stop);
    assert_eq!(r.last.usage.unwrap_or_default().completion_tokens, 5);

    let r = generate(&engine, with_sampling("b", vec![1; 8], sampling(0, true))).await;
    assert_eq!(r.tokens.len(), 20);
    assert_eq!(r.finish(), FinishReason::Length);
    assert!(r.tokens.iter().all(|&t| t != 7));
}

#[tokio::test(start_paused = true)]
async fn some_outputs_stop_early_with_a_partial_eos_probability() {
    let (engine, _shutdown) =
        start(MockerConfig { eos_probability: 0.05, ..MockerConfig::default() });
    let mut lengths = Vec::new();
    for i in 0..20 {
        let r = generate(&engine, request(&format!("r{i}"), vec![3; 16], 200)).await;
        if r.finish() == FinishReason::Stop {
            assert_eq!(r.tokens.last(), Some(&2));
        }
        lengths.push(r.tokens.len());
    }
    assert!(lengths.iter().any(|&n| n < 200), "{lengths:?}");
}

#[tokio::test(start_paused = true)]
async fn stop_token_ids_end_the_output_after_min_tokens() {
    let (engine, _shutdown) =
        start(MockerConfig { vocab_size: 4, eos_token_ids: vec![0], ..MockerConfig::default() });
    let r = generate(
        &engine,
        with_sampling(
            "a",
            vec![1; 4],
            SamplingParams {
                max_tokens: 500,
                min_tokens: 6,
                stop_token_ids: vec![3],
                ..SamplingParams::default()
            },
        ),
    )
    .await;
    assert_eq!(r.finish(), FinishReason::Stop);
    assert_eq!(r.tokens.last(), Some(&3));
    assert!(r.tokens.len() > 6);
    assert!(r.tokens[..r.tokens.len() - 1].iter().all(|&t| t == 1 || t == 2));
}

#[tokio::test(start_paused = true)]
async fn bad_requests_get_clear_errors() {
    let (engine, _shutdown) = start(MockerConfig {
        block_size: 16,
        num_gpu_blocks: 10,
        watermark: 0.0,
        context_length: 1000,
        ..MockerConfig::default()
    });
    let m = rejection(&engine, request("a", Vec::new(), 5)).await;
    assert!(m.contains("empty"), "{m}");
    let m = rejection(&engine, request("a", vec![1; 990], 20)).await;
    assert!(m.contains("context length"), "{m}");
    let m = rejection(&engine, request("a", vec![1; 170], 1)).await;
    assert!(m.contains("KV blocks") && m.contains("prompt needs 11"), "{m}");
    let m = rejection(&engine, request("a", vec![1; 100], 100)).await;
    assert!(m.contains("max_tokens"), "{m}");
    let m = rejection(&engine, request("a", vec![1; 10], 0)).await;
    assert!(m.contains("max_tokens must be at least 1"), "{m}");
    let sampling = SamplingParams { max_tokens: 2, min_tokens: 3, ..SamplingParams::default() };
    let m = rejection(&engine, with_sampling("a", vec![1; 10], sampling)).await;
    assert!(m.contains("min_tokens"), "{m}");
    // Nothing was admitted.
    assert_eq!(engine.load().unwrap_or_default().waiting_requests, 0);
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_token_frees_the_requests_blocks() {
    let (engine, _shutdown) = start(MockerConfig::default());
    let cancel = CancellationToken::new();
    let stream = engine.generate(request("long", vec![1; 300], 1000), cancel.clone());
    let Ok(Ok(mut stream)) = timeout(WAIT, stream).await else {
        panic!("generate failed");
    };
    for _ in 0..3 {
        assert!(matches!(timeout(WAIT, stream.next()).await, Ok(Some(_))));
    }
    assert_eq!(engine.load().unwrap_or_default().active_requests, 1);
    assert!(engine.load().unwrap_or_default().active_kv_blocks >= 19);
    cancel.cancel();
    let last = loop {
        let chunk = timeout(WAIT, stream.next()).await;
        let Ok(Some(chunk)) = chunk else {
            panic!("the stream ended without a final chunk");
        };
        if chunk.finish_reason() != FinishReason::Unspecified {
            break chunk;
        }
    };
    assert_eq!(last.finish_reason(), FinishReason::Cancelled);
    assert!(matches!(timeout(WAIT, stream.next()).await, Ok(None)));
    eventually(|| {
        let load = engine.load().unwrap_or_default();
        load.active_requests == 0 && load.active_kv_blocks == 0
    })
    .await;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_stream_frees_the_requests_blocks() {
    let (engine, _shutdown) = start(MockerConfig::default());
    let stream = engine.generate(request("long", vec![1; 300], 1000), CancellationToken::new());
    let Ok(Ok(mut stream)) = timeout(WAIT, stream).await else {
        panic!("generate failed");
    };
    assert!(matches!(timeout(WAIT, stream.next()).await, Ok(Some(_))));
    assert!(engine.load().unwrap_or_default().active_kv_blocks > 0);
    let before = Instant::now();
    drop(stream);
    eventually(|| {
        let load = engine.load().unwrap_or_default();
        load.active_requests == 0 && load.active_kv_blocks == 0
    })
    .await;
    // It leaves at once, not after its remaining 999 decode steps.
    assert!(before.elapsed() < Duration::from_millis(100));
}

#[tokio::test(start_paused = true)]
async fn shutdown_ends_in_flight_requests_with_an_error_and_refuses_new_ones() {
    let (engine, shutdown) = start(MockerConfig::default());
    let mut events = engine.kv_events();
    let stream = engine.generate(request("long", vec![1; 300], 1000), CancellationToken::new());
    let Ok(Ok(mut stream)) = timeout(WAIT, stream).await else {
        panic!("generate failed");
    };
    assert!(matches!(timeout(WAIT, stream.next()).await, Ok(Some(_))));
    shutdown.cancel();
    let r = collect(stream, Instant::now()).await;
    assert_eq!(r.finish(), FinishReason::Error);
    let error = r.last.error.unwrap_or_default();
    assert_eq!(error.kind(), ErrorKind::ShuttingDown);
    assert!(error.message.contains("stopped"), "{}", error.message);
    assert!(timeout(WAIT, engine.stopped()).await.is_ok());

    let refused =
        timeout(WAIT, engine.generate(request("late", vec![1], 1), CancellationToken::new()));
    assert!(matches!(refused.await, Ok(Err(Error::ShuttingDown))));
    // The cache is gone, and routers are told.
    let mut cleared = false;
    while let Ok(event) = events.try_recv() {
        cleared |= matches!(event.data, Some(kv_event::Data::Cleared(_)));
    }
    assert!(cleared);
}

#[tokio::test(start_paused = true)]
async fn dropping_the_engine_stops_its_task() {
    let (engine, _shutdown) = start(MockerConfig::default());
    let stream = engine.generate(request("long", vec![1; 30], 1000), CancellationToken::new());
    let Ok(Ok(stream)) = timeout(WAIT, stream).await else {
        panic!("generate failed");
    };
    drop(engine);
    let r = collect(stream, Instant::now()).await;
    assert_eq!(r.finish(), FinishReason::Error);
}

#[tokio::test(start_paused = true)]
async fn the_load_report_counts_waiting_and_running() {
    let (engine, _shutdown) = start(MockerConfig { max_num_seqs: 2, ..MockerConfig::default() });
    let streams: Vec<_> = (0..5)
        .map(|i| {
            engine.generate(request(&format!("r{i}"), vec![i; 20], 50), CancellationToken::new())
        })
        .collect();
    let mut open = Vec::new();
    for s in streams {
        let Ok(Ok(s)) = timeout(WAIT, s).await else {
            panic!("generate failed");
        };
        open.push(s);
    }
    eventually(|| {
        let load = engine.load().unwrap_or_default();
        load.active_requests == 2 && load.waiting_requests == 3 && load.active_kv_blocks == 4
    })
    .await;
    let started = Instant::now();
    for s in open {
        let r = collect(s, started).await;
        assert_eq!(r.tokens.len(), 50);
    }
    eventually(|| engine.load().unwrap_or_default().active_requests == 0).await;
}
