//! KV-aware routing end to end: scripted workers behind the real TCP request and event planes,
//! found in a real discovery store, publish the KV blocks of each prompt they receive and
//! their load; the frontend in `kv` mode keeps a prefix on the worker that caches it while
//! that worker has room, moves it when the worker reports itself overloaded, and drops a
//! worker that leaves discovery from its index.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use common::*;
use futures::StreamExt;
use switchyard_frontend::{FrontendConfig, PolicyKind};
use switchyard_proto::worker_event::Event;
use switchyard_proto::{
    FinishReason, GenerateRequest, InstanceRecord, KvEvent, KvSnapshot, KvStored, LoadReport, Role,
    kv_event,
};
use switchyard_runtime::discovery::{Discovery, Registration};
use switchyard_runtime::events::{EventHub, EventPublisher, TcpEventConfig, TcpEventSubscriber};
use switchyard_runtime::plane::tcp::TcpServerConfig;
use switchyard_runtime::store::memory::MemoryStore;
use switchyard_runtime::{ChunkStream, GenerateHandler};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A scripted worker that caches every prompt it receives and says so on the event plane,
/// and answers snapshot requests with what it caches.
struct CachingWorker {
    inner: Arc<ScriptedWorker>,
    hub: EventHub,
    next_event_id: AtomicU64,
    cached: Mutex<Vec<u64>>,
}

impl CachingWorker {
    fn next_event_id(&self) -> u64 {
        self.next_event_id.fetch_add(1, Ordering::SeqCst)
    }

    async fn publish_kv(&self, event_id: u64, data: kv_event::Data) {
        let kv = KvEvent { event_id, data: Some(data) };
        self.hub.publish(Event::Kv(kv)).await.unwrap();
    }

    /// Publishes a snapshot of `cached` for each request, until the hub's requests end.
    async fn answer_snapshots(self: Arc<Self>) {
        let mut requests = self.hub.snapshot_requests().await.unwrap();
        while requests.next().await.is_some() {
            let blocks = self.cached.lock().unwrap().clone();
            let chains = vec![KvStored { parent_hash: None, block_hashes: blocks }];
            let event_id = self.next_event_id();
            self.publish_kv(event_id, kv_event::Data::Snapshot(KvSnapshot { chains })).await;
        }
    }

    async fn publish_load(&self, active_kv_blocks: u64, active_requests: u32) {
        let load = LoadReport {
            active_requests,
            active_kv_blocks,
            total_kv_blocks: 1024,
            ..LoadReport::default()
        };
        self.hub.publish(Event::Load(load)).await.unwrap();
    }
}

#[async_trait]
impl GenerateHandler for CachingWorker {
    async fn generate(&self, request: GenerateRequest) -> ChunkStream {
        self.cached.lock().unwrap().extend(&request.block_hashes);
        let stored = KvStored { parent_hash: None, block_hashes: request.block_hashes.clone() };
        self.publish_kv(self.next_event_id(), kv_event::Data::Stored(stored)).await;
        self.inner.generate(request).await
    }
}

struct Worker {
    id: String,
    handler: Arc<CachingWorker>,
    registration: Registration,
}

async fn start_worker(id: &str, discovery: &Discovery, shutdown: &CancellationToken) -> Worker {
    let inner = ScriptedWorker::new(Script::Tokens {
        chunks: vec![encode("fine", false)],
        finish: FinishReason::Stop,
    });
    let hub = EventHub::new(id);
    let handler = Arc::new(CachingWorker {
        inner,
        hub: hub.clone(),
        next_event_id: 0.into(),
        cached: Mutex::default(),
    });
    tokio::spawn(handler.clone().answer_snapshots());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(switchyard_runtime::plane::tcp::serve_with_events(
        listener,
        handler.clone(),
        hub,
        shutdown.clone(),
        TcpServerConfig::default(),
    ));
    let record = InstanceRecord {
        instance_id: id.to_owned(),
        namespace: "test".to_owned(),
        role: Role::Aggregated.into(),
        address,
        card: Some(card(MODEL)),
        transport: "tcp".to_owned(),
        ..Default::default()
    };
    let registration =
        within(discovery.register(record, Duration::from_secs(5), shutdown.clone())).await.unwrap();
    Worker { id: id.to_owned(), handler, registration }
}

/// Sends `content` as a chat request; the worker that received it.
async fn route(http: &reqwest::Client, base: &str, content: &str, workers: &[Worker]) -> String {
    let before: Vec<usize> = workers.iter().map(|w| w.handler.inner.received()).collect();
    let response =
        within(http.post(format!("{base}/v1/chat/completions")).json(&chat_body(content)).send())
            .await
            .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    within(response.bytes()).await.unwrap();
    let landed: Vec<&Worker> = workers
        .iter()
        .zip(before)
        .filter(|(w, before)| w.handler.inner.received() > *before)
        .map(|(w, _)| w)
        .collect();
    assert_eq!(landed.len(), 1, "one worker got the request");
    landed[0].id.clone()
}

/// The value of the first sample of `/metrics` whose line starts with `prefix`.
async fn metric(http: &reqwest::Client, base: &str, prefix: &str) -> Option<f64> {
    let text = within(http.get(format!("{base}/metrics")).send()).await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(prefix)?.trim().parse().ok())
}

async fn indexed_instances(http: &reqwest::Client, base: &str) -> Option<u32> {
    let prefix = format!("switchyard_frontend_router_indexed_instances{{model=\"{MODEL}\"}} ");
    metric(http, base, &prefix).await.map(|n| n as u32)
}

/// Two caching workers in a memory store behind a `kv` frontend that follows their events.
struct Setup {
    shutdown: CancellationToken,
    workers: Vec<Worker>,
    instances: switchyard_runtime::InstanceWatch,
    frontend: FrontendTask,
    http: reqwest::Client,
    base: String,
}

impl Setup {
    async fn start() -> Result<Setup> {
        let discovery = Discovery::new(Arc::new(MemoryStore::new()), "test");
        let shutdown = CancellationToken::new();
        let workers = vec![
            start_worker("w0", &discovery, &shutdown).await,
            start_worker("w1", &discovery, &shutdown).await,
        ];
        let instances = discovery.watch_instances(shutdown.child_token()).await?;
        let subscriber = TcpEventSubscriber::new(instances.subscribe(), TcpEventConfig::default());
        let config = FrontendConfig {
            router_mode: PolicyKind::Kv,
            events: Some(Arc::new(subscriber)),
            ..FrontendConfig::default()
        };
        let (base, frontend) = start_frontend(config, &discovery, &shutdown).await?;
        let http = reqwest::Client::builder().timeout(WAIT).build()?;
        // Both workers' event streams are open before anything is routed.
        eventually(|| async { workers.iter().all(|w| w.handler.hub.subscribers() > 0) }).await?;
        Ok(Setup { shutdown, workers, instances, frontend, http, base })
    }

    async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        within(self.frontend).await??;
        drop(self.instances);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_stays_while_there_is_room_and_moves_when_overloaded() -> Result<()> {
    let setup = Setup::start().await?;
    let (http, base, workers) = (&setup.http, setup.base.as_str(), &setup.workers);

    let prefix =
        "the shared system prompt of this group, long enough to span many blocks: ".repeat(4);
    let first = route(http, base, &format!("{prefix} question one"), workers).await;
    let holder = workers.iter().position(|w| w.id == first).unwrap();
    let other = 1 - holder;

    // Light load on the holder: the prefix stays where it is cached.
    workers[holder].handler.publish_load(2, 1).await;
    for question in ["two", "three", "four", "five"] {
        let to = route(http, base, &format!("{prefix} question {question}"), workers).await;
        assert_eq!(to, first, "a cached prefix goes to the worker holding it while it has room");
    }

    // The holder reports itself full: the same prefix goes elsewhere.
    workers[holder].handler.publish_load(1000, 64).await;
    let mut moved = false;
    for attempt in 0..50 {
        let to = route(http, base, &format!("{prefix} question {attempt}"), workers).await;
        if to == workers[other].id {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(moved, "an overloaded worker's prefix moves to the other worker");

    // A worker that leaves discovery leaves the index.
    eventually(|| async { indexed_instances(http, base).await == Some(2) }).await?;
    let mut setup = setup;
    let gone = setup.workers.swap_remove(holder);
    within(gone.registration.deregister()).await?;
    eventually(|| async { indexed_instances(&setup.http, &setup.base).await == Some(1) }).await?;
    setup.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_event_ids_brings_a_snapshot_that_the_index_follows() -> Result<()> {
    let setup = Setup::start().await?;
    let (http, base, workers) = (&setup.http, setup.base.as_str(), &setup.workers);
    const APPLIED: &str = "switchyard_frontend_router_snapshots_applied_total ";
    const OVERLAP: &str = "switchyard_frontend_router_overlap_blocks_sum ";
    // Each event stream opened with a snapshot (empty so far).
    eventually(|| async { metric(http, base, APPLIED).await == Some(2.0) }).await?;

    let prompt = "a prompt only one worker computed, over several blocks of tokens".repeat(3);
    let first = route(http, base, &prompt, workers).await;
    let holder = workers.iter().position(|w| w.id == first).unwrap();
    let (holder, other) = (&workers[holder], &workers[1 - holder]);
    let hashes = holder.handler.inner.last_request().block_hashes;
    assert!(hashes.len() > 4, "{} blocks", hashes.len());

    // The other worker comes to hold the prompt too, but the event saying so is lost: the
    // next one arrives with a gap in ids, and only the snapshot it brings tells the router.
    other.handler.cached.lock().unwrap().extend(&hashes);
    let lost = other.handler.next_event_id() + 1;
    other.handler.next_event_id.store(lost + 1, Ordering::SeqCst);
    let unrelated = KvStored { parent_hash: None, block_hashes: vec![7] };
    other.handler.publish_kv(lost, kv_event::Data::Stored(unrelated)).await;
    eventually(|| async { metric(http, base, APPLIED).await == Some(3.0) }).await?;

    // With the first holder busy, the prompt goes to the other worker and finds it cached.
    holder.handler.publish_load(1000, 64).await;
    let overlap_before = metric(http, base, OVERLAP).await.unwrap_or(0.0);
    let mut landed = false;
    for _ in 0..50 {
        if route(http, base, &prompt, workers).await == other.id {
            landed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(landed, "the busy holder's prompt moves to the other worker");
    let overlap = metric(http, base, OVERLAP).await.unwrap_or(0.0) - overlap_before;
    assert!(overlap >= hashes.len() as f64, "overlap {overlap} of {} blocks", hashes.len());
    setup.stop().await
}
