//! The engine conformance suite: what every [`Engine`] — the mocker and each engine-server
//! wrapper — must do, checked the same way for all of them. Tests call [`run`] with an engine
//! and what it is expected to support.

use std::collections::HashSet;
use std::time::Duration;

use futures::StreamExt;
use switchyard_proto::{
    ErrorKind, FinishReason, GenerateChunk, GenerateRequest, SamplingParams, kv_event,
};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

use crate::Engine;

/// Longest any step of the suite waits.
const WAIT: Duration = Duration::from_secs(30);

/// What the engine under test is expected to do.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// A prompt of valid token ids, several KV blocks long.
    pub prompt: Vec<u32>,
    /// Whether a repeated prompt reports cached tokens.
    pub caches_prefixes: bool,
    /// Whether the engine publishes KV events (they are then checked parent-first and
    /// hashed the Switchyard way).
    pub kv_events: bool,
}

/// Runs every check.
pub async fn run(engine: &dyn Engine, expect: &Expectations) {
    generates_and_ends_with_a_finish_reason(engine, expect).await;
    usage_adds_up(engine, expect).await;
    cancellation_frees_the_request(engine, expect).await;
    errors_carry_a_kind(engine).await;
    if expect.kv_events {
        kv_events_come_parent_first(engine, expect).await;
    }
}

/// A greedy request for `max_tokens` tokens that runs to its length.
pub fn request(prompt: &[u32], max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        request_id: format!("conformance-{}", rand::random::<u32>()),
        token_ids: prompt.to_vec(),
        sampling: Some(SamplingParams {
            max_tokens,
            temperature: Some(0.0),
            ignore_eos: true,
            ..SamplingParams::default()
        }),
        ..GenerateRequest::default()
    }
}

/// Every chunk of a request, the last one included.
pub async fn collect(engine: &dyn Engine, request: GenerateRequest) -> Vec<GenerateChunk> {
    let mut stream = timeout(WAIT, engine.generate(request, CancellationToken::new()))
        .await
        .expect("the engine admits the request in time")
        .expect("the engine admits the request");
    let mut chunks = Vec::new();
    while let Some(chunk) = timeout(WAIT, stream.next()).await.expect("a chunk in time") {
        chunks.push(chunk);
    }
    chunks
}

async fn generates_and_ends_with_a_finish_reason(engine: &dyn Engine, expect: &Expectations) {
    let chunks = collect(engine, request(&expect.prompt, 12)).await;
    let (last, body) = chunks.split_last().expect("at least one chunk");
    for chunk in body {
        assert_eq!(
            chunk.finish_reason(),
            FinishReason::Unspecified,
            "only the last chunk finishes"
        );
        assert!(chunk.error.is_none(), "{:?}", chunk.error);
    }
    assert!(last.error.is_none(), "{:?}", last.error);
    assert_eq!(last.finish_reason(), FinishReason::Length, "ignore_eos runs to max_tokens");
    let tokens: usize = chunks.iter().map(|c| c.token_ids.len()).sum();
    assert_eq!(tokens, 12, "max_tokens tokens in all");
}

async fn usage_adds_up(engine: &dyn Engine, expect: &Expectations) {
    let mut cached = 0;
    for _ in 0..2 {
        let chunks = collect(engine, request(&expect.prompt, 5)).await;
        let last = chunks.last().expect("a last chunk");
        let usage = last.usage.expect("usage on the last chunk");
        let tokens: usize = chunks.iter().map(|c| c.token_ids.len()).sum();
        assert_eq!(usage.completion_tokens as usize, tokens, "completion tokens are those sent");
        assert_eq!(usage.prompt_tokens as usize, expect.prompt.len(), "prompt tokens");
        assert!(usage.cached_tokens <= usage.prompt_tokens, "{usage:?}");
        cached = usage.cached_tokens;
    }
    if expect.caches_prefixes {
        assert!(cached > 0, "a repeated prompt reports cached tokens");
    }
}

async fn cancellation_frees_the_request(engine: &dyn Engine, expect: &Expectations) {
    let room = engine.card().context_length.saturating_sub(expect.prompt.len() as u32 + 8);
    let long = request(&expect.prompt, room.clamp(16, 4000));
    let cancel = CancellationToken::new();
    let mut stream = timeout(WAIT, engine.generate(long, cancel.clone()))
        .await
        .expect("admitted in time")
        .expect("admitted");
    let first = timeout(WAIT, stream.next()).await.expect("a first chunk in time");
    assert!(first.is_some_and(|c| c.error.is_none()), "the request runs");
    cancel.cancel();
    // The stream ends promptly once cancelled.
    let rest = timeout(WAIT, async { while stream.next().await.is_some() {} }).await;
    assert!(rest.is_ok(), "a cancelled stream ends");
    drop(stream);
    // Where the engine reports its load, the request leaves it.
    if engine.load().is_some() {
        let deadline = Instant::now() + WAIT;
        while engine.load().is_some_and(|l| l.active_requests > 0) {
            assert!(
                Instant::now() < deadline,
                "the cancelled request still runs: {:?}",
                engine.load()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn errors_carry_a_kind(engine: &dyn Engine) {
    let too_long = vec![1u32; engine.card().context_length as usize + 16];
    let outcome = timeout(WAIT, engine.generate(request(&too_long, 4), CancellationToken::new()))
        .await
        .expect("answered in time");
    let kind = match outcome {
        Err(e) => e.kind(),
        Ok(stream) => {
            let chunks: Vec<GenerateChunk> =
                timeout(WAIT, stream.collect()).await.expect("the stream ends in time");
            let error = chunks.last().and_then(|c| c.error.clone()).expect("an error chunk");
            error.kind()
        }
    };
    assert_eq!(kind, ErrorKind::InvalidRequest, "a prompt over the context is the client's error");
}

async fn kv_events_come_parent_first(engine: &dyn Engine, expect: &Expectations) {
    let mut events = engine.kv_events().expect("the engine publishes KV events");
    let block = engine.card().kv_block_size as usize;
    let prompt: Vec<u32> = expect.prompt.iter().rev().copied().collect();
    let want = switchyard_router::block_hashes(&prompt, block);
    assert!(!want.is_empty(), "the prompt spans a whole block");
    collect(engine, request(&prompt, 2)).await;
    let mut known: HashSet<u64> = HashSet::new();
    let deadline = Instant::now() + WAIT;
    while !want.iter().all(|h| known.contains(h)) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = timeout(left, events.recv()).await.expect("the prompt's blocks are announced");
        let Ok(event) = event else { continue };
        match event.data {
            Some(kv_event::Data::Stored(stored)) => {
                if let Some(parent) = stored.parent_hash
                    && want.contains(&parent)
                {
                    assert!(known.contains(&parent), "a block is announced after its parent");
                }
                known.extend(stored.block_hashes);
            }
            Some(kv_event::Data::Cleared(_)) => known.clear(),
            _ => {}
        }
    }
}
