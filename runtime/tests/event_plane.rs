//! The event plane against real servers: NATS mode through a real nats-server (namespaces kept
//! apart, a NATS restart survived), TCP mode through real gRPC workers found in discovery
//! (streams opened per instance, reopened after a worker restart, closed when the instance
//! leaves), and the pump from an engine's KV events and load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/nats_server.rs"]
mod nats_server;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nats_server::NatsServer;
use switchyard_proto::worker_event::Event;
use switchyard_proto::{InstanceRecord, KvEvent, KvStored, LoadReport, WorkerEvent, kv_event};
use switchyard_runtime::events::{
    EngineEvents, EventHub, EventPublisher, EventStream, EventSubscriber, LoadReporting,
    NatsEventPublisher, NatsEventSubscriber, TcpEventConfig, TcpEventSubscriber,
    publish_engine_events,
};
use switchyard_runtime::plane::conformance::{Script, TestHandler};
use switchyard_runtime::plane::nats;
use switchyard_runtime::plane::tcp::{TcpServerConfig, serve_with_events};
use switchyard_runtime::store::memory::MemoryStore;
use switchyard_runtime::{Discovery, Registration};
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Generous bounds: these tests check what happens on a loaded machine, never how fast.
const LIMIT: Duration = Duration::from_secs(30);

async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not done within {limit:?}"),
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

fn kv(event_id: u64, block: u64) -> Event {
    Event::Kv(KvEvent {
        event_id,
        data: Some(kv_event::Data::Stored(KvStored {
            parent_hash: None,
            block_hashes: vec![block],
        })),
    })
}

fn load(active: u32) -> Event {
    Event::Load(LoadReport { active_requests: active, ..LoadReport::default() })
}

async fn next_event(events: &mut EventStream) -> WorkerEvent {
    within("an event", LIMIT, events.next()).await.expect("the event stream goes on")
}

#[tokio::test]
async fn nats_events_reach_the_subscribers_of_their_namespace_only() {
    let nats = NatsServer::start();
    let client = within("connect", LIMIT, nats::connect(&nats.url())).await.unwrap();
    let subscriber = NatsEventSubscriber::new(client.clone(), "a").unwrap();
    let mut events = within("subscribe", LIMIT, subscriber.subscribe()).await.unwrap();
    let w1 = NatsEventPublisher::new(client.clone(), "a", "w1").unwrap();
    let w2 = NatsEventPublisher::new(client.clone(), "a", "w2").unwrap();
    let other = NatsEventPublisher::new(client.clone(), "b", "w3").unwrap();
    assert!(NatsEventPublisher::new(client.clone(), "a", "bad.id").is_err());

    // One connection publishes all three, so NATS keeps their order.
    within("publish", LIMIT, other.publish(kv(0, 99))).await.unwrap();
    within("publish", LIMIT, w1.publish(kv(0, 7))).await.unwrap();
    within("publish", LIMIT, w2.publish(load(3))).await.unwrap();

    let first = next_event(&mut events).await;
    assert_eq!(first.instance_id, "w1", "namespace b's event is not seen: {first:?}");
    assert_eq!(first.event, Some(kv(0, 7)));
    let second = next_event(&mut events).await;
    assert_eq!(second.instance_id, "w2");
    assert_eq!(second.event, Some(load(3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routers_snapshot_request_reaches_that_worker_only_over_nats() {
    let nats = NatsServer::start();
    let client = within("connect", LIMIT, nats::connect(&nats.url())).await.unwrap();
    let w1 = NatsEventPublisher::new(client.clone(), "ns", "w1").unwrap();
    let w2 = NatsEventPublisher::new(client.clone(), "ns", "w2").unwrap();
    let mut asked_w1 = within("listen", LIMIT, w1.snapshot_requests()).await.unwrap();
    let mut asked_w2 = within("listen", LIMIT, w2.snapshot_requests()).await.unwrap();
    let router = NatsEventSubscriber::new(client, "ns").unwrap();
    within("ask", LIMIT, router.request_snapshot("w1")).await.unwrap();
    within("w1 is asked", LIMIT, asked_w1.next()).await.expect("a request");
    let w2_asked = tokio::time::timeout(Duration::from_millis(200), asked_w2.next()).await;
    assert!(w2_asked.is_err(), "w2 was not asked");
    assert!(router.request_snapshot("not.a.token").await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_events_flow_again_after_a_nats_restart() {
    let mut nats = NatsServer::start();
    let publisher_client = within("connect", LIMIT, nats::connect(&nats.url())).await.unwrap();
    let subscriber_client = within("connect", LIMIT, nats::connect(&nats.url())).await.unwrap();
    let subscriber = NatsEventSubscriber::new(subscriber_client, "ns").unwrap();
    let mut events = within("subscribe", LIMIT, subscriber.subscribe()).await.unwrap();
    let publisher = NatsEventPublisher::new(publisher_client, "ns", "w1").unwrap();
    within("publish", LIMIT, publisher.publish(load(1))).await.unwrap();
    assert_eq!(next_event(&mut events).await.event, Some(load(1)));

    nats.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart();
    let back = Instant::now();
    // Publish until one gets through both reconnected clients.
    let mut load_value = 100;
    let received = within("an event after the restart", LIMIT, async {
        loop {
            load_value += 1;
            // Errors while the publisher reconnects are expected; the pump logs and goes on.
            let _ = publisher.publish(load(load_value)).await;
            if let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(200), events.next()).await
            {
                return event;
            }
        }
    })
    .await;
    eprintln!("NATS event plane: events flowed again {:?} after NATS was back", back.elapsed());
    assert_eq!(received.instance_id, "w1");
    assert!(matches!(received.event, Some(Event::Load(_))));
}

/// A gRPC worker serving events from its hub, registered in discovery.
struct TcpWorker {
    id: String,
    address: SocketAddr,
    hub: EventHub,
    shutdown: CancellationToken,
    served: tokio::task::JoinHandle<switchyard_runtime::Result<()>>,
}

impl TcpWorker {
    async fn start(tracker: &TaskTracker, id: &str, address: SocketAddr, hub: EventHub) -> Self {
        let listener = within("bind", LIMIT, TcpListener::bind(address)).await.unwrap();
        let address = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let handler = TestHandler::new(Script::Complete);
        let served = tracker.spawn(serve_with_events(
            listener,
            handler,
            hub.clone(),
            shutdown.clone(),
            TcpServerConfig::default(),
        ));
        TcpWorker { id: id.to_owned(), address, hub, shutdown, served }
    }

    async fn register(&self, discovery: &Discovery) -> Registration {
        let record = InstanceRecord {
            instance_id: self.id.clone(),
            namespace: discovery.namespace().to_owned(),
            address: self.address.to_string(),
            transport: "tcp".to_owned(),
            ..InstanceRecord::default()
        };
        let registering =
            discovery.register(record, Duration::from_secs(10), CancellationToken::new());
        within("register", LIMIT, registering).await.unwrap()
    }

    async fn stop(self) -> EventHub {
        self.shutdown.cancel();
        within("the worker stops", LIMIT, self.served).await.unwrap().unwrap();
        self.hub
    }
}

/// Publishes on `hub` until `events` yields an event of `hub`'s worker (the subscriber may not
/// have opened the stream yet, or be reopening it).
async fn publish_until_seen(hub: &EventHub, events: &mut EventStream, block: u64) -> WorkerEvent {
    within("an event through the subscriber", LIMIT, async {
        loop {
            hub.publish(kv(block, block)).await.unwrap();
            if let Ok(Some(event)) =
                tokio::time::timeout(Duration::from_millis(100), events.next()).await
                && event.event == Some(kv(block, block))
            {
                return event;
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_events_follow_the_instances_in_discovery() {
    let tracker = TaskTracker::new();
    let discovery = Discovery::new(Arc::new(MemoryStore::new()), "ns");
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let w1 = TcpWorker::start(&tracker, "w1", any_port, EventHub::new("w1")).await;
    let w2 = TcpWorker::start(&tracker, "w2", any_port, EventHub::new("w2")).await;
    let _r1 = w1.register(&discovery).await;
    let r2 = w2.register(&discovery).await;

    let stop_watch = CancellationToken::new();
    let watch =
        within("watch", LIMIT, discovery.watch_instances(stop_watch.clone())).await.unwrap();
    let subscriber = TcpEventSubscriber::new(watch.subscribe(), TcpEventConfig::default());
    let mut events = within("subscribe", LIMIT, subscriber.subscribe()).await.unwrap();
    eventually("a stream open to each worker", || {
        w1.hub.subscribers() == 1 && w2.hub.subscribers() == 1
    })
    .await;

    w1.hub.publish(kv(0, 11)).await.unwrap();
    w2.hub.publish(load(5)).await.unwrap();
    let mut seen = [next_event(&mut events).await, next_event(&mut events).await];
    seen.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
    assert_eq!(seen[0].instance_id, "w1");
    assert_eq!(seen[0].event, Some(kv(0, 11)));
    assert_eq!(seen[1].instance_id, "w2");
    assert_eq!(seen[1].event, Some(load(5)));

    // A worker restarted on the same address: the subscriber reopens its stream.
    let address = w1.address;
    let hub = w1.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let restarted = Instant::now();
    let w1 = TcpWorker::start(&tracker, "w1", address, hub).await;
    let event = publish_until_seen(&w1.hub, &mut events, 42).await;
    eprintln!(
        "TCP event plane: stream reopened {:?} after the worker was back",
        restarted.elapsed()
    );
    assert_eq!(event.instance_id, "w1");

    // An instance that leaves discovery has its stream closed.
    within("deregister", LIMIT, r2.deregister()).await.unwrap();
    eventually("w2's stream closed", || w2.hub.subscribers() == 0).await;

    // Dropping the stream closes the rest.
    drop(events);
    eventually("w1's stream closed", || w1.hub.subscribers() == 0).await;
    stop_watch.cancel();
    w1.stop().await;
    w2.stop().await;
}

#[tokio::test]
async fn tcp_event_streams_end_when_the_worker_shuts_down() {
    let tracker = TaskTracker::new();
    let any_port: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let worker = TcpWorker::start(&tracker, "w1", any_port, EventHub::new("w1")).await;
    let discovery = Discovery::new(Arc::new(MemoryStore::new()), "ns");
    let _registration = worker.register(&discovery).await;
    let stop_watch = CancellationToken::new();
    let watch =
        within("watch", LIMIT, discovery.watch_instances(stop_watch.clone())).await.unwrap();
    let subscriber = TcpEventSubscriber::new(watch.subscribe(), TcpEventConfig::default());
    let _events = within("subscribe", LIMIT, subscriber.subscribe()).await.unwrap();
    eventually("the stream open", || worker.hub.subscribers() == 1).await;
    // An open event stream must not hold the worker's shutdown up for the grace (10 s).
    let started = Instant::now();
    worker.stop().await;
    assert!(started.elapsed() < Duration::from_secs(8), "shutdown took {:?}", started.elapsed());
    stop_watch.cancel();
}

async fn recv(received: &mut broadcast::Receiver<WorkerEvent>) -> WorkerEvent {
    within("a pumped event", LIMIT, received.recv()).await.unwrap()
}

#[tokio::test]
async fn the_pump_publishes_kv_events_and_load_changes() {
    let hub = EventHub::new("w1");
    let mut received = hub.subscribe();
    let (kv_tx, kv_rx) = broadcast::channel(16);
    let active = Arc::new(AtomicU32::new(1));
    let shutdown = CancellationToken::new();
    let reporting = LoadReporting {
        poll_interval: Duration::from_millis(20),
        refresh_interval: Duration::from_secs(3600),
    };
    let load_source = Arc::clone(&active);
    let snapshots = Arc::new(AtomicU32::new(0));
    let asked = Arc::clone(&snapshots);
    let source = EngineEvents {
        kv_events: Some(kv_rx),
        load: move || {
            Some(LoadReport {
                active_requests: load_source.load(Ordering::SeqCst),
                ..LoadReport::default()
            })
        },
        request_snapshot: move || {
            asked.fetch_add(1, Ordering::SeqCst);
            true
        },
    };
    let pump = tokio::spawn(publish_engine_events(
        Arc::new(hub.clone()),
        source,
        reporting,
        shutdown.clone(),
    ));

    assert_eq!(
        recv(&mut received).await.event,
        Some(load(1)),
        "the first load is published at once"
    );
    let Event::Kv(stored) = kv(0, 5) else { unreachable!() };
    kv_tx.send(stored).unwrap();
    let event = recv(&mut received).await;
    assert_eq!((event.instance_id.as_str(), event.event), ("w1", Some(kv(0, 5))));
    // An unchanged load is not sent again before the refresh; a changed one is, at once.
    active.store(4, Ordering::SeqCst);
    assert_eq!(recv(&mut received).await.event, Some(load(4)));
    // A router's snapshot request reaches the engine.
    hub.request_snapshot();
    within("the engine is asked for a snapshot", LIMIT, async {
        while snapshots.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;

    shutdown.cancel();
    within("the pump stops", LIMIT, pump).await.unwrap();
}
