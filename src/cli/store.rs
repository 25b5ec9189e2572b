//! Flags that choose the discovery store and namespace, shared by every subcommand.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use switchyard_runtime::store::file::FileStore;
use switchyard_runtime::store::memory::MemoryStore;
use switchyard_runtime::{Discovery, KvStore};

use crate::env_names as env;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// A directory shared by the processes of one machine.
    File,
    /// In this process only (`switchyard up --store memory`).
    Memory,
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Discovery store.
    #[arg(long, env = env::STORE, value_enum, default_value_t = StoreKind::File)]
    pub store: StoreKind,

    /// Directory of the file store [default: <temp dir>/switchyard-store].
    #[arg(long, env = env::STORE_DIR)]
    pub store_dir: Option<PathBuf>,

    /// Namespace: frontends see only the workers of their namespace.
    #[arg(long, env = env::NAMESPACE, default_value = "default")]
    pub namespace: String,

    /// Lease TTL in seconds: a worker that dies leaves routing within this time.
    #[arg(long, env = env::LEASE_TTL_SECS, default_value_t = 10.0)]
    pub lease_ttl_secs: f64,
}

impl StoreArgs {
    pub fn store_dir(&self) -> PathBuf {
        self.store_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("switchyard-store"))
    }

    pub fn lease_ttl(&self) -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(self.lease_ttl_secs)
            .ok()
            .filter(|ttl| *ttl >= Duration::from_millis(300))
            .with_context(|| format!("--lease-ttl-secs {} must be >= 0.3", self.lease_ttl_secs))
    }

    /// Opens the store for a process that runs on its own (not inside `switchyard up`).
    pub fn open(&self) -> anyhow::Result<Discovery> {
        let store: Arc<dyn KvStore> = match self.store {
            StoreKind::File => {
                let dir = self.store_dir();
                Arc::new(
                    FileStore::open(&dir)
                        .with_context(|| format!("opening the file store in {}", dir.display()))?,
                )
            }
            StoreKind::Memory => anyhow::bail!(
                "--store memory lives inside one process: use it with `switchyard up`, \
                 or use --store file for separate processes"
            ),
        };
        Ok(Discovery::new(store, self.namespace.clone()))
    }

    /// A store living in this process, for `switchyard up --store memory`.
    pub fn open_memory(&self) -> Discovery {
        Discovery::new(Arc::new(MemoryStore::new()), self.namespace.clone())
    }
}
