//! A [`KvStore`] in a directory shared by the processes of one machine: one file per key, one
//! heartbeat file per lease.
//!
//! Layout under the directory:
//! - `keys/<percent-encoded key>`: a first line `lease=<id>` (`0` when unleased), then the value.
//! - `leases/<id>`: `deadline_ms=<unix ms> ttl_ms=<ms>`, rewritten by every keep-alive.
//!
//! Every file is written to a dot-named temp file in the same directory and renamed into place,
//! so a reader sees the old content or the new, never a part. There is no daemon: a key bound to
//! a missing or expired lease is absent, and whoever reads it first removes it. Time is wall-clock
//! time, as it is the only clock the processes share.
//!
//! Known limits, acceptable for one machine: a key longer than about 85 bytes of punctuation may
//! exceed the file-name limit and is refused; a put racing with another process's removal of an
//! expired key under the same name can be lost; watches are level-triggered (a put and delete
//! between two scans are not seen, and re-putting the same value is not an event).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use notify::Watcher as _;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;

mod format;

use self::format::{
    KeyRecord, LeaseRecord, decode_key, encode_key, now_ms, read_if_present, remove_if_present,
    write_atomic,
};
use super::{KvStore, LeaseId, WatchEvent, WatchStream};
use crate::{Error, Result};

/// How often a watch rescans the directory when no file event wakes it. Expiry is a time event
/// that no file event announces, and some filesystems (network, container volumes) send none.
const POLL_INTERVAL: Duration = Duration::from_millis(250);
/// Events a watch may queue before its scanner waits for the reader.
const WATCH_BUFFER: usize = 64;

/// A [`KvStore`] in a directory. Clones share one handle; other processes may open the same
/// directory and see each other's keys, leases and expiries.
#[derive(Clone)]
pub struct FileStore {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for FileStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStore").field("dir", &self.inner.layout.root).finish()
    }
}

struct Inner {
    layout: Arc<Layout>,
    /// Parent of every watch task's token: dropping the last handle stops them all.
    cancel: CancellationToken,
    /// Owns the watch tasks and the blocking file operations.
    tracker: TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
        self.tracker.close();
    }
}

impl FileStore {
    /// Opens (creating if needed) the store in `dir`.
    pub fn open(dir: impl Into<PathBuf>) -> Result<FileStore> {
        let root = dir.into();
        let layout = Layout { keys: root.join("keys"), leases: root.join("leases"), root };
        for dir in [&layout.keys, &layout.leases] {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Store(format!("cannot create {}: {e}", dir.display())))?;
        }
        Ok(FileStore {
            inner: Arc::new(Inner {
                layout: Arc::new(layout),
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        })
    }

    /// Runs a file operation off the async workers.
    async fn blocking<T: Send + 'static>(
        &self,
        op: impl FnOnce(&Layout) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let layout = Arc::clone(&self.inner.layout);
        run_blocking(&self.inner.tracker, move || op(&layout)).await
    }
}

async fn run_blocking<T: Send + 'static>(
    tracker: &TaskTracker,
    op: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tracker
        .spawn_blocking(op)
        .await
        .map_err(|e| Error::Store(format!("file store operation failed: {e}")))?
}

#[async_trait]
impl KvStore for FileStore {
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        self.blocking(move |layout| {
            // Random ids keep processes from colliding without coordination; etcd's ids are
            // positive i64, so stay in that range too.
            let id: LeaseId = rand::random_range(1..=i64::MAX.unsigned_abs());
            layout.write_lease(id, &LeaseRecord::starting_now(ttl))?;
            layout.sweep_leases()?;
            Ok(id)
        })
        .await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        self.blocking(move |layout| match layout.read_lease(lease)? {
            Some(record) if record.is_live(now_ms()) => {
                let ttl = Duration::from_millis(record.ttl_ms);
                layout.write_lease(lease, &LeaseRecord::starting_now(ttl))
            }
            Some(_) => {
                layout.remove_lease(lease)?;
                Err(Error::LeaseExpired(lease))
            }
            None => Err(Error::LeaseExpired(lease)),
        })
        .await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        self.blocking(move |layout| layout.remove_lease(lease)).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()> {
        let name = encode_key(key)?;
        self.blocking(move |layout| {
            if let Some(id) = lease {
                let live = layout.read_lease(id)?.is_some_and(|r| r.is_live(now_ms()));
                if !live {
                    return Err(Error::LeaseExpired(id));
                }
            }
            write_atomic(&layout.keys, &name, &KeyRecord::render(lease, &value))
        })
        .await
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let name = encode_key(key)?;
        self.blocking(move |layout| layout.live_value(&name, &mut HashMap::new())).await
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let prefix = prefix.to_owned();
        let entries = self.blocking(move |layout| layout.scan(&prefix)).await?;
        Ok(entries.into_iter().collect())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let name = encode_key(key)?;
        self.blocking(move |layout| {
            let existed = layout.live_value(&name, &mut HashMap::new())?.is_some();
            Ok(remove_if_present(&layout.keys.join(&name))? && existed)
        })
        .await
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<WatchStream> {
        let wake = Arc::new(Notify::new());
        // The file watcher starts before the first scan, so no change falls between them.
        let file_events = watch_dir(&self.inner.layout.keys, Arc::clone(&wake));
        let owned_prefix = prefix.to_owned();
        let initial = self.blocking(move |layout| layout.scan(&owned_prefix)).await?;

        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let stop = self.inner.cancel.child_token();
        let scanner = Scanner {
            layout: Arc::clone(&self.inner.layout),
            tracker: self.inner.tracker.clone(),
            prefix: prefix.to_owned(),
            wake,
            stop: stop.clone(),
        };
        self.inner.tracker.spawn(scanner.run(initial, tx, file_events));
        Ok(Box::pin(FileWatch {
            events: rx,
            _stop: stop.drop_guard(),
            _store: Arc::clone(&self.inner),
        }))
    }
}

/// Starts a file watcher that wakes `wake` on any change in `dir`. `None` when the platform
/// refuses one (e.g. out of inotify watches): polling alone then finds the changes.
fn watch_dir(dir: &Path, wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    // Reading files (our own scans included) raises access events; waking on those would make
    // every scan trigger the next one and spin.
    let handler = move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            wake.notify_one();
        }
    };
    let started = notify::recommended_watcher(handler)
        .and_then(|mut w| w.watch(dir, notify::RecursiveMode::NonRecursive).map(|()| w));
    match started {
        Ok(watcher) => Some(watcher),
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "no file events; watching by polling");
            None
        }
    }
}

/// The task behind one watch: rescans on file events and on a timer, and sends the difference.
struct Scanner {
    layout: Arc<Layout>,
    tracker: TaskTracker,
    prefix: String,
    wake: Arc<Notify>,
    /// Fires when the watch stream or the store is dropped.
    stop: CancellationToken,
}

impl Scanner {
    async fn run(
        self,
        initial: BTreeMap<String, Vec<u8>>,
        events: mpsc::Sender<WatchEvent>,
        // Held, not read: dropping it stops the file events.
        _file_events: Option<notify::RecommendedWatcher>,
    ) {
        let mut last = BTreeMap::new();
        let mut current = initial;
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Warn once per run of failed scans, not at every tick.
        let mut failing = false;
        loop {
            for event in diff(&last, &current) {
                tokio::select! {
                    () = self.stop.cancelled() => return,
                    sent = events.send(event) => if sent.is_err() { return },
                }
            }
            last = current;
            tokio::select! {
                () = self.stop.cancelled() => return,
                () = self.wake.notified() => {}
                _ = ticks.tick() => {}
            }
            let layout = Arc::clone(&self.layout);
            let prefix = self.prefix.clone();
            current = match run_blocking(&self.tracker, move || layout.scan(&prefix)).await {
                Ok(snapshot) => {
                    failing = false;
                    snapshot
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!(prefix = %self.prefix, error = %e, "file store scan failed");
                    }
                    failing = true;
                    // Keep the last view and try again at the next tick.
                    last.clone()
                }
            };
        }
    }
}

/// The events that turn `old` into `new`: deletes first, then puts, each in key order.
fn diff(old: &BTreeMap<String, Vec<u8>>, new: &BTreeMap<String, Vec<u8>>) -> Vec<WatchEvent> {
    let deletes = old
        .keys()
        .filter(|key| !new.contains_key(*key))
        .map(|key| WatchEvent::Delete { key: key.clone() });
    let puts = new
        .iter()
        .filter(|(key, value)| old.get(*key) != Some(*value))
        .map(|(key, value)| WatchEvent::Put { key: key.clone(), value: value.clone() });
    deletes.chain(puts).collect()
}

/// The events of one watch. It holds the store, so the watch runs for as long as it is held.
struct FileWatch {
    events: mpsc::Receiver<WatchEvent>,
    /// Stops the scanner task when the stream is dropped.
    _stop: DropGuard,
    _store: Arc<Inner>,
}

impl Stream for FileWatch {
    type Item = WatchEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.get_mut().events.poll_recv(cx)
    }
}

/// Where the files are. All methods block; callers run them through [`run_blocking`].
struct Layout {
    root: PathBuf,
    keys: PathBuf,
    leases: PathBuf,
}

/// Whether each lease seen so far in one scan is live, so a scan reads each lease file once.
type LeaseCache = HashMap<LeaseId, bool>;

impl Layout {
    fn lease_path(&self, id: LeaseId) -> PathBuf {
        self.leases.join(id.to_string())
    }

    fn write_lease(&self, id: LeaseId, record: &LeaseRecord) -> Result<()> {
        write_atomic(&self.leases, &id.to_string(), record.render().as_bytes())
    }

    fn read_lease(&self, id: LeaseId) -> Result<Option<LeaseRecord>> {
        let path = self.lease_path(id);
        let Some(content) = read_if_present(&path)? else {
            return Ok(None);
        };
        LeaseRecord::parse(&content).map(Some).ok_or_else(|| Error::Malformed {
            key: path.display().to_string(),
            reason: "not a lease record".into(),
        })
    }

    /// Whether `id` is live. An expired lease file is removed on sight.
    fn lease_is_live(&self, id: LeaseId, cache: &mut LeaseCache) -> Result<bool> {
        if let Some(live) = cache.get(&id) {
            return Ok(*live);
        }
        let live = match self.read_lease(id)? {
            Some(record) if record.is_live(now_ms()) => true,
            Some(_) => {
                remove_if_present(&self.lease_path(id))?;
                false
            }
            None => false,
        };
        cache.insert(id, live);
        Ok(live)
    }

    /// The value in key file `name`, or `None` when absent or bound to a dead lease (in which
    /// case the file is removed).
    fn live_value(&self, name: &str, cache: &mut LeaseCache) -> Result<Option<Vec<u8>>> {
        let path = self.keys.join(name);
        let Some(record) = self.read_key(&path)? else {
            return Ok(None);
        };
        match record.lease {
            Some(id) if !self.lease_is_live(id, cache)? => {
                // Re-read just before removing, to leave alone a value another process has
                // written over the dead one in the meantime.
                if self.read_key(&path)?.is_some_and(|again| again.lease == Some(id)) {
                    remove_if_present(&path)?;
                }
                Ok(None)
            }
            _ => Ok(Some(record.value)),
        }
    }

    fn read_key(&self, path: &Path) -> Result<Option<KeyRecord>> {
        let Some(content) = read_if_present(path)? else {
            return Ok(None);
        };
        KeyRecord::parse(content).map(Some).ok_or_else(|| Error::Malformed {
            key: path.display().to_string(),
            reason: "no lease line".into(),
        })
    }

    /// Every live key under `prefix`, removing dead ones on the way.
    fn scan(&self, prefix: &str) -> Result<BTreeMap<String, Vec<u8>>> {
        let mut cache = LeaseCache::new();
        let mut found = BTreeMap::new();
        for (name, key) in self.key_names()? {
            if !key.starts_with(prefix) {
                continue;
            }
            if let Some(value) = self.live_value(&name, &mut cache)? {
                found.insert(key, value);
            }
        }
        Ok(found)
    }

    /// File names in `keys/` with the keys they encode; temp and foreign files are skipped.
    fn key_names(&self) -> Result<Vec<(String, String)>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.keys)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(key) = decode_key(name) {
                names.push((name.to_owned(), key));
            }
        }
        Ok(names)
    }

    /// Removes every expired lease file. Reads remove those that keys refer to, but a lease no
    /// key refers to (its process died between grant and put) would otherwise stay forever.
    /// Grants are rare, so sweeping at each one costs little.
    fn sweep_leases(&self) -> Result<()> {
        let now = now_ms();
        for entry in std::fs::read_dir(&self.leases)? {
            let name = entry?.file_name();
            let Some(id) = name.to_str().and_then(|n| n.parse::<LeaseId>().ok()) else {
                continue;
            };
            // Unreadable or foreign files are not this sweep's to judge.
            if let Ok(Some(record)) = self.read_lease(id)
                && !record.is_live(now)
            {
                remove_if_present(&self.lease_path(id))?;
            }
        }
        Ok(())
    }

    /// Removes the lease file, then every key bound to it. Removing the lease first makes all
    /// its keys absent at once, even before their files are gone.
    fn remove_lease(&self, id: LeaseId) -> Result<()> {
        remove_if_present(&self.lease_path(id))?;
        let mut cache = LeaseCache::from([(id, false)]);
        for (name, _) in self.key_names()? {
            self.live_value(&name, &mut cache)?;
        }
        Ok(())
    }
}
