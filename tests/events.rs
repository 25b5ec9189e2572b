//! The event plane end to end: a real worker process publishes its KV events and load
//! reports; a subscriber sees them over gRPC (TCP mode) and over NATS subjects (NATS mode).

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde_json::json;
use support::{Mode, Topology, WAIT};
use switchyard_proto::worker_event::Event;
use switchyard_proto::{InstanceRecord, kv_event};
use switchyard_runtime::events::{
    EventStream, EventSubscriber, NatsEventSubscriber, TcpEventConfig, TcpEventSubscriber,
};
use switchyard_runtime::store::file::FileStore;
use switchyard_runtime::{Discovery, InstanceWatch};
use tokio_util::sync::CancellationToken;

const MODEL: &str = "switchyard-tiny";

/// Sends one request with a prompt of several full KV blocks, then waits for a `Stored` KV
/// event and a load report from the worker that served it.
async fn a_request_produces_kv_events_and_load_reports(
    t: &Topology,
    mut events: EventStream,
    worker: &str,
) {
    let prompt = "The worker stores this prompt's blocks in its cache. ".repeat(8);
    let (status, body) = t
        .post("/v1/completions", &json!({"model": MODEL, "prompt": prompt, "max_tokens": 4}))
        .await;
    assert_eq!(status, 200, "{body}");
    let (mut stored, mut load) = (false, false);
    let deadline = Instant::now() + WAIT;
    while !(stored && load) {
        let left = deadline.saturating_duration_since(Instant::now());
        let event = tokio::time::timeout(left, events.next())
            .await
            .unwrap_or_else(|_| panic!("stored {stored}, load {load} after {WAIT:?}"))
            .expect("event stream ended");
        assert_eq!(event.instance_id, worker);
        match event.event {
            Some(Event::Kv(kv)) => {
                if let Some(kv_event::Data::Stored(s)) = kv.data {
                    stored |= !s.block_hashes.is_empty();
                }
            }
            Some(Event::Load(report)) => load |= report.total_kv_blocks > 0,
            None => {}
        }
    }
}

async fn only_instance(watch: &InstanceWatch) -> Arc<InstanceRecord> {
    let records: Vec<Arc<InstanceRecord>> =
        watch.current().models().flat_map(|(_, list)| list.iter().cloned()).collect();
    assert_eq!(records.len(), 1);
    records[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_events_and_load_reports_flow_over_grpc_in_tcp_mode() {
    let t = Topology::start_on(Mode::FILE_TCP, &[MODEL], &[]).await;
    let stop = CancellationToken::new();
    let store = FileStore::open(t.store_dir()).unwrap();
    let discovery = Discovery::new(Arc::new(store), "default");
    let watch = discovery.watch_instances(stop.clone()).await.unwrap();
    let worker = only_instance(&watch).await;
    let subscriber = TcpEventSubscriber::new(watch.subscribe(), TcpEventConfig::default());
    let events = tokio::time::timeout(WAIT, subscriber.subscribe()).await.unwrap().unwrap();
    a_request_produces_kv_events_and_load_reports(&t, events, &worker.instance_id).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_events_and_load_reports_flow_over_nats_subjects_in_nats_mode() {
    let t = Topology::start_on(Mode::FILE_NATS, &[MODEL], &[]).await;
    let stop = CancellationToken::new();
    let store = FileStore::open(t.store_dir()).unwrap();
    let watch =
        Discovery::new(Arc::new(store), "default").watch_instances(stop.clone()).await.unwrap();
    let worker = only_instance(&watch).await;
    let url = t.servers.nats.as_ref().unwrap().url();
    let client = switchyard_runtime::plane::nats::connect(&url).await.unwrap();
    let subscriber = NatsEventSubscriber::new(client, "default").unwrap();
    let events = tokio::time::timeout(WAIT, subscriber.subscribe()).await.unwrap().unwrap();
    a_request_produces_kv_events_and_load_reports(&t, events, &worker.instance_id).await;
    stop.cancel();
}
