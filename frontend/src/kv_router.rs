//! The frontend's view of the workers' KV caches and load, owned here behind one briefly held
//! lock: a [`KvIndex`] per model and the latest [`LoadReport`] per instance, fed by the event
//! plane, plus the KV blocks this frontend predicts its own in-flight requests occupy.
//!
//! One task ([`KvRouter::run`]) follows discovery (instances that leave are dropped from the
//! index) and applies workers' events. Routing ([`KvRouter::select`]) fills each candidate
//! from the index and the load, asks the policy, and books the chosen instance's predicted
//! blocks under the same lock, so consecutive decisions see each other. Workers that send no
//! KV events are tracked approximately: each decision is recorded in the index with a TTL.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_proto::worker_event::Event;
use switchyard_proto::{KvSnapshot, LoadReport, WorkerEvent, kv_event};
use switchyard_router::{
    Applied, Candidate, InstanceId, KvChange, KvEvent, KvIndex, Policy, RequestInfo, ResyncReason,
};
use switchyard_runtime::events::{EventStream, EventSubscriber};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::{
    ROUTER_DECISION_TIME, ROUTER_INDEXED_INSTANCES, ROUTER_OVERLAP_BLOCKS, ROUTER_PREDICTED_BLOCKS,
    ROUTER_RESYNC_NEEDED, ROUTER_SNAPSHOT_REQUESTS, ROUTER_SNAPSHOTS_APPLIED,
};
use crate::models::{ModelEntry, ModelTable};

/// Least time between two snapshot requests to one instance.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(1);
/// Longest wait to send a snapshot request.
const SNAPSHOT_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// The KV indexes and load of every model's instances.
#[derive(Debug)]
pub(crate) struct KvRouter {
    state: Mutex<State>,
    /// Origin of the monotonic time the index's decision TTLs count in.
    epoch: Instant,
    decision_ttl: Duration,
}

#[derive(Debug, Default)]
struct State {
    indexes: HashMap<String, KvIndex>,
    /// Model of each instance in discovery.
    owners: HashMap<String, String>,
    loads: HashMap<String, LoadReport>,
    /// KV blocks of this frontend's in-flight requests, per instance.
    predicted: HashMap<String, u64>,
}

/// The predicted KV blocks of one in-flight request, released when it is dropped.
#[derive(Debug)]
pub(crate) struct Reservation {
    router: Arc<KvRouter>,
    instance: String,
    blocks: u64,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        let mut state = self.router.lock();
        if let Some(predicted) = state.predicted.get_mut(&self.instance) {
            *predicted = predicted.saturating_sub(self.blocks);
            predicted_gauge(&self.instance).set(*predicted as f64);
        }
        // The last load report lags by up to the worker's poll interval and may still count
        // the request that just ended; the next report corrects this guess either way.
        if let Some(load) = state.loads.get_mut(&self.instance) {
            load.active_kv_blocks = load.active_kv_blocks.saturating_sub(self.blocks);
            load.active_requests = load.active_requests.saturating_sub(1);
        }
    }
}

impl KvRouter {
    /// `decision_ttl`: how long a decision stands in for the KV events of a worker that sends
    /// none.
    pub fn new(decision_ttl: Duration) -> KvRouter {
        KvRouter { state: Mutex::default(), epoch: Instant::now(), decision_ttl }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
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
        let mut state = self.lock();
        let State { indexes, owners, loads, predicted } = &mut *state;
        let mut live: HashMap<String, String> = HashMap::new();
        for model in table.iter() {
            let index = indexes.entry(model.name.clone()).or_default();
            for instance in &model.instances {
                index.add_instance(&instance.record.instance_id);
                live.insert(instance.record.instance_id.clone(), model.name.clone());
            }
        }
        for (instance, model) in owners.iter() {
            if live.get(instance) == Some(model) {
                continue;
            }
            if let Some(index) = indexes.get_mut(model)
                && let Some(id) = index.instance(instance)
            {
                index.remove_instance(id);
                tracing::debug!(
                    instance,
                    model,
                    "instance left discovery; dropped from the KV index"
                );
            }
            if !live.contains_key(instance) {
                loads.remove(instance);
            }
        }
        // Requests still in flight to a departed instance release their blocks when they end.
        predicted.retain(|instance, blocks| *blocks > 0 || live.contains_key(instance));
        let models: HashSet<&String> = live.values().collect();
        indexes.retain(|model, _| models.contains(model));
        for (model, index) in indexes.iter() {
            metrics::gauge!(ROUTER_INDEXED_INSTANCES, "model" => model.clone())
                .set(index.instances() as f64);
        }
        *owners = live;
    }

    /// Applies one worker event. Returns the instance when the event showed that the index
    /// lost track of it and a snapshot would set it right.
    pub fn apply(&self, event: WorkerEvent) -> Option<String> {
        let instance = event.instance_id;
        let mut state = self.lock();
        let State { indexes, owners, loads, .. } = &mut *state;
        match event.event {
            Some(Event::Load(load)) if owners.contains_key(&instance) => {
                loads.insert(instance, load);
            }
            Some(Event::Kv(kv)) => {
                let Some(index) = owners.get(&instance).and_then(|model| indexes.get_mut(model))
                else {
                    tracing::debug!(instance, "KV event of an instance not in discovery; ignored");
                    return None;
                };
                let id = index.add_instance(&instance);
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
                        resync(index, id, &instance, kv.event_id, snapshot);
                        return None;
                    }
                    None => return None,
                };
                match index.apply(id, &KvEvent { event_id: kv.event_id, change }) {
                    // A snapshot would not fit either: the index keeps what fits.
                    Ok(Applied::ResyncNeeded(reason @ ResyncReason::OverCapacity { .. })) => {
                        tracing::warn!(instance, ?reason, "KV index of an instance is full");
                    }
                    Ok(Applied::ResyncNeeded(reason)) => {
                        tracing::debug!(
                            instance,
                            ?reason,
                            "KV index of an instance needs a resync"
                        );
                        metrics::counter!(ROUTER_RESYNC_NEEDED).increment(1);
                        return Some(instance);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::debug!(instance, error = %e, "KV event not applied"),
                }
            }
            Some(Event::Load(_)) | None => {}
        }
        None
    }

    /// Picks one of `allowed` (indices into `model.instances`) with `policy`, and books the
    /// request's predicted KV blocks on it. Returns the index into `model.instances`.
    pub fn select(
        self: &Arc<Self>,
        model: &ModelEntry,
        allowed: &[usize],
        policy: &dyn Policy,
        info: &RequestInfo<'_>,
    ) -> Option<(usize, Reservation)> {
        let started = Instant::now();
        let blocks = prompt_blocks(info, model.kv_block_size);
        let mut state = self.lock();
        let State { indexes, loads, predicted, .. } = &mut *state;
        let index = indexes.get_mut(&model.name);
        let scores = index.as_ref().map(|index| index.find_matches(info.block_hashes));
        let candidates: Vec<Candidate<'_>> = allowed
            .iter()
            .filter_map(|&i| model.instances.get(i))
            .map(|instance| {
                let id = instance.record.instance_id.as_str();
                let mut candidate = Candidate::new(id, instance.in_flight.load(Ordering::Relaxed));
                if let (Some(index), Some(scores)) = (&index, &scores)
                    && let Some(handle) = index.instance(id)
                {
                    candidate.overlap_blocks = scores.get(handle);
                }
                let own = predicted.get(id).copied().unwrap_or(0);
                candidate.active_decode_blocks = own;
                if let Some(load) = loads.get(id) {
                    candidate.active_requests = load.active_requests;
                    candidate.waiting_requests = load.waiting_requests;
                    candidate.active_decode_blocks = load.active_kv_blocks.max(own);
                    if load.total_kv_blocks > 0 {
                        candidate.kv_usage =
                            (load.active_kv_blocks as f64 / load.total_kv_blocks as f64) as f32;
                    }
                }
                candidate
            })
            .collect();
        if candidates.len() != allowed.len() {
            return None;
        }
        let chosen = policy.select(&candidates, info).filter(|&c| c < candidates.len())?;
        let overlap = candidates[chosen].overlap_blocks;
        let position = allowed[chosen];
        let instance = model.instances[position].record.instance_id.clone();
        drop(candidates);
        let booked = predicted.entry(instance.clone()).or_default();
        *booked = booked.saturating_add(blocks);
        let booked = *booked;
        if let Some(index) = index
            && let Some(handle) = index.instance(&instance)
        {
            let now = self.epoch.elapsed();
            if let Err(e) = index.record_decision(handle, info.block_hashes, now, self.decision_ttl)
            {
                tracing::debug!(instance, error = %e, "decision not recorded");
            }
        }
        drop(state);
        predicted_gauge(&instance).set(booked as f64);
        metrics::histogram!(ROUTER_OVERLAP_BLOCKS).record(f64::from(overlap));
        metrics::histogram!(ROUTER_DECISION_TIME).record(started.elapsed().as_secs_f64());
        Some((position, Reservation { router: self.clone(), instance, blocks }))
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

/// Replaces what `index` holds for `id` with `snapshot`, taken by the worker as its event
/// `event_id`, unless the index already applied later events.
fn resync(
    index: &mut KvIndex,
    id: InstanceId,
    instance: &str,
    event_id: u64,
    snapshot: &KvSnapshot,
) {
    if index.next_event_id(id).is_some_and(|next| event_id < next) {
        tracing::debug!(instance, event_id, "KV snapshot older than the events applied; ignored");
        return;
    }
    let chains =
        snapshot.chains.iter().map(|chain| (chain.parent_hash, chain.block_hashes.as_slice()));
    match index.resync(id, event_id.saturating_add(1), chains) {
        Ok(fits) => {
            metrics::counter!(ROUTER_SNAPSHOTS_APPLIED).increment(1);
            if !fits {
                tracing::warn!(
                    instance,
                    "KV snapshot larger than the index allows; kept what fits"
                );
            }
        }
        Err(e) => tracing::debug!(instance, error = %e, "KV snapshot not applied"),
    }
}

async fn next_event(events: &mut Option<EventStream>) -> Option<WorkerEvent> {
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

/// KV blocks a prompt occupies, the partial last block included.
fn prompt_blocks(info: &RequestInfo<'_>, block_size: usize) -> u64 {
    let blocks = if block_size > 0 {
        info.prompt_tokens.div_ceil(block_size)
    } else {
        info.block_hashes.len()
    };
    u64::try_from(blocks).unwrap_or(u64::MAX)
}

fn predicted_gauge(instance: &str) -> metrics::Gauge {
    metrics::gauge!(ROUTER_PREDICTED_BLOCKS, "instance" => instance.to_owned())
}
