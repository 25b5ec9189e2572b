//! Helpers shared by the mocker's integration tests: engines, requests, and reading a
//! stream to its end with a timeout on every await.

#![allow(dead_code)]

use std::time::Duration;

use futures::StreamExt;
use switchyard_proto::{FinishReason, GenerateChunk, GenerateRequest, ModelCard, SamplingParams};
use switchyard_worker::engine::EngineStream;
use switchyard_worker::mocker::{MockerConfig, MockerEngine};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;

/// Long enough for any simulated run here; with paused time it costs nothing.
pub const WAIT: Duration = Duration::from_secs(3600);

pub fn card() -> ModelCard {
    ModelCard { model: "mock-model".to_owned(), ..ModelCard::default() }
}

pub fn start(config: MockerConfig) -> (MockerEngine, CancellationToken) {
    let shutdown = CancellationToken::new();
    match MockerEngine::start(config, card(), shutdown.clone()) {
        Ok(engine) => (engine, shutdown),
        Err(e) => panic!("mocker did not start: {e}"),
    }
}

pub fn request(id: &str, tokens: Vec<u32>, max_tokens: u32) -> GenerateRequest {
    GenerateRequest {
        request_id: id.to_owned(),
        model: "mock-model".to_owned(),
        token_ids: tokens,
        sampling: Some(SamplingParams { max_tokens, ..SamplingParams::default() }),
        ..GenerateRequest::default()
    }
}

/// A whole response: tokens, when each chunk arrived (since `start`), and the last chunk.
#[derive(Debug)]
pub struct Response {
    pub tokens: Vec<u32>,
    pub times: Vec<Duration>,
    pub chunks: usize,
    pub last: GenerateChunk,
}

impl Response {
    pub fn finish(&self) -> FinishReason {
        self.last.finish_reason()
    }

    pub fn ttft(&self) -> Duration {
        self.times[0]
    }
}

/// Reads `stream` to its end.
pub async fn collect(mut stream: EngineStream, start: Instant) -> Response {
    let mut response = Response {
        tokens: Vec::new(),
        times: Vec::new(),
        chunks: 0,
        last: GenerateChunk::default(),
    };
    loop {
        let next = timeout(WAIT, stream.next()).await;
        let Ok(Some(chunk)) = next else {
            panic!("stream ended without a final chunk or timed out: {next:?}");
        };
        response.chunks += 1;
        if !chunk.token_ids.is_empty() {
            response.tokens.extend(&chunk.token_ids);
            response.times.push(start.elapsed());
        }
        if chunk.finish_reason() != FinishReason::Unspecified || chunk.error.is_some() {
            response.last = chunk;
            // Nothing may follow the last chunk.
            let after = timeout(WAIT, stream.next()).await;
            assert!(matches!(after, Ok(None)), "a chunk after the last: {after:?}");
            return response;
        }
    }
}

/// Sends `request` and reads the whole response.
pub async fn generate(engine: &MockerEngine, request: GenerateRequest) -> Response {
    use switchyard_worker::engine::Engine;
    let start = Instant::now();
    let stream = timeout(WAIT, engine.generate(request, CancellationToken::new())).await;
    match stream {
        Ok(Ok(stream)) => collect(stream, start).await,
        other => panic!("generate failed: {:?}", other.map(|r| r.err())),
    }
}

/// Polls `check` (every simulated millisecond) until it holds.
pub async fn eventually(mut check: impl FnMut() -> bool) {
    let waited = timeout(WAIT, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "condition never held");
}
