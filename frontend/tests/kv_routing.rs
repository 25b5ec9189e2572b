//! KV-aware routing end to end: scripted workers behind the real TCP request and event planes,
//! found in a real discovery store, publish the KV blocks of each prompt they receive and
//! their load; the frontend in `kv` mode keeps a prefix on the worker that caches it while
//! that worker has room, moves it when the worker reports itself overloaded, and drops a
//! worker that leaves discovery from its index.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use common::*;
use switchyard_frontend::{FrontendConfig, PolicyKind};
use switchyard_proto::worker_event::Event;
use switchyard_proto::{
    FinishReason, GenerateRequest, InstanceRecord, KvEvent, KvStored, LoadReport, Role, kv_event,
};
use switchyard_runtime::discovery::{Discovery, Registration};
use switchyard_runtime::events::{EventHub, EventPublisher, TcpEventConfig, TcpEventSubscriber};
use switchyard_runtime::plane::tcp::{TcpClient, TcpClientConfig, TcpServerConfig};
use switchyard_runtime::store::memory::MemoryStore;
use switchyard_runtime::{ChunkStream, GenerateHandler};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A scripted worker that caches every prompt it receives and says so on the event plane.
struct CachingWorker {
    inner: Arc<ScriptedWorker>,
    hub: EventHub,
    next_event_id: AtomicU64,
}

impl CachingWorker {
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
        let event_id = self.next_event_id.fetch_add(1, Ordering::SeqCst);
        let stored = KvStored { parent_hash: None, block_hashes: request.block_hashes.clone() };
        let kv = KvEvent { event_id, data: Some(kv_event::Data::Stored(stored)) };
        self.hub.publish(Event::Kv(kv)).await.unwrap();
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
    let handler = Arc::new(CachingWorker { inner, hub: hub.clone(), next_event_id: 0.into() });
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

async fn indexed_instances(http: &reqwest::Client, base: &str) -> Option<u32> {
    let text = within(http.get(format!("{base}/metrics")).send()).await.ok()?.text().await.ok()?;
    let prefix = format!("switchyard_frontend_router_indexed_instances{{model=\"{MODEL}\"}} ");
    text.lines().find_map(|line| line.strip_prefix(prefix.as_str())?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_stays_while_there_is_room_and_moves_when_overloaded() -> Result<()> {
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
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let client = Arc::new(TcpClient::new(TcpClientConfig::default()));
    let frontend = tokio::spawn(switchyard_frontend::serve(
        listener,
        config,
        discovery.clone(),
        client,
        shutdown.clone(),
    ));
    let http = reqwest::Client::builder().timeout(WAIT).build()?;
    // Both workers' event streams are open before anything is routed.
    eventually(|| async { workers.iter().all(|w| w.handler.hub.subscribers() > 0) }).await?;

    let prefix =
        "the shared system prompt of this group, long enough to span many blocks: ".repeat(4);
    let first = route(&http, &base, &format!("{prefix} question one"), &workers).await;
    let holder = workers.iter().position(|w| w.id == first).unwrap();
    let other = 1 - holder;

    // Light load on the holder: the prefix stays where it is cached.
    workers[holder].handler.publish_load(2, 1).await;
    for question in ["two", "three", "four", "five"] {
        let to = route(&http, &base, &format!("{prefix} question {question}"), &workers).await;
        assert_eq!(to, first, "a cached prefix goes to the worker holding it while it has room");
    }

    // The holder reports itself full: the same prefix goes elsewhere.
    workers[holder].handler.publish_load(1000, 64).await;
    let mut moved = false;
    for attempt in 0..50 {
        let to = route(&http, &base, &format!("{prefix} question {attempt}"), &workers).await;
        if to == workers[other].id {
            moved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(moved, "an overloaded worker's prefix moves to the other worker");

    // A worker that leaves discovery leaves the index.
    eventually(|| async { indexed_instances(&http, &base).await == Some(2) }).await?;
    let mut workers = workers;
    let gone = workers.swap_remove(holder);
    within(gone.registration.deregister()).await?;
    eventually(|| async { indexed_instances(&http, &base).await == Some(1) }).await?;

    shutdown.cancel();
    within(frontend).await??;
    drop(instances);
    Ok(())
}
