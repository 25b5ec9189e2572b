//! The frontend's side of routing: one [`RoutingState`] (the router crate's per-model KV
//! indexes, loads, bookings and pair choice) behind a briefly held lock, the task that feeds
//! it discovery changes and the workers' events, and the routing metrics.
//!
//! [`KvRouter::run`] follows discovery and applies workers' events, asking a worker for a
//! snapshot when its events show a gap. [`KvRouter::select`] asks the state for a decision
//! and hands back [`Reservation`]s that give the bookings back when dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_proto::worker_event::Event;
use switchyard_proto::{KvSnapshot, WorkerEvent, kv_event};
use switchyard_router::{
    Applied, Booking, InstanceLoad, InstanceSpec, KvChange, KvEvent, Policy, PrefillPlace,
    ResyncReason, Role, RouteRequest, RoutingConfig, RoutingState,
};
use switchyard_runtime::events::{EventStream, EventSubscriber};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{
    PREFILLS_TOTAL, ROUTER_DECISION_TIME, ROUTER_INDEXED_INSTANCES, ROUTER_OVERLAP_BLOCKS,
    ROUTER_PREDICTED_BLOCKS, ROUTER_RESYNC_NEEDED, ROUTER_SNAPSHOT_REQUESTS,
    ROUTER_SNAPSHOTS_APPLIED,
};
use crate::models::ModelTable;

/// Least time between two snapshot requests to one instance.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);
/// Longest wait to send a snapshot request.
const SNAPSHOT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The routing state of every model's instances.
#[derive(Debug)]
pub(crate) struct KvRouter {
    state: Mutex<RoutingState>,
    /// Origin of the monotonic time the state's decision TTLs count in.
    epoch: Instant,
}

/// What one request booked on one instance, given back when dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    router: Arc<KvRouter>,
    booking: Booking,
}

impl Reservation {
    pub fn instance(&self) -> &Arc<str> {
        &self.booking.instance
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.router.lock();
        state.release(&self.booking);
        let booked = state.booked_blocks(&self.booking.instance);
        drop(state);
        predicted_gauge(&self.booking.instance).set(booked as f64);
    }
}

/// A routing decision with its bookings.
#[derive(Debug)]
pub(crate) struct Routed {
    pub decode: Reservation,
    /// Set when a prefill instance computes the prompt first.
    pub prefill: Option<Reservation>,
}

impl KvRouter {
    pub fn new(config: RoutingConfig) -> KvRouter {
        KvRouter { state: Mutex::new(RoutingState::new(config)), epoch: Instant::now() }
    }

    fn lock(&self) -> MutexGuard<'_, RoutingState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Follows discovery's model table and, when given, the workers' events, until `stop`.
    /// A worker whose events show a gap is asked for a snapshot through `subscriber`.
    pub async fn run(
        self: Arc<Self>,
        mut table: watch::Receiver<Arc<ModelTable>>,
        subscriber: Option<Arc<dyn EventSubscriber>>,
        mut events: Option<EventStream>,
        stop: CancellationToken,
    ) {
        // When each instance was last asked for a snapshot: one gap is often followed by
        // more events from before the snapshot arrives, and one request covers them all.
        let mut asked: HashMap<String, Instant> = HashMap::new();
        let first = table.borrow_and_update().clone();
        self.sync(&first);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                changed = table.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let snapshot = table.borrow_and_update().clone();
                    self.sync(&snapshot);
                }
                event = next_event(&mut events) => match event {
                    Some(event) => {
                        if let (Some(instance), Some(subscriber)) = (self.apply(event), &subscriber) {
                            ask_for_snapshot(subscriber.as_ref(), &mut asked, &instance).await;
                        }
                    }
                    None => {
                        tracing::warn!("the event stream ended; routing on decisions alone");
                        events = None;
                    }
                },
            }
        }
    }

    /// Registers the instances of `table` and forgets those no longer in it.
    pub fn sync(&self, table: &ModelTable) {
        let specs = table.iter().flat_map(|model| {
            model.all_instances().map(move |instance| InstanceSpec {
                instance: &instance.record.instance_id,
                model: &model.name,
                role: role_of(&instance.record),
            })
        });
        let mut state = self.lock();
        state.sync(specs);
        for (model, instances) in state.indexed_instances() {
            metrics::gauge!(ROUTER_INDEXED_INSTANCES, "model" => model.to_owned())
                .set(instances as f64);
        }
    }

    /// Applies one worker event. Returns the instance when the event showed that the index
    /// lost track of it and a snapshot would set it right.
    pub fn apply(&self, event: WorkerEvent) -> Option<String> {
        let instance = event.instance_id;
        let mut state = self.lock();
        match event.event {
            Some(Event::Load(load)) => {
                let load = InstanceLoad {
                    active_requests: load.active_requests,
                    waiting_requests: load.waiting_requests,
                    active_kv_blocks: load.active_kv_blocks,
                    total_kv_blocks: load.total_kv_blocks,
                };
                state.apply_load(&instance, load);
            }
            Some(Event::Kv(kv)) => {
                let change = match &kv.data {
                    Some(kv_event::Data::Stored(stored)) => KvChange::Stored {
                        parent: stored.parent_hash,
                        blocks: &stored.block_hashes,
                    },
                    Some(kv_event::Data::Removed(removed)) => {
                        KvChange::Removed { blocks: &removed.block_hashes }
                    }
                    Some(kv_event::Data::Cleared(_)) => KvChange::Cleared,
                    Some(kv_event::Data::Snapshot(snapshot)) => {
                        resync(&mut state, &instance, kv.event_id, snapshot);
                        return None;
                    }
                    None => return None,
                };
                match state.apply_kv(&instance, &KvEvent { event_id: kv.event_id, change }) {
                    None => {
                        tracing::debug!(
                            instance,
                            "KV event of an instance not in discovery; ignored"
                        );
                    }
                    // A snapshot would not fit either: the index keeps what fits.
                    Some(Ok(Applied::ResyncNeeded(reason @ ResyncReason::OverCapacity { .. }))) => {
                        tracing::warn!(instance, ?reason, "KV index of an instance is full");
                    }
                    Some(Ok(Applied::ResyncNeeded(reason))) => {
                        tracing::debug!(
                            instance,
                            ?reason,
                            "KV index of an instance needs a resync"
                        );
                        metrics::counter!(ROUTER_RESYNC_NEEDED).increment(1);
                        return Some(instance);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => tracing::debug!(instance, error = %e, "KV event not applied"),
                }
            }
            None => {}
        }
        None
    }

    /// Asks the routing state where `request` goes, with `policy`, and books it there.
    pub fn select(
        self: &Arc<Self>,
        request: &RouteRequest<'_>,
        policy: &dyn Policy,
    ) -> Option<Routed> {
        let started = Instant::now();
        let mut state = self.lock();
        let chosen = state.select(request, policy, self.epoch.elapsed())?;
        let decode_booked = state.booked_blocks(&chosen.decode.instance);
        let prefill_booked =
            chosen.prefill.as_ref().map(|p| state.booked_blocks(&p.booking.instance));
        drop(state);
        predicted_gauge(&chosen.decode.instance).set(decode_booked as f64);
        if let (Some(prefill), Some(booked)) = (&chosen.prefill, prefill_booked) {
            predicted_gauge(&prefill.booking.instance).set(booked as f64);
        }
        let overlap =
            chosen.prefill.as_ref().map_or(chosen.decode_overlap_blocks, |p| p.overlap_blocks);
        metrics::histogram!(ROUTER_OVERLAP_BLOCKS).record(f64::from(overlap));
        metrics::histogram!(ROUTER_DECISION_TIME).record(started.elapsed().as_secs_f64());
        let (place, reason) = match chosen.place {
            PrefillPlace::Remote => ("remote", "split"),
            PrefillPlace::Local(reason) => ("local", reason.name()),
        };
        metrics::counter!(PREFILLS_TOTAL, "place" => place, "reason" => reason).increment(1);
        Some(Routed {
            decode: Reservation { router: self.clone(), booking: chosen.decode },
            prefill: chosen
                .prefill
                .map(|p| Reservation { router: self.clone(), booking: p.booking }),
        })
    }
}

fn role_of(record: &switchyard_proto::InstanceRecord) -> Role {
    match record.role() {
        switchyard_proto::Role::Aggregated => Role::Aggregated,
        switchyard_proto::Role::Prefill => Role::Prefill,
        switchyard_proto::Role::Decode => Role::Decode,
    }
}

/// Asks `instance` for a KV snapshot, unless it was asked within [`SNAPSHOT_RETRY`]
/// (`asked`: when each instance was last asked).
async fn ask_for_snapshot(
    subscriber: &dyn EventSubscriber,
    asked: &mut HashMap<String, Instant>,
    instance: &str,
) {
    if asked.get(instance).is_some_and(|at| at.elapsed() < SNAPSHOT_RETRY) {
        return;
    }
    asked.retain(|_, at| at.elapsed() < SNAPSHOT_RETRY);
    asked.insert(instance.to_owned(), Instant::now());
    match tokio::time::timeout(SNAPSHOT_REQUEST_TIMEOUT, subscriber.request_snapshot(instance))
        .await
    {
        Ok(Ok(())) => metrics::counter!(ROUTER_SNAPSHOT_REQUESTS).increment(1),
        Ok(Err(e)) => tracing::warn!(instance, error = %e, "cannot ask for a KV snapshot"),
        Err(_) => tracing::warn!(instance, "asking for a KV snapshot timed out"),
    }
}

/// Replaces what the state holds for `instance` with `snapshot`, taken by the worker as its
/// event `event_id`, unless the state already applied later events.
fn resync(state: &mut RoutingState, instance: &str, event_id: u64, snapshot: &KvSnapshot) {
    let chains =
        snapshot.chains.iter().map(|chain| (chain.parent_hash, chain.block_hashes.as_slice()));
    match state.resync(instance, event_id, chains) {
        None => tracing::debug!(instance, "KV snapshot of an instance not in discovery; ignored"),
        Some(Ok(true)) => {
            metrics::counter!(ROUTER_SNAPSHOTS_APPLIED).increment(1);
        }
        Some(Ok(false)) => tracing::debug!(
            instance,
            event_id,
            "KV snapshot older than the events applied, or larger than the index allows"
        ),
        Some(Err(e)) => tracing::debug!(instance, error = %e, "KV snapshot not applied"),
    }
}

async fn next_event(events: &mut Option<EventStream>) -> Option<WorkerEvent> {
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

fn predicted_gauge(instance: &str) -> metrics::Gauge {
    metrics::gauge!(ROUTER_PREDICTED_BLOCKS, "instance" => instance.to_owned())
}
