//! The TCP request plane: the shared plane suite, plus shutdown and timeouts of the TCP server
//! and client.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use switchyard_proto::{ErrorKind, FinishReason, GenerateChunk, GenerateRequest};
use switchyard_runtime::plane::conformance::{
    self, PlaneHarness, RunningServer, Script, TestHandler, request,
};
use switchyard_runtime::plane::tcp::{
    TcpClient, TcpClientConfig, TcpServerConfig, serve, serve_with_config,
};
use switchyard_runtime::{ChunkStream, Error, GenerateHandler, RequestClient, Result};
use tokio::net::TcpListener;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const LIMIT: Duration = Duration::from_secs(30);

/// Runs each server on a runtime of its own, so that `kill` can drop every task and socket of
/// the server at once, as the death of its process would.
struct TcpHarness {
    client: Arc<TcpClient>,
}

struct TcpServer {
    address: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl RunningServer for TcpServer {
    fn address(&self) -> String {
        self.address.clone()
    }

    fn kill(mut self: Box<Self>) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        // A runtime may not be dropped from async code; shutting it down in the background may.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[async_trait]
impl PlaneHarness for TcpHarness {
    async fn start(&self, handler: Arc<dyn GenerateHandler>) -> Box<dyn RunningServer> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        runtime.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            serve(listener, handler, CancellationToken::new()).await
        });
        Box::new(TcpServer { address, runtime: Some(runtime) })
    }

    fn client(&self) -> Arc<dyn RequestClient> {
        self.client.clone()
    }

    async fn unreachable_address(&self) -> String {
        // A port just bound and released: nothing listens there.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().to_string()
    }
}

fn harness() -> TcpHarness {
    TcpHarness { client: Arc::new(TcpClient::new(TcpClientConfig::default())) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_plane_suite() {
    let harness = harness();
    timeout(Duration::from_secs(180), conformance::run_all(&harness)).await.expect("in time");
}

/// A server on this test's runtime, stopped by its token and owned by `tracker`.
async fn start_server(
    tracker: &TaskTracker,
    handler: Arc<dyn GenerateHandler>,
    config: TcpServerConfig,
) -> (String, CancellationToken, tokio::task::JoinHandle<Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let shutdown = CancellationToken::new();
    let served = tracker.spawn(serve_with_config(listener, handler, shutdown.clone(), config));
    (address, shutdown, served)
}

async fn next(stream: &mut ChunkStream) -> Option<Result<GenerateChunk>> {
    timeout(LIMIT, stream.next()).await.expect("an item in time")
}

#[tokio::test]
async fn shutdown_lets_in_flight_streams_finish_and_refuses_new_ones() {
    const CHUNKS: u32 = 400;
    let tracker = TaskTracker::new();
    let handler = TestHandler::new(Script::Complete);
    let (address, shutdown, served) =
        start_server(&tracker, handler.clone(), TcpServerConfig::default()).await;
    let client = TcpClient::new(TcpClientConfig::default());
    let mut stream =
        timeout(LIMIT, client.generate(&address, request("drain", CHUNKS))).await.unwrap().unwrap();
    assert!(matches!(next(&mut stream).await, Some(Ok(_))));

    shutdown.cancel();
    // While the old stream drains, a new connection is refused at once (not parked in the
    // listen backlog until it times out), so its caller turns to another worker.
    let fresh = TcpClient::new(TcpClientConfig::default());
    match timeout(LIMIT, fresh.generate(&address, request("late", 1))).await.unwrap() {
        Err(Error::Connect { .. }) => {}
        Err(other) => panic!("expected Error::Connect during shutdown, got {other}"),
        Ok(_) => panic!("a stopping server took a new request"),
    }

    let mut last = None;
    while let Some(item) = next(&mut stream).await {
        last = Some(item.expect("in-flight chunks keep coming during the grace"));
    }
    let last = last.expect("more chunks after shutdown began");
    assert_eq!((last.seq, last.finish_reason()), (u64::from(CHUNKS) - 1, FinishReason::Length));
    timeout(LIMIT, served).await.unwrap().unwrap().expect("serve ends cleanly");
    assert_eq!(handler.dropped_early(), 0, "nothing was cut short");
}

#[tokio::test]
async fn streams_past_the_grace_end_with_a_shutting_down_chunk() {
    let tracker = TaskTracker::new();
    let handler = TestHandler::new(Script::Complete);
    let config = TcpServerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..TcpServerConfig::default()
    };
    let (address, shutdown, served) = start_server(&tracker, handler.clone(), config).await;
    let client = TcpClient::new(TcpClientConfig::default());
    let mut stream = timeout(LIMIT, client.generate(&address, request("long", 1_000_000)))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(next(&mut stream).await, Some(Ok(_))));

    shutdown.cancel();
    let mut expected_seq = 1;
    let last = loop {
        let chunk = next(&mut stream).await.expect("a final chunk").expect("no transport error");
        assert_eq!(chunk.seq, expected_seq, "the shutdown chunk continues the sequence");
        expected_seq += 1;
        if chunk.error.is_some() {
            break chunk;
        }
    };
    let error = last.error.expect("the error");
    assert_eq!(error.kind(), ErrorKind::ShuttingDown, "the caller may retry elsewhere");
    assert!(next(&mut stream).await.is_none(), "the shutdown chunk is the last");
    timeout(LIMIT, served).await.unwrap().unwrap().expect("serve ends cleanly");
    assert_eq!(handler.dropped_early(), 1, "the handler's stream was cancelled");
}

/// Sends one chunk, then nothing, and says when its stream is dropped.
struct SilentHandler {
    dropped: Arc<AtomicBool>,
}

struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[async_trait]
impl GenerateHandler for SilentHandler {
    async fn generate(&self, _request: GenerateRequest) -> ChunkStream {
        let flag = DropFlag(Arc::clone(&self.dropped));
        let first = futures::stream::iter([Ok(GenerateChunk::default())]);
        let silence = futures::stream::pending().map(move |item| {
            let _held = &flag;
            item
        });
        Box::pin(first.chain(silence))
    }
}

#[tokio::test]
async fn a_silent_worker_times_out_and_is_cancelled() {
    let tracker = TaskTracker::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let handler = Arc::new(SilentHandler { dropped: Arc::clone(&dropped) });
    let (address, shutdown, _served) =
        start_server(&tracker, handler, TcpServerConfig::default()).await;
    let config =
        TcpClientConfig { chunk_timeout: Duration::from_millis(500), ..Default::default() };
    let client = TcpClient::new(config);
    let mut stream =
        timeout(LIMIT, client.generate(&address, request("silent", 5))).await.unwrap().unwrap();
    assert!(matches!(next(&mut stream).await, Some(Ok(_))));
    assert!(matches!(next(&mut stream).await, Some(Err(Error::Timeout { .. }))));
    assert!(next(&mut stream).await.is_none(), "the timeout is the last item");
    timeout(LIMIT, async {
        while !dropped.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the worker's stream is dropped after the client gave up");
    shutdown.cancel();
}
