//! Unit tests of the scheduler: step composition, costs, chunking, admission limits,
//! preemption and prefix hits, driven step by step without a clock.

use switchyard_proto::{GenerateRequest, SamplingParams};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::*;

type Output = mpsc::UnboundedReceiver<GenerateChunk>;

fn config() -> MockerConfig {
    MockerConfig {
        block_size: 4,
        num_gpu_blocks: 64,
        max_num_seqs: 8,
        max_num_batched_tokens: 32,
        watermark: 0.0,
        context_length: 256,
        ..MockerConfig::default()
    }
}

fn request(tokens: Vec<u32>, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        request_id: "r".to_owned(),
        token_ids: tokens,
        sampling: Some(SamplingParams { max_tokens, seed: Some(1), ..SamplingParams::default() }),
        ..GenerateRequest::default()
    }
}

fn add(s: &mut Scheduler, id: SeqId, tokens: Vec<u32>, max_tokens: u32) -> Output {
    let (tx, rx) = mpsc::unbounded_channel();
    let seq =
        Sequence::new(id, &s.config, request(tokens, max_tokens), tx, CancellationToken::new());
    match seq {
        Ok(seq) => s.add(seq),
        Err(e) => panic!("invalid test request: {e}"),
    }
    rx
}

/// Runs steps until idle; returns the number of steps.
fn run(s: &mut Scheduler) -> usize {
    let mut steps = 0;
    while s.has_work() {
        let step = s.schedule();
        assert!(step.prefill_tokens + step.decodes > 0, "empty step");
        s.cache().check_invariants();
        s.finish_step();
        steps += 1;
        assert!(steps < 100_000, "no progress");
    }
    steps
}

/// All chunks so far: (tokens, last chunk).
fn drain(rx: &mut Output) -> (Vec<u32>, Option<GenerateChunk>) {
    let mut tokens = Vec::new();
    let mut last = None;
    while let Ok(chunk) = rx.try_recv() {
        tokens.extend(&chunk.token_ids);
        if chunk.finish_reason() != FinishReason::Unspecified {
            last = Some(chunk);
        }
    }
    (tokens, last)
}

#[test]
fn a_lone_request_prefills_then_decodes_one_token_per_step() {
    let mut s = Scheduler::new(config());
    let mut rx = add(&mut s, 0, (0..10).collect(), 3);
    let p = config().profile;

    let step = s.schedule();
    assert_eq!((step.prefill_tokens, step.decodes), (10, 0));
    assert_eq!(step.ms, p.prefill_ms(10));
    s.finish_step();
    assert_eq!(drain(&mut rx).0.len(), 1);

    // 11 tokens known, 11 slots: 3 blocks of 64 held.
    let step = s.schedule();
    assert_eq!((step.prefill_tokens, step.decodes), (0, 1));
    assert_eq!(step.kv_usage, 3.0 / 64.0);
    assert_eq!(step.ms, p.decode_ms(3.0 / 64.0));
    s.finish_step();

    let step = s.schedule();
    assert_eq!(step.kv_usage, 3.0 / 64.0);
    s.finish_step();
    assert!(!s.has_work());
    let (tokens, last) = drain(&mut rx);
    assert_eq!(tokens.len(), 2);
    let last = last.unwrap_or_default();
    assert_eq!(last.finish_reason(), FinishReason::Length);
    let usage = last.usage.unwrap_or_default();
    assert_eq!((usage.prompt_tokens, usage.completion_tokens), (10, 3));
    assert_eq!(s.load().active_kv_blocks, 0);
}

#[test]
fn a_long_prompt_is_chunked_over_steps_within_the_budget() {
    let mut s = Scheduler::new(config());
    let mut rx = add(&mut s, 0, (0..70).collect(), 1);
    let chunks: Vec<usize> = (0..3)
        .map(|_| {
            let step = s.schedule();
            s.finish_step();
            step.prefill_tokens
        })
        .collect();
    assert_eq!(chunks, vec![32, 32, 6]);
    let (tokens, last) = drain(&mut rx);
    assert_eq!(tokens.len(), 1);
    assert!(last.is_some());
}

#[test]
fn without_chunking_a_prompt_waits_for_a_step_with_room() {
    let mut s = Scheduler::new(MockerConfig {
        enable_chunked_prefill: false,
        max_num_batched_tokens: 256,
        num_gpu_blocks: 128,
        ..config()
    });
    let _a = add(&mut s, 0, (0..200).collect(), 2);
    let _b = add(&mut s, 1, (1000..1100).collect(), 2);
    let step = s.schedule();
    assert_eq!(step.prefill_tokens, 200);
    s.finish_step();
    // b's 100 tokens did not fit in the 56 a left; now they fit beside a's decode.
    let step = s.schedule();
    assert_eq!((step.prefill_tokens, step.decodes), (100, 1));
}

#[test]
fn a_step_holding_prefill_and_decode_costs_both() {
    let mut s = Scheduler::new(config());
    let _a = add(&mut s, 0, (0..8).collect(), 5);
    s.schedule();
    s.finish_step();
    let _b = add(&mut s, 1, (100..112).collect(), 5);
    let step = s.schedule();
    assert_eq!((step.prefill_tokens, step.decodes), (12, 1));
    let p = config().profile;
    assert_eq!(step.ms, p.prefill_ms(12) + p.decode_ms(step.kv_usage));
}

#[test]
fn max_num_seqs_bounds_the_batch() {
    let mut s = Scheduler::new(MockerConfig { max_num_seqs: 2, ..config() });
    let _rx: Vec<Output> = (0..4).map(|i| add(&mut s, i, vec![i as u32; 3], 4)).collect();
    s.schedule();
    let load = s.load();
    assert_eq!((load.active_requests, load.waiting_requests), (2, 2));
    s.finish_step();
    run(&mut s);
}

#[test]
fn the_watermark_keeps_blocks_free_at_admission() {
    let mut s = Scheduler::new(MockerConfig {
        num_gpu_blocks: 10,
        watermark: 0.2,
        max_num_batched_tokens: 64,
        ..config()
    });
    let _a = add(&mut s, 0, (0..24).collect(), 1);
    let _b = add(&mut s, 1, (100..112).collect(), 1);
    // a holds 6 of 10 blocks; b's 3 would leave 1 free, below the watermark's 2.
    s.schedule();
    let load = s.load();
    assert_eq!((load.active_requests, load.waiting_requests), (1, 1));
    s.finish_step();
    s.schedule();
    let load = s.load();
    assert_eq!((load.active_requests, load.waiting_requests), (1, 0));
}

#[test]
fn a_cached_prefix_is_not_computed_again() {
    let mut s = Scheduler::new(config());
    let prompt: Vec<u32> = (0..30).collect();
    let _a = add(&mut s, 0, prompt.clone(), 1);
    run(&mut s);
    let mut b = add(&mut s, 1, prompt, 1);
    let step = s.schedule();
    // 7 full blocks of 4 are cached; the partial block's 2 tokens are computed.
    assert_eq!(step.prefill_tokens, 2);
    s.finish_step();
    let usage = drain(&mut b).1.and_then(|c| c.usage).unwrap_or_default();
    assert_eq!(usage.cached_tokens, 28);
    assert_eq!(s.load().cache_hit_blocks, 7);
    assert_eq!(s.load().cache_lookup_blocks, 14);
}

#[test]
fn a_block_aligned_prompt_recomputes_its_last_block() {
    let mut s = Scheduler::new(config());
    let prompt: Vec<u32> = (0..16).collect();
    let _a = add(&mut s, 0, prompt.clone(), 1);
    run(&mut s);
    let _b = add(&mut s, 1, prompt, 1);
    assert_eq!(s.schedule().prefill_tokens, 4);
}

#[test]
fn under_pressure_the_newest_is_preempted_and_every_request_finishes() {
    let mut s =
        Scheduler::new(MockerConfig { num_gpu_blocks: 12, max_num_batched_tokens: 64, ..config() });
    let mut outputs: Vec<Output> =
        (0..6).map(|i| add(&mut s, i, (0..8).map(|t| t + 100 * i as u32).collect(), 30)).collect();
    run(&mut s);
    assert!(s.preemptions() > 0);
    for rx in &mut outputs {
        let (tokens, last) = drain(rx);
        assert_eq!(tokens.len(), 30);
        let usage = last.and_then(|c| c.usage).unwrap_or_default();
        assert_eq!(usage.completion_tokens, 30);
    }
    assert_eq!(s.load().active_kv_blocks, 0);
}

#[test]
fn preemption_does_not_change_the_tokens() {
    let tokens_with = |blocks: u64| {
        let mut s = Scheduler::new(MockerConfig { num_gpu_blocks: blocks, ..config() });
        let mut outputs: Vec<Output> =
            (0..4).map(|i| add(&mut s, i, vec![i as u32; 6], 20)).collect();
        run(&mut s);
        let preempted = s.preemptions() > 0;
        let tokens: Vec<Vec<u32>> = outputs.iter_mut().map(|rx| drain(rx).0).collect();
        (tokens, preempted)
    };
    let (calm, calm_preempted) = tokens_with(64);
    let (tight, tight_preempted) = tokens_with(7);
    assert!(!calm_preempted && tight_preempted);
    assert_eq!(calm, tight);
}

#[test]
fn cancelling_frees_blocks_and_says_cancelled() {
    let mut s = Scheduler::new(config());
    let mut rx = add(&mut s, 0, (0..20).collect(), 50);
    s.schedule();
    s.finish_step();
    assert!(s.load().active_kv_blocks > 0);
    s.cancel(0);
    assert_eq!(s.load().active_kv_blocks, 0);
    assert!(!s.has_work());
    let last = drain(&mut rx).1.unwrap_or_default();
    assert_eq!(last.finish_reason(), FinishReason::Cancelled);
}

#[test]
fn a_dropped_output_leaves_at_the_next_token() {
    let mut s = Scheduler::new(config());
    let rx = add(&mut s, 0, (0..20).collect(), 50);
    drop(rx);
    s.schedule();
    s.finish_step();
    assert!(!s.has_work());
    assert_eq!(s.load().active_kv_blocks, 0);
}

#[test]
fn a_cancelled_waiting_request_is_skipped() {
    let mut s = Scheduler::new(MockerConfig { max_num_seqs: 1, ..config() });
    let _a = add(&mut s, 0, vec![1; 4], 2);
    let _b = add(&mut s, 1, vec![2; 4], 2);
    let mut c = add(&mut s, 2, vec![3; 4], 2);
    s.cancel(1);
    assert_eq!(s.load().waiting_requests, 2);
    run(&mut s);
    assert_eq!(drain(&mut c).0.len(), 2);
}

#[test]
fn fail_all_ends_every_request_with_an_error_and_clears_the_cache() {
    let mut s = Scheduler::new(config());
    let mut rx: Vec<Output> = (0..3).map(|i| add(&mut s, i, vec![i as u32; 9], 9)).collect();
    s.schedule();
    s.finish_step();
    s.fail_all(ErrorKind::ShuttingDown, "bye");
    for r in &mut rx {
        let last = drain(r).1.unwrap_or_default();
        assert_eq!(last.finish_reason(), FinishReason::Error);
        assert_eq!(last.error.unwrap_or_default().kind(), ErrorKind::ShuttingDown);
    }
    assert!(!s.has_work());
    let cleared = s.drain_events().any(|e| matches!(e, kv_event::Data::Cleared(_)));
    assert!(cleared);
    s.cache().check_invariants();
}
