//! Instance discovery on top of a [`KvStore`]: workers register their [`InstanceRecord`]
//! under a lease kept alive in the background; frontends watch the live set.
//!
//! Key layout, the same in every store: `/switchyard/<namespace>/instances/<instance id>`,
//! the value being the record as JSON (readable with the store's own tools).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchyard_proto::InstanceRecord;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::store::{KvStore, LeaseId, WatchEvent};
use crate::{Error, Result};

/// Bound on one store call made in the background, so a stuck store cannot stall a loop.
const STORE_CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause before re-opening a watch that ended.
const REWATCH_DELAY: Duration = Duration::from_millis(500);

/// Registers and finds instances in one namespace of a store.
#[derive(Clone)]
pub struct Discovery {
    store: Arc<dyn KvStore>,
    namespace: String,
}

impl std::fmt::Debug for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovery").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl Discovery {
    pub fn new(store: Arc<dyn KvStore>, namespace: impl Into<String>) -> Discovery {
        Discovery { store, namespace: namespace.into() }
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn store(&self) -> &Arc<dyn KvStore> {
        &self.store
    }

    /// The prefix under which this namespace's instance records live.
    pub fn instances_prefix(&self) -> String {
        format!("/switchyard/{}/instances/", self.namespace)
    }

    fn instance_key(&self, instance_id: &str) -> String {
        format!("{}{instance_id}", self.instances_prefix())
    }

    /// Publishes `record` under a lease of `ttl`, kept alive every `ttl / 3` until
    /// [`Registration::deregister`] or `shutdown`. A lease lost meanwhile (store restarted,
    /// process paused past the TTL) is replaced and the record written again.
    pub async fn register(
        &self,
        record: InstanceRecord,
        ttl: Duration,
        shutdown: CancellationToken,
    ) -> Result<Registration> {
        let key = self.instance_key(&record.instance_id);
        let value = serde_json::to_vec(&record)
            .map_err(|e| Error::Malformed { key: key.clone(), reason: e.to_string() })?;
        let lease = publish(self.store.as_ref(), &key, &value, ttl).await?;
        info!(instance = %record.instance_id, %key, "registered");

        let (lease_tx, lease_rx) = watch::channel(lease);
        let cancel = shutdown.child_token();
        let tasks = TaskTracker::new();
        let health = Arc::new(LeaseHealth::new(ttl));
        let keeper = KeepAlive {
            store: self.store.clone(),
            key,
            value,
            ttl,
            lease: lease_tx,
            health: health.clone(),
        };
        tasks.spawn(keeper.run(cancel.clone()));
        tasks.close();
        Ok(Registration { store: self.store.clone(), lease: lease_rx, health, cancel, tasks })
    }

    /// Starts following the live instances of this namespace. The first snapshot is loaded
    /// before this returns; the watch stops when `shutdown` fires.
    pub async fn watch_instances(&self, shutdown: CancellationToken) -> Result<InstanceWatch> {
        let prefix = self.instances_prefix();
        let (events, records) = open_watch(self.store.as_ref(), &prefix).await?;
        let (tx, rx) = watch::channel(Arc::new(Instances::from_records(records.values())));
        let follower = Follower { store: self.store.clone(), prefix, records, tx };
        let tasks = TaskTracker::new();
        tasks.spawn(follower.run(events, shutdown.clone()));
        tasks.close();
        Ok(InstanceWatch { rx, tasks })
    }
}

async fn with_timeout<T>(what: &'static str, fut: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(STORE_CALL_TIMEOUT, fut)
        .await
        .map_err(|_| Error::Timeout { what, after: STORE_CALL_TIMEOUT })?
}

async fn publish(store: &dyn KvStore, key: &str, value: &[u8], ttl: Duration) -> Result<LeaseId> {
    let lease = with_timeout("lease grant", store.grant_lease(ttl)).await?;
    with_timeout("record put", store.put(key, value.to_vec(), Some(lease))).await?;
    Ok(lease)
}

/// A registered instance. Dropping it stops the keep-alive (the record then expires with
/// its lease); [`Registration::deregister`] removes the record at once.
#[derive(Debug)]
pub struct Registration {
    store: Arc<dyn KvStore>,
    lease: watch::Receiver<LeaseId>,
    /// When the store last confirmed the lease.
    health: Arc<LeaseHealth>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl std::fmt::Debug for dyn KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KvStore")
    }
}

impl Registration {
    /// Whether the record is known to be in the store, for health checks.
    pub fn lease_health(&self) -> Arc<LeaseHealth> {
        self.health.clone()
    }

    /// Stops the keep-alive and revokes the lease, so routers drop the instance now rather
    /// than when the lease would expire.
    pub async fn deregister(self) -> Result<()> {
        self.cancel.cancel();
        self.tasks.wait().await;
        let lease = *self.lease.borrow();
        with_timeout("lease revoke", self.store.revoke_lease(lease)).await
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Whether a registration's lease is held: the store confirmed it (granted it, or kept it
/// alive) less than a TTL ago. Past that, routers may have dropped the record, as they do
/// when the worker is cut off from the store.
#[derive(Debug)]
pub struct LeaseHealth {
    epoch: Instant,
    ttl: Duration,
    /// Milliseconds from `epoch` to the last confirmation.
    confirmed_ms: AtomicU64,
}

impl LeaseHealth {
    fn new(ttl: Duration) -> LeaseHealth {
        LeaseHealth { epoch: Instant::now(), ttl, confirmed_ms: AtomicU64::new(0) }
    }

    fn confirm(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.confirmed_ms.store(ms, Ordering::Relaxed);
    }

    pub fn held(&self) -> bool {
        let confirmed = Duration::from_millis(self.confirmed_ms.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(confirmed) < self.ttl
    }
}

struct KeepAlive {
    store: Arc<dyn KvStore>,
    key: String,
    value: Vec<u8>,
    ttl: Duration,
    lease: watch::Sender<LeaseId>,
    health: Arc<LeaseHealth>,
}

impl KeepAlive {
    async fn run(self, cancel: CancellationToken) {
        let mut tick = tokio::time::interval(self.ttl / 3);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            let lease = *self.lease.borrow();
            let confirmed =
                match with_timeout("lease keep-alive", self.store.keep_alive(lease)).await {
                    Ok(()) => true,
                    Err(Error::LeaseExpired(_)) => {
                        warn!(key = %self.key, "lease lost; registering again");
                        match publish(self.store.as_ref(), &self.key, &self.value, self.ttl).await {
                            Ok(new) => {
                                self.lease.send_replace(new);
                                info!(key = %self.key, "registered again");
                                true
                            }
                            Err(e) => {
                                warn!(key = %self.key, error = %e, "re-registration failed");
                                false
                            }
                        }
                    }
                    Err(e) => {
                        warn!(key = %self.key, error = %e, "keep-alive failed; retrying");
                        false
                    }
                };
            if confirmed {
                self.health.confirm();
            }
        }
    }
}

/// The live instances of a namespace, grouped by model; an immutable snapshot.
#[derive(Debug, Default)]
pub struct Instances {
    by_model: BTreeMap<String, Vec<Arc<InstanceRecord>>>,
    len: usize,
}

impl Instances {
    fn from_records<'a>(records: impl Iterator<Item = &'a Arc<InstanceRecord>>) -> Instances {
        let mut by_model: BTreeMap<String, Vec<Arc<InstanceRecord>>> = BTreeMap::new();
        let mut len = 0;
        for record in records {
            let model = record.card.as_ref().map(|c| c.model.clone()).unwrap_or_default();
            by_model.entry(model).or_default().push(record.clone());
            len += 1;
        }
        for list in by_model.values_mut() {
            list.sort_by(|a, b| a.instance_id.cmp(&b.instance_id));
        }
        Instances { by_model, len }
    }

    /// Each served model with its live instances, sorted by model name.
    pub fn models(&self) -> impl Iterator<Item = (&str, &[Arc<InstanceRecord>])> {
        self.by_model.iter().map(|(model, list)| (model.as_str(), list.as_slice()))
    }

    /// The live instances serving `model`, sorted by instance id; empty when none.
    pub fn for_model(&self, model: &str) -> &[Arc<InstanceRecord>] {
        self.by_model.get(model).map_or(&[], Vec::as_slice)
    }

    /// Number of live instances over all models.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A live view of a namespace's instances, updated in the background.
#[derive(Debug)]
pub struct InstanceWatch {
    rx: watch::Receiver<Arc<Instances>>,
    tasks: TaskTracker,
}

impl InstanceWatch {
    /// The latest snapshot; cheap (one `Arc` clone), fit for the request path.
    pub fn current(&self) -> Arc<Instances> {
        self.rx.borrow().clone()
    }

    /// A receiver that is told of every new snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Instances>> {
        self.rx.clone()
    }

    /// Waits until the background follower has stopped (after its shutdown token fired).
    pub async fn stopped(&self) {
        self.tasks.wait().await;
    }
}

type Records = BTreeMap<String, Arc<InstanceRecord>>;

/// Opens the watch first and reads the current records second, so no change between the two
/// is missed; replaying the watch's own initial events over the records is harmless.
async fn open_watch(
    store: &dyn KvStore,
    prefix: &str,
) -> Result<(crate::store::WatchStream, Records)> {
    let events = with_timeout("watch", store.watch_prefix(prefix)).await?;
    let mut records = Records::new();
    for (key, value) in with_timeout("list", store.get_prefix(prefix)).await? {
        apply(&mut records, WatchEvent::Put { key, value });
    }
    Ok((events, records))
}

fn apply(records: &mut Records, event: WatchEvent) {
    match event {
        WatchEvent::Put { key, value } => match serde_json::from_slice::<InstanceRecord>(&value) {
            Ok(record) => {
                records.insert(key, Arc::new(record));
            }
            Err(e) => warn!(%key, error = %e, "ignoring malformed instance record"),
        },
        WatchEvent::Delete { key } => {
            records.remove(&key);
        }
    }
}

struct Follower {
    store: Arc<dyn KvStore>,
    prefix: String,
    records: Records,
    tx: watch::Sender<Arc<Instances>>,
}

impl Follower {
    async fn run(mut self, mut events: crate::store::WatchStream, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                event = events.next() => match event {
                    Some(event) => {
                        apply(&mut self.records, event);
                        self.publish();
                    }
                    None => match self.reopen(&shutdown).await {
                        Some(stream) => events = stream,
                        None => return,
                    },
                },
            }
        }
    }

    fn publish(&self) {
        let next = Instances::from_records(self.records.values());
        debug!(instances = next.len(), "instances changed");
        self.tx.send_replace(Arc::new(next));
    }

    /// The store ended the watch (connection lost): keep the last view and retry until a
    /// new watch opens, then replace the view with what the store holds now.
    async fn reopen(&mut self, shutdown: &CancellationToken) -> Option<crate::store::WatchStream> {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(REWATCH_DELAY) => {}
            }
            match open_watch(self.store.as_ref(), &self.prefix).await {
                Ok((events, records)) => {
                    self.records = records;
                    self.publish();
                    return Some(events);
                }
                Err(e) => warn!(prefix = %self.prefix, error = %e, "watch lost; retrying"),
            }
        }
    }
}
