//! The discovery store seam: a small key-value store with leases and prefix watches.
//!
//! Implementations: [`memory::MemoryStore`] (one process), [`file::FileStore`] (a directory
//! shared by the processes of one machine). Every implementation passes [`conformance`].

pub mod conformance;
pub mod etcd;
pub mod file;
pub mod memory;

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;

use crate::Result;

/// Identifies a lease; keys bound to it vanish when it expires or is revoked.
pub type LeaseId = u64;

/// A change under a watched prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put { key: String, value: Vec<u8> },
    Delete { key: String },
}

/// Events of one watch; dropping it ends the watch.
pub type WatchStream = Pin<Box<dyn Stream<Item = WatchEvent> + Send>>;

/// A key-value store with leases and watches. Keys are `/`-separated paths.
#[async_trait]
pub trait KvStore: Send + Sync + 'static {
    /// Grants a lease that expires `ttl` after it was granted or last kept alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId>;
    /// Refreshes `lease`; [`crate::Error::LeaseExpired`] if it expired already.
    async fn keep_alive(&self, lease: LeaseId) -> Result<()>;
    /// Revokes `lease` and deletes every key bound to it, before it returns. Revoking a lease
    /// that is gone already is not an error.
    async fn revoke_lease(&self, lease: LeaseId) -> Result<()>;
    /// Writes `key`, bound to `lease` when given (and unbound from any lease it had);
    /// [`crate::Error::LeaseExpired`] if `lease` expired or was revoked.
    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()>;
    /// Reads `key`; `None` when absent or bound to an expired lease.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    /// Every live key under `prefix`, sorted by key.
    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;
    /// Deletes `key`; whether it existed.
    async fn delete(&self, key: &str) -> Result<bool>;
    /// The live keys under `prefix` as `Put` events, then every change after them, including
    /// the `Delete` of keys whose lease expired. A store may fold changes that come close
    /// together (the file store diffs snapshots): a put and a delete in between may not show,
    /// and re-putting the same value may not be an event; but the events always lead to the
    /// store's current state. Dropping the stream ends the watch.
    async fn watch_prefix(&self, prefix: &str) -> Result<WatchStream>;
}

/// How long a lease lives without keep-alives unless configured otherwise.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
