//! The NATS request plane against a real nats-server: the shared plane suite, shutdown and
//! timeouts of the worker side, cancellation when the client's process dies, and a NATS restart
//! in the middle of traffic.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/nats_server.rs"]
mod nats_server;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use nats_server::NatsServer;
use prost::Message as _;
use switchyard_proto::{ErrorKind, FinishReason, GenerateChunk, GenerateRequest};
use switchyard_runtime::plane::conformance::{
    self, PlaneHarness, RunningServer, Script, TestHandler, request,
};
use switchyard_runtime::plane::nats::{
    self, CONTROL_HEADER, NatsClient, NatsClientConfig, NatsListener, NatsServerConfig,
    generate_subject, serve_listener,
};
use switchyard_runtime::{ChunkStream, Error, GenerateHandler, RequestClient, Result};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Generous bounds: these tests check what happens on a loaded machine, never how fast.
const LIMIT: Duration = Duration::from_secs(30);
const SUITE_LIMIT: Duration = Duration::from_secs(300);

async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

/// A subject no one else uses.
fn fresh_subject() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    generate_subject("test", &id[..12]).unwrap()
}

/// A client whose idle timeout is short enough for the suite's step limit.
fn client_config() -> NatsClientConfig {
    NatsClientConfig { idle_timeout: Duration::from_secs(5), ..NatsClientConfig::default() }
}

/// A worker with its own NATS connection on a runtime of its own, so that `kill` drops its
/// connection and tasks at once, as the death of its process would.
struct NatsWorker {
    address: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl NatsWorker {
    async fn start(url: &str, handler: Arc<dyn GenerateHandler>, config: NatsServerConfig) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let address = fresh_subject();
        let (ready_tx, ready_rx) = oneshot::channel();
        let (url, subject) = (url.to_owned(), address.clone());
        runtime.spawn(async move {
            let client = nats::connect(&url).await.expect("the worker connects");
            let listener = NatsListener::bind(client, subject).await.expect("bound");
            let _ = ready_tx.send(());
            serve_listener(listener, handler, CancellationToken::new(), config).await
        });
        within("the worker subscribed", LIMIT, ready_rx).await.expect("the worker task started");
        NatsWorker { address, runtime: Some(runtime) }
    }
}

impl RunningServer for NatsWorker {
    fn address(&self) -> String {
        self.address.clone()
    }

    fn kill(mut self: Box<Self>) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl Drop for NatsWorker {
    fn drop(&mut self) {
        // A runtime may not be dropped from async code; shutting it down in the background may.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

struct NatsHarness {
    url: String,
    client: Arc<NatsClient>,
}

#[async_trait]
impl PlaneHarness for NatsHarness {
    async fn start(&self, handler: Arc<dyn GenerateHandler>) -> Box<dyn RunningServer> {
        Box::new(NatsWorker::start(&self.url, handler, NatsServerConfig::default()).await)
    }

    fn client(&self) -> Arc<dyn RequestClient> {
        self.client.clone()
    }

    async fn unreachable_address(&self) -> String {
        fresh_subject()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_plane_suite() {
    let nats = NatsServer::start();
    let client =
        within("connect", LIMIT, NatsClient::connect(&nats.url(), client_config())).await.unwrap();
    let harness = NatsHarness { url: nats.url(), client: Arc::new(client) };
    within("the plane suite", SUITE_LIMIT, conformance::run_all(&harness)).await;
    assert_eq!(harness.client.pending_requests(), 0, "every request forgotten");
}

#[tokio::test]
async fn connecting_without_a_nats_server_fails_clearly() {
    // A port just bound and released: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("nats://127.0.0.1:{port}");
    match within("connect", LIMIT, NatsClient::connect(&url, client_config())).await {
        Err(Error::Connect { address, reason }) => {
            assert_eq!(address, url);
            assert!(reason.contains("nats-server"), "says what to check: {reason}");
        }
        Err(other) => panic!("expected Error::Connect, got {other}"),
        Ok(_) => panic!("connected to nothing"),
    }
}

/// A worker on this test's runtime, stopped by its token and owned by `tracker`.
async fn start_local_worker(
    tracker: &TaskTracker,
    url: &str,
    handler: Arc<dyn GenerateHandler>,
    config: NatsServerConfig,
) -> (String, CancellationToken, tokio::task::JoinHandle<Result<()>>) {
    let client = within("worker connect", LIMIT, nats::connect(url)).await.unwrap();
    let subject = fresh_subject();
    let listener =
        within("bind", LIMIT, NatsListener::bind(client, subject.clone())).await.unwrap();
    let shutdown = CancellationToken::new();
    let served = tracker.spawn(serve_listener(listener, handler, shutdown.clone(), config));
    (subject, shutdown, served)
}

async fn next(stream: &mut ChunkStream) -> Option<Result<GenerateChunk>> {
    within("an item", LIMIT, stream.next()).await
}

async fn open(client: &NatsClient, subject: &str, request: GenerateRequest) -> ChunkStream {
    within("generate", LIMIT, client.generate(subject, request)).await.unwrap()
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish_and_refuses_new_ones() {
    const CHUNKS: u32 = 200;
    let nats = NatsServer::start();
    let tracker = TaskTracker::new();
    let handler = TestHandler::new(Script::Complete);
    let (subject, shutdown, served) =
        start_local_worker(&tracker, &nats.url(), handler.clone(), NatsServerConfig::default())
            .await;
    let client =
        within("connect", LIMIT, NatsClient::connect(&nats.url(), client_config())).await.unwrap();
    let mut stream = open(&client, &subject, request("drain", CHUNKS)).await;
    assert!(matches!(next(&mut stream).await, Some(Ok(_))));

    shutdown.cancel();
    // Once the worker has unsubscribed, NATS itself says nobody listens: the caller turns to
    // another worker at once.
    within("a refusal", LIMIT, async {
        loop {
            match client.generate(&subject, request("late", 1)).await {
                Err(Error::Connect { .. }) => return,
                Err(other) => panic!("expected Error::Connect during shutdown, got {other}"),
                // Taken before the unsubscribe reached NATS; served in the grace like the rest.
                Ok(late) => drop(late),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;

    let mut last = None;
    while let Some(item) = next(&mut stream).await {
        last = Some(item.expect("in-flight chunks keep coming during the grace"));
    }
    let last = last.expect("more chunks after shutdown began");
    assert_eq!((last.seq, last.finish_reason()), (u64::from(CHUNKS) - 1, FinishReason::Length));
    within("serve ends", LIMIT, served).await.unwrap().expect("serve ends cleanly");
}

#[tokio::test]
async fn requests_past_the_grace_end_with_a_shutting_down_chunk() {
    let nats = NatsServer::start();
    let tracker = TaskTracker::new();
    let handler = TestHandler::new(Script::Complete);
    let config = NatsServerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..NatsServerConfig::default()
    };
    let (subject, shutdown, served) =
        start_local_worker(&tracker, &nats.url(), handler.clone(), config).await;
    let client =
        within("connect", LIMIT, NatsClient::connect(&nats.url(), client_config())).await.unwrap();
    let mut stream = open(&client, &subject, request("long", 1_000_000)).await;
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
    assert_eq!(last.error.unwrap().kind(), ErrorKind::ShuttingDown);
    assert!(next(&mut stream).await.is_none(), "the shutdown chunk is the last");
    within("serve ends", LIMIT, served).await.unwrap().expect("serve ends cleanly");
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

async fn eventually(what: &str, done: impl Fn() -> bool) {
    within(what, LIMIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_silent_but_alive_worker_times_out_and_is_cancelled() {
    let nats = NatsServer::start();
    let tracker = TaskTracker::new();
    let dropped = Arc::new(AtomicBool::new(false));
    let handler = Arc::new(SilentHandler { dropped: Arc::clone(&dropped) });
    let config = NatsServerConfig {
        heartbeat_interval: Duration::from_millis(100),
        ..NatsServerConfig::default()
    };
    let (subject, shutdown, _served) =
        start_local_worker(&tracker, &nats.url(), handler, config).await;
    let config = NatsClientConfig { chunk_timeout: Duration::from_secs(2), ..client_config() };
    let client = within("connect", LIMIT, NatsClient::connect(&nats.url(), config)).await.unwrap();
    let mut stream = open(&client, &subject, request("silent", 5)).await;
    assert!(matches!(next(&mut stream).await, Some(Ok(_))));
    // Heartbeats keep the idle timeout (5 s) away; the chunk timeout (2 s) ends the wait.
    assert!(matches!(next(&mut stream).await, Some(Err(Error::Timeout { .. }))));
    assert!(next(&mut stream).await.is_none(), "the timeout is the last item");
    eventually("the worker's stream dropped after the client gave up", || {
        dropped.load(Ordering::SeqCst)
    })
    .await;
    shutdown.cancel();
}

#[tokio::test]
async fn the_death_of_the_client_process_cancels_its_requests() {
    let nats = NatsServer::start();
    let tracker = TaskTracker::new();
    let handler = TestHandler::new(Script::Complete);
    let (subject, shutdown, _served) =
        start_local_worker(&tracker, &nats.url(), handler.clone(), NatsServerConfig::default())
            .await;
    // The client lives on a runtime of its own, so it can die without sending a cancel.
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (reading_tx, reading_rx) = oneshot::channel();
    let url = nats.url();
    runtime.spawn(async move {
        let client = NatsClient::connect(&url, client_config()).await.unwrap();
        let mut stream = client.generate(&subject, request("orphan", 1_000_000)).await.unwrap();
        for _ in 0..3 {
            assert!(matches!(stream.next().await, Some(Ok(_))));
        }
        let _ = reading_tx.send(());
        // Hold the stream (no cancel) until the runtime dies.
        std::future::pending::<()>().await;
        drop((stream, client));
    });
    within("the client reading", LIMIT, reading_rx).await.unwrap();
    assert_eq!(handler.dropped_early(), 0);
    runtime.shutdown_background();
    eventually("the orphaned request cancelled on the worker", || handler.dropped_early() == 1)
        .await;
    shutdown.cancel();
}

#[tokio::test]
async fn a_malformed_request_gets_an_invalid_request_chunk() {
    let nats = NatsServer::start();
    let tracker = TaskTracker::new();
    let handler = TestHandler::new(Script::Complete);
    let (subject, shutdown, _served) =
        start_local_worker(&tracker, &nats.url(), handler.clone(), NatsServerConfig::default())
            .await;
    let raw = within("connect", LIMIT, nats::connect(&nats.url())).await.unwrap();
    let inbox = raw.new_inbox();
    let mut replies = within("subscribe", LIMIT, raw.subscribe(inbox.clone())).await.unwrap();
    let garbage = Bytes::from_static(&[0xff, 0xff, 0xff]);
    within("publish", LIMIT, raw.publish_with_reply(subject, inbox, garbage)).await.unwrap();
    let accepted = within("accepted", LIMIT, replies.next()).await.unwrap();
    let control = accepted.headers.as_ref().and_then(|h| h.get(CONTROL_HEADER));
    assert_eq!(control.map(|v| v.as_str()), Some("accepted"));
    let reply = within("the error chunk", LIMIT, replies.next()).await.unwrap();
    let chunk = GenerateChunk::decode(reply.payload).unwrap();
    assert_eq!(chunk.error.unwrap().kind(), ErrorKind::InvalidRequest);
    assert_eq!(handler.started(), 0, "the handler never saw it");
    shutdown.cancel();
}

#[tokio::test]
async fn a_cancel_that_overtakes_its_request_still_stops_it() {
    let nats = NatsServer::start();
    let tracker = TaskTracker::new();
    let handler = TestHandler::new(Script::Complete);
    let (subject, shutdown, _served) =
        start_local_worker(&tracker, &nats.url(), handler.clone(), NatsServerConfig::default())
            .await;
    let raw = within("connect", LIMIT, nats::connect(&nats.url())).await.unwrap();
    let inbox = raw.new_inbox();
    let cancel = format!("{subject}.cancel");
    within("cancel", LIMIT, raw.publish(cancel, Bytes::from(inbox.clone()))).await.unwrap();
    let payload = Bytes::from(request("overtaken", 1_000_000).encode_to_vec());
    within("publish", LIMIT, raw.publish_with_reply(subject, inbox, payload)).await.unwrap();
    within("flush", LIMIT, raw.flush()).await.unwrap();
    // The worker may read either first: it drops the request unstarted, or starts and stops it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    eventually("no request left running", || handler.started() == handler.dropped_early()).await;
    assert_eq!(handler.finished(), 0);
    shutdown.cancel();
}

/// Reads `stream` to its end: `Ok(chunks)` when it completed, the error otherwise.
async fn drain(mut stream: ChunkStream) -> std::result::Result<usize, Error> {
    let mut chunks = 0;
    while let Some(item) = stream.next().await {
        let chunk = item?;
        chunks += 1;
        if chunk.finish_reason() != FinishReason::Unspecified {
            return Ok(chunks);
        }
    }
    Err(Error::StreamBroken("ended without a final chunk".to_owned()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_ends_or_completes_in_flight_requests_and_new_ones_succeed_soon() {
    const IN_FLIGHT: usize = 8;
    let mut nats = NatsServer::start();
    let handler = TestHandler::new(Script::Complete);
    let worker = NatsWorker::start(&nats.url(), handler.clone(), NatsServerConfig::default()).await;
    let subject = worker.address.clone();
    let client = Arc::new(
        within("connect", LIMIT, NatsClient::connect(&nats.url(), client_config())).await.unwrap(),
    );
    let tracker = TaskTracker::new();
    let mut in_flight = Vec::new();
    for i in 0..IN_FLIGHT {
        let mut stream = open(&client, &subject, request(&format!("busy-{i}"), 400)).await;
        assert!(matches!(next(&mut stream).await, Some(Ok(_))));
        in_flight.push(tracker.spawn(drain(stream)));
    }

    nats.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart();
    let back = Instant::now();

    // New requests are tried while the old ones are still ending.
    let probe = {
        let (client, subject) = (Arc::clone(&client), subject.clone());
        tracker.spawn(async move {
            loop {
                let sent =
                    tokio::time::timeout(LIMIT, client.generate(&subject, request("after", 5)));
                if let Ok(Ok(stream)) = sent.await
                    && drain(stream).await.is_ok()
                {
                    return back.elapsed();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut outcomes = Vec::new();
    for handle in in_flight {
        let outcome = within("an in-flight request ends", LIMIT, handle).await.unwrap();
        outcomes.push(outcome.map_err(|e| e.to_string()));
    }
    let ended_by_error = outcomes.iter().filter(|o| o.is_err()).count();
    eprintln!("in-flight across the restart: {outcomes:?}");
    let first_success = within("a request succeeds after the restart", LIMIT, probe).await.unwrap();
    eprintln!(
        "NATS restart: {ended_by_error}/{IN_FLIGHT} in-flight requests ended with an error, the \
         rest completed; first new request succeeded {first_success:?} after NATS was back"
    );
    assert!(
        first_success < Duration::from_secs(5),
        "new requests succeed within 5 s of NATS coming back, took {first_success:?}"
    );
    for i in 0..10 {
        let stream = open(&client, &subject, request(&format!("steady-{i}"), 5)).await;
        assert_eq!(within("a steady request", LIMIT, drain(stream)).await.unwrap(), 5);
    }
    drop(worker);
}
