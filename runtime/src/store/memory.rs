//! An in-process [`KvStore`]: for `switchyard up` and tests, where every part runs in one process.
//!
//! All state sits behind one briefly held lock. Leases expire by tokio time, so tests with paused
//! time see them expire exactly at their deadline; a reaper task sleeps until the earliest
//! deadline so that watchers see the `Delete` of expired keys even when nobody calls the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{KvStore, LeaseId, WatchEvent, WatchStream};
use crate::{Error, Result};

/// A [`KvStore`] held in memory. Clones share one store; the reaper task stops when the last
/// clone (or watch stream) is dropped.
#[derive(Clone)]
pub struct MemoryStore {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore").finish_non_exhaustive()
    }
}

struct Shared {
    state: Arc<Mutex<State>>,
    /// Wakes the reaper when a lease is granted or kept alive, as its next deadline may change.
    wake: Arc<Notify>,
    /// The reaper starts with the first lease, so `new` needs no tokio runtime.
    reaper_started: AtomicBool,
    /// Stops the reaper when the last handle is gone.
    cancel: CancellationToken,
    tracker: TaskTracker,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.tracker.close();
    }
}

#[derive(Default)]
struct State {
    entries: BTreeMap<String, Entry>,
    leases: HashMap<LeaseId, Lease>,
    last_lease: LeaseId,
    watchers: Vec<Watcher>,
}

struct Entry {
    value: Vec<u8>,
    lease: Option<LeaseId>,
}

struct Lease {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

struct Watcher {
    prefix: String,
    /// Unbounded so that writers never wait on a slow watcher while holding the lock; discovery
    /// changes are few, so the queue stays short.
    events: mpsc::UnboundedSender<WatchEvent>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore {
            shared: Arc::new(Shared {
                state: Arc::new(Mutex::new(State::default())),
                wake: Arc::new(Notify::new()),
                reaper_started: AtomicBool::new(false),
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        }
    }

    /// The state with every lease whose deadline has passed already expired, so that each
    /// call sees exact expiry whether or not the reaper has run yet.
    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = lock(&self.shared.state);
        state.expire_due(Instant::now());
        state
    }

    fn start_reaper(&self) {
        if self.shared.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let state = Arc::clone(&self.shared.state);
        let wake = Arc::clone(&self.shared.wake);
        let cancel = self.shared.cancel.clone();
        self.shared.tracker.spawn(reap(state, wake, cancel));
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves the maps consistent (every mutation is a single
    // map operation followed by notifications), so the state stays usable.
    state.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Expires leases at their deadlines until the store is dropped.
async fn reap(state: Arc<Mutex<State>>, wake: Arc<Notify>, cancel: CancellationToken) {
    loop {
        let next = {
            let mut state = lock(&state);
            state.expire_due(Instant::now());
            state.leases.values().map(|lease| lease.deadline).min()
        };
        let sleep = async {
            match next {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => return,
            () = wake.notified() => {}
            () = sleep => {}
        }
    }
}

impl State {
    fn expire_due(&mut self, now: Instant) {
        let due: Vec<LeaseId> = self
            .leases
            .iter()
            .filter(|(_, lease)| lease.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.remove_lease(id);
        }
    }

    /// Removes `id` and its keys; whether it existed.
    fn remove_lease(&mut self, id: LeaseId) -> bool {
        let Some(lease) = self.leases.remove(&id) else {
            return false;
        };
        for key in lease.keys {
            if self.entries.remove(&key).is_some() {
                self.publish(WatchEvent::Delete { key });
            }
        }
        true
    }

    /// Unbinds `key` from the lease it was bound to, if any.
    fn unbind(&mut self, key: &str, lease: Option<LeaseId>) {
        if let Some(lease) = lease.and_then(|id| self.leases.get_mut(&id)) {
            lease.keys.remove(key);
        }
    }

    fn publish(&mut self, event: WatchEvent) {
        let key = match &event {
            WatchEvent::Put { key, .. } | WatchEvent::Delete { key } => key.clone(),
        };
        // A failed send means the watch stream was dropped: forget that watcher.
        self.watchers.retain(|watcher| {
            !key.starts_with(&watcher.prefix) || watcher.events.send(event.clone()).is_ok()
        });
    }
}

#[async_trait]
impl KvStore for MemoryStore {
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.start_reaper();
        let id = {
            let mut state = self.state();
            state.last_lease += 1;
            let id = state.last_lease;
            let lease = Lease { ttl, deadline: Instant::now() + ttl, keys: BTreeSet::new() };
            state.leases.insert(id, lease);
            id
        };
        self.shared.wake.notify_one();
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        let mut state = self.state();
        let entry = state.leases.get_mut(&lease).ok_or(Error::LeaseExpired(lease))?;
        entry.deadline = Instant::now() + entry.ttl;
        // The deadline only moved later, so the reaper's sleep stays correct: no wake needed.
        Ok(())
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        // Revoking a lease that is gone already is not an error: the caller wants it gone.
        self.state().remove_lease(lease);
        Ok(())
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()> {
        let mut state = self.state();
        if let Some(id) = lease {
            let bound = state.leases.get_mut(&id).ok_or(Error::LeaseExpired(id))?;
            bound.keys.insert(key.to_owned());
        }
        let entry = Entry { value: value.clone(), lease };
        if let Some(old) = state.entries.insert(key.to_owned(), entry)
            && old.lease != lease
        {
            state.unbind(key, old.lease);
        }
        state.publish(WatchEvent::Put { key: key.to_owned(), value });
        Ok(())
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.state().entries.get(key).map(|entry| entry.value.clone()))
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let state = self.state();
        Ok(under_prefix(&state.entries, prefix)
            .map(|(key, entry)| (key.clone(), entry.value.clone()))
            .collect())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut state = self.state();
        let Some(old) = state.entries.remove(key) else {
            return Ok(false);
        };
        state.unbind(key, old.lease);
        state.publish(WatchEvent::Delete { key: key.to_owned() });
        Ok(true)
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<WatchStream> {
        let (tx, rx) = mpsc::unbounded_channel();
        let mut state = self.state();
        // Snapshot and registration under one lock: no change can fall between them.
        for (key, entry) in under_prefix(&state.entries, prefix) {
            let event = WatchEvent::Put { key: key.clone(), value: entry.value.clone() };
            // The receiver is still held here, so the send cannot fail.
            let _ = tx.send(event);
        }
        state.watchers.push(Watcher { prefix: prefix.to_owned(), events: tx });
        drop(state);
        Ok(Box::pin(MemoryWatch { events: rx, _store: Arc::clone(&self.shared) }))
    }
}

fn under_prefix<'a>(
    entries: &'a BTreeMap<String, Entry>,
    prefix: &'a str,
) -> impl Iterator<Item = (&'a String, &'a Entry)> + 'a {
    entries
        .range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded))
        .take_while(move |(key, _)| key.starts_with(prefix))
}

/// The events of one watch. It holds the store, so a watch keeps working (and expired leases
/// keep being reaped) while it is held, even after every other handle is dropped.
struct MemoryWatch {
    events: mpsc::UnboundedReceiver<WatchEvent>,
    _store: Arc<Shared>,
}

impl Stream for MemoryWatch {
    type Item = WatchEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.get_mut().events.poll_recv(cx)
    }
}
