//! Flags that choose the discovery store and namespace, shared by every subcommand.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use switchyard_runtime::store::etcd::{EtcdSecurity, EtcdStore};
use switchyard_runtime::store::file::FileStore;
use switchyard_runtime::store::memory::MemoryStore;
use switchyard_runtime::{Discovery, KvStore};

use crate::env_names as env;

const ETCD_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    /// A directory shared by the processes of one machine.
    File,
    /// etcd: for workers and frontends on several machines.
    Etcd,
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

    /// etcd endpoints, comma-separated [default: http://127.0.0.1:2379; also read from
    /// ETCD_ENDPOINTS].
    #[arg(long, env = env::ETCD_ENDPOINTS, value_delimiter = ',')]
    pub etcd_endpoints: Vec<String>,

    /// etcd user (etcd's authentication), with --etcd-password.
    #[arg(long, env = env::ETCD_USER)]
    pub etcd_user: Option<String>,

    /// etcd password.
    #[arg(long, env = env::ETCD_PASSWORD, hide_env_values = true)]
    pub etcd_password: Option<String>,

    /// PEM file of the CA that signed etcd's certificate (endpoints then given as https://).
    #[arg(long, env = env::ETCD_TLS_CA)]
    pub etcd_tls_ca: Option<PathBuf>,

    /// PEM client certificate for an etcd that verifies clients (with --etcd-tls-key).
    #[arg(long, env = env::ETCD_TLS_CERT)]
    pub etcd_tls_cert: Option<PathBuf>,

    /// PEM key of --etcd-tls-cert.
    #[arg(long, env = env::ETCD_TLS_KEY)]
    pub etcd_tls_key: Option<PathBuf>,

    /// Namespace: frontends see only the workers of their namespace.
    #[arg(long, env = env::NAMESPACE, default_value = "default")]
    pub namespace: String,

    /// Lease TTL in seconds: a worker that dies leaves routing within this time.
    #[arg(long, env = env::LEASE_TTL_SECS, default_value_t = 10.0)]
    pub lease_ttl_secs: f64,
}

impl StoreArgs {
    /// The etcd password, for a child's environment (not its command line).
    pub fn secret_env(&self) -> Vec<(&'static str, String)> {
        self.etcd_password.iter().map(|p| (env::ETCD_PASSWORD, p.clone())).collect()
    }

    pub fn store_dir(&self) -> PathBuf {
        self.store_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("switchyard-store"))
    }

    pub fn lease_ttl(&self) -> anyhow::Result<Duration> {
        Duration::try_from_secs_f64(self.lease_ttl_secs)
            .ok()
            .filter(|ttl| *ttl >= Duration::from_millis(300))
            .with_context(|| format!("--lease-ttl-secs {} must be >= 0.3", self.lease_ttl_secs))
    }

    pub fn etcd_endpoints(&self) -> Vec<String> {
        if !self.etcd_endpoints.is_empty() {
            return self.etcd_endpoints.clone();
        }
        let compat = env::compat(env::ETCD_ENDPOINTS_COMPAT);
        let list = compat.as_deref().unwrap_or("http://127.0.0.1:2379");
        list.split(',').map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()).collect()
    }

    /// Opens the store for a process that runs on its own (not inside `switchyard up`).
    pub async fn open(&self) -> anyhow::Result<Discovery> {
        let store: Arc<dyn KvStore> = match self.store {
            StoreKind::File => {
                let dir = self.store_dir();
                Arc::new(
                    FileStore::open(&dir)
                        .with_context(|| format!("opening the file store in {}", dir.display()))?,
                )
            }
            StoreKind::Etcd => {
                let endpoints = self.etcd_endpoints();
                let security = EtcdSecurity {
                    user: self.etcd_user.clone(),
                    password: self.etcd_password.clone(),
                    tls_ca: self.etcd_tls_ca.clone(),
                    tls_cert: self.etcd_tls_cert.clone(),
                    tls_key: self.etcd_tls_key.clone(),
                };
                let store = EtcdStore::connect_secure(&endpoints, ETCD_CONNECT_TIMEOUT, &security)
                    .await
                    .with_context(|| {
                        format!(
                            "connecting to etcd at {} (is it running? set --etcd-endpoints)",
                            endpoints.join(",")
                        )
                    })?;
                Arc::new(store)
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
