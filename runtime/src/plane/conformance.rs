//! The test suite every request plane passes: implement [`PlaneHarness`] for it and call
//! [`run_all`] (or one check) from a test.
//!
//! Checks panic on failure. They serve a [`TestHandler`], whose streams count how they ended, so
//! a check can see on the server side what the client did. Timeouts are generous: the checks test
//! what happens, never how fast.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::future::join_all;
use switchyard_proto::{
    ErrorKind, FinishReason, GenerateChunk, GenerateRequest, SamplingParams, Usage, WorkerError,
};

use super::{ChunkStream, GenerateHandler, RequestClient};
use crate::Error;

/// Longest wait for any one step of a check.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);
/// Delay between the test handler's chunks.
const CHUNK_DELAY: Duration = Duration::from_millis(5);
/// Chunks of a response meant to outlast the check.
const ENDLESS: u32 = 1_000_000;

/// How a check starts servers and clients of the plane under test.
#[async_trait]
pub trait PlaneHarness: Send + Sync {
    /// Starts a server for `handler`. It serves until the returned value is killed or dropped.
    async fn start(&self, handler: Arc<dyn GenerateHandler>) -> Box<dyn RunningServer>;
    /// The client under test; checks send many requests through one client.
    fn client(&self) -> Arc<dyn RequestClient>;
    /// An address where no server of this plane answers.
    async fn unreachable_address(&self) -> String;
}

/// A server started by a [`PlaneHarness`].
pub trait RunningServer: Send {
    /// The address clients send requests to.
    fn address(&self) -> String;
    /// Ends the server at once, as if its process died: no final chunks, no goodbye.
    fn kill(self: Box<Self>);
}

/// Runs every check against the plane of `harness`.
pub async fn run_all(harness: &dyn PlaneHarness) {
    chunks_arrive_in_order(harness).await;
    error_chunk_ends_stream(harness).await;
    skipped_chunk_breaks_stream(harness).await;
    missing_final_chunk_breaks_stream(harness).await;
    dropping_stream_cancels_handler(harness).await;
    concurrent_requests_share_one_client(harness).await;
    unreachable_address_fails_to_connect(harness).await;
    server_death_ends_stream_with_error(harness).await;
    request_to_dead_server_fails_to_connect(harness).await;
}

/// What a [`TestHandler`]'s streams do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// `max_tokens` chunks, token id = seq, the last with finish reason `Length`.
    Complete,
    /// One chunk, then a final chunk with an `ENGINE` error.
    Fail,
    /// Chunks numbered 0, 2, 4, ...: a plane must notice the gap.
    SkipSeq,
    /// `max_tokens` chunks, none of them final: a plane must notice the missing end.
    EndEarly,
}

/// A handler that plays a [`Script`], one chunk per [`CHUNK_DELAY`], and counts its streams.
#[derive(Debug)]
pub struct TestHandler {
    script: Script,
    counts: Arc<StreamCounts>,
}

#[derive(Debug, Default)]
struct StreamCounts {
    started: AtomicUsize,
    finished: AtomicUsize,
    dropped_early: AtomicUsize,
}

impl TestHandler {
    pub fn new(script: Script) -> Arc<TestHandler> {
        Arc::new(TestHandler { script, counts: Arc::default() })
    }

    /// Streams started.
    pub fn started(&self) -> usize {
        self.counts.started.load(Ordering::SeqCst)
    }

    /// Streams that yielded their last chunk.
    pub fn finished(&self) -> usize {
        self.counts.finished.load(Ordering::SeqCst)
    }

    /// Streams dropped before their last chunk: requests cancelled on the server.
    pub fn dropped_early(&self) -> usize {
        self.counts.dropped_early.load(Ordering::SeqCst)
    }
}

/// Counts the end of one stream when dropped, however it ends.
struct EndCounter {
    counts: Arc<StreamCounts>,
    finished: bool,
}

impl Drop for EndCounter {
    fn drop(&mut self) {
        let count = if self.finished { &self.counts.finished } else { &self.counts.dropped_early };
        count.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl GenerateHandler for TestHandler {
    async fn generate(&self, request: GenerateRequest) -> ChunkStream {
        self.counts.started.fetch_add(1, Ordering::SeqCst);
        let total = u64::from(request.sampling.map_or(1, |s| s.max_tokens.max(1)));
        let script = self.script;
        let end = EndCounter { counts: Arc::clone(&self.counts), finished: false };
        Box::pin(futures::stream::unfold(Some((end, 0_u64)), move |state| async move {
            let (mut end, index) = state?;
            tokio::time::sleep(CHUNK_DELAY).await;
            let last = match script {
                Script::Fail => index == 1,
                Script::Complete | Script::SkipSeq | Script::EndEarly => index + 1 == total,
            };
            let seq = if script == Script::SkipSeq { index * 2 } else { index };
            let token = u32::try_from(index).unwrap_or(u32::MAX);
            let mut chunk = GenerateChunk { seq, token_ids: vec![token], ..Default::default() };
            if last {
                match script {
                    Script::Complete | Script::SkipSeq => {
                        chunk.finish_reason = FinishReason::Length.into();
                        let usage = Usage { completion_tokens: token + 1, ..Default::default() };
                        chunk.usage = Some(usage);
                    }
                    Script::Fail => {
                        chunk.token_ids.clear();
                        chunk.finish_reason = FinishReason::Error.into();
                        let message = "scripted failure".to_owned();
                        chunk.error = Some(WorkerError {
                            kind: ErrorKind::Engine.into(),
                            message,
                            ..Default::default()
                        });
                    }
                    Script::EndEarly => {}
                }
                end.finished = true;
                return Some((Ok(chunk), None));
            }
            Some((Ok(chunk), Some((end, index + 1))))
        }))
    }
}

/// A request for `chunks` chunks.
pub fn request(id: &str, chunks: u32) -> GenerateRequest {
    GenerateRequest {
        request_id: id.to_owned(),
        model: "test".to_owned(),
        token_ids: vec![1, 2, 3],
        sampling: Some(SamplingParams { max_tokens: chunks, ..Default::default() }),
        ..Default::default()
    }
}

async fn within<T>(what: &str, step: impl Future<Output = T>) -> T {
    match tokio::time::timeout(STEP_TIMEOUT, step).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not done within {STEP_TIMEOUT:?}"),
    }
}

async fn open(client: &dyn RequestClient, address: &str, request: GenerateRequest) -> ChunkStream {
    within("generate", client.generate(address, request))
        .await
        .unwrap_or_else(|e| panic!("generate to {address}: {e}"))
}

/// Every item of `stream` up to its end.
async fn collect(stream: ChunkStream) -> Vec<Result<GenerateChunk, Error>> {
    within("the whole stream", stream.collect()).await
}

/// Waits until `done` holds, checking every few milliseconds.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    within(what, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn assert_complete(items: &[Result<GenerateChunk, Error>], chunks: u32) {
    assert_eq!(items.len(), chunks as usize, "one item per chunk, then the end: {items:?}");
    for (index, item) in items.iter().enumerate() {
        let chunk = item.as_ref().unwrap_or_else(|e| panic!("chunk {index}: {e}"));
        assert_eq!(chunk.seq, index as u64, "chunks in order");
        assert_eq!(chunk.token_ids, vec![index as u32]);
        let last = index + 1 == items.len();
        let finish = if last { FinishReason::Length } else { FinishReason::Unspecified };
        assert_eq!(chunk.finish_reason(), finish, "only the last chunk is final");
    }
}

/// Chunks arrive in order, the last one final, and the stream ends after it.
pub async fn chunks_arrive_in_order(harness: &dyn PlaneHarness) {
    let handler = TestHandler::new(Script::Complete);
    let server = harness.start(handler.clone()).await;
    let client = harness.client();
    for chunks in [1, 7] {
        let stream = open(client.as_ref(), &server.address(), request("in-order", chunks)).await;
        assert_complete(&collect(stream).await, chunks);
    }
    eventually("handler streams finished", || handler.finished() == 2).await;
}

/// A final chunk with an error arrives as a chunk, and ends the stream.
pub async fn error_chunk_ends_stream(harness: &dyn PlaneHarness) {
    let server = harness.start(TestHandler::new(Script::Fail)).await;
    let stream = open(harness.client().as_ref(), &server.address(), request("fail", 10)).await;
    let items = collect(stream).await;
    assert_eq!(items.len(), 2, "a chunk, then the error chunk: {items:?}");
    let last = items[1].as_ref().unwrap_or_else(|e| panic!("the error chunk: {e}"));
    let error = last.error.as_ref().expect("the last chunk carries the error");
    assert_eq!(error.kind(), ErrorKind::Engine, "the error kind crosses the wire");
    assert_eq!(last.finish_reason(), FinishReason::Error);
}

/// A gap in `seq` ends the stream with [`Error::StreamBroken`].
pub async fn skipped_chunk_breaks_stream(harness: &dyn PlaneHarness) {
    let server = harness.start(TestHandler::new(Script::SkipSeq)).await;
    let stream = open(harness.client().as_ref(), &server.address(), request("skip", 5)).await;
    let items = collect(stream).await;
    assert_eq!(items.len(), 2, "chunk 0, then the error: {items:?}");
    assert!(items[0].is_ok());
    assert!(matches!(items[1], Err(Error::StreamBroken(_))), "got {:?}", items[1]);
}

/// A stream that ends without a final chunk ends with [`Error::StreamBroken`].
pub async fn missing_final_chunk_breaks_stream(harness: &dyn PlaneHarness) {
    let server = harness.start(TestHandler::new(Script::EndEarly)).await;
    let stream = open(harness.client().as_ref(), &server.address(), request("early", 3)).await;
    let items = collect(stream).await;
    assert_eq!(items.len(), 4, "three chunks, then the error: {items:?}");
    assert!(items[..3].iter().all(Result::is_ok), "{items:?}");
    assert!(matches!(items[3], Err(Error::StreamBroken(_))), "got {:?}", items[3]);
}

/// Dropping the client's stream drops the handler's stream on the server.
pub async fn dropping_stream_cancels_handler(harness: &dyn PlaneHarness) {
    let handler = TestHandler::new(Script::Complete);
    let server = harness.start(handler.clone()).await;
    let mut stream =
        open(harness.client().as_ref(), &server.address(), request("cancel", ENDLESS)).await;
    for _ in 0..3 {
        let chunk = within("a chunk", stream.next()).await;
        assert!(matches!(chunk, Some(Ok(_))), "got {chunk:?}");
    }
    assert_eq!(handler.dropped_early(), 0);
    drop(stream);
    eventually("the handler's stream dropped", || handler.dropped_early() == 1).await;
}

/// Many requests at once through one client all complete, each in order.
pub async fn concurrent_requests_share_one_client(harness: &dyn PlaneHarness) {
    const REQUESTS: usize = 64;
    const CHUNKS: u32 = 20;
    let handler = TestHandler::new(Script::Complete);
    let server = harness.start(handler.clone()).await;
    let client = harness.client();
    let address = server.address();
    let responses = (0..REQUESTS).map(|i| {
        let (client, address) = (Arc::clone(&client), address.clone());
        async move {
            let stream = open(client.as_ref(), &address, request(&format!("many-{i}"), CHUNKS));
            collect(stream.await).await
        }
    });
    for items in within("all responses", join_all(responses)).await {
        assert_complete(&items, CHUNKS);
    }
    assert_eq!(handler.started(), REQUESTS);
}

/// A request to an address where nothing answers fails in `generate` with [`Error::Connect`].
pub async fn unreachable_address_fails_to_connect(harness: &dyn PlaneHarness) {
    let address = harness.unreachable_address().await;
    let client = harness.client();
    match within("generate", client.generate(&address, request("nowhere", 1))).await {
        Err(Error::Connect { .. }) => {}
        Err(other) => panic!("expected Error::Connect, got {other}"),
        Ok(_) => panic!("expected Error::Connect, got a stream"),
    }
}

/// A server that dies mid-stream leaves the client an error item, then the end: never a hang.
pub async fn server_death_ends_stream_with_error(harness: &dyn PlaneHarness) {
    let handler = TestHandler::new(Script::Complete);
    let server = harness.start(handler.clone()).await;
    let mut stream =
        open(harness.client().as_ref(), &server.address(), request("dies", ENDLESS)).await;
    for _ in 0..3 {
        let chunk = within("a chunk", stream.next()).await;
        assert!(matches!(chunk, Some(Ok(_))), "got {chunk:?}");
    }
    server.kill();
    // Chunks already on their way may still arrive; then an error must come.
    let error = within("an error after the server died", async {
        loop {
            match stream.next().await {
                Some(Ok(chunk)) if !super::is_final(&chunk) => {}
                Some(Ok(chunk)) => panic!("a final chunk from a dead server: {chunk:?}"),
                Some(Err(error)) => return error,
                None => panic!("the stream ended without an error"),
            }
        }
    })
    .await;
    assert!(!matches!(error, Error::Connect { .. }), "mid-stream errors are not Connect: {error}");
    let after = within("the end after the error", stream.next()).await;
    assert!(after.is_none(), "the error is the last item, got {after:?}");
}

/// After a server the client has used dies, the next request to it fails in `generate` with
/// [`Error::Connect`] (so the caller turns to another worker), even though the client still
/// held a connection to it.
pub async fn request_to_dead_server_fails_to_connect(harness: &dyn PlaneHarness) {
    let server = harness.start(TestHandler::new(Script::Complete)).await;
    let address = server.address();
    let client = harness.client();
    assert_complete(&collect(open(client.as_ref(), &address, request("before", 2)).await).await, 2);
    server.kill();
    match within("generate", client.generate(&address, request("after", 2))).await {
        Err(Error::Connect { .. }) => {}
        Err(other) => panic!("expected Error::Connect, got {other}"),
        Ok(_) => panic!("expected Error::Connect, got a stream"),
    }
}
