//! `switchyard frontend`: the OpenAI-compatible HTTP frontend.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use switchyard_frontend::{
    AdmissionConfig, ApiKeys, DisaggConfig, FrontendConfig, HttpLimits, HttpTls,
};
use switchyard_router::{KvPolicyConfig, PolicyConfig, PolicyKind};
use switchyard_runtime::Discovery;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;

use super::plane::PlaneArgs;
use super::store::StoreArgs;
use crate::env_names as env;

/// Connections the kernel queues for the frontend before it accepts them.
const LISTEN_BACKLOG: u32 = 4096;

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address the HTTP server binds.
    #[arg(long, env = env::HTTP_HOST, default_value = "0.0.0.0")]
    pub http_host: String,

    /// Port of the HTTP server.
    #[arg(long, env = env::HTTP_PORT, default_value_t = 8000)]
    pub http_port: u16,

    /// How the frontend picks a worker: kv (prefix-cache aware, from the workers' KV events
    /// and load), round-robin, random, least-loaded or power-of-two.
    #[arg(long, env = env::ROUTER_MODE, default_value = "kv")]
    pub router_mode: PolicyKind,

    #[command(flatten)]
    pub kv: KvArgs,

    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = env::MAX_BODY_BYTES, default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Longest a request may take end to end, in seconds.
    #[arg(long, env = env::REQUEST_TIMEOUT_SECS, default_value_t = 600)]
    pub request_timeout_secs: u64,

    /// An API key clients must send as `Authorization: Bearer KEY`; repeat the flag (or
    /// separate keys with commas in the variable) for several. None: no key needed.
    #[arg(long = "api-key", env = env::API_KEY, value_delimiter = ',', hide_env_values = true)]
    pub api_keys: Vec<String>,

    /// A file of API keys, one per line (`#` starts a comment line), added to --api-key.
    #[arg(long, env = env::API_KEY_FILE)]
    pub api_key_file: Option<std::path::PathBuf>,

    /// With API keys, /health, /live and /metrics want a key too (open by default, for
    /// probes and scrapers).
    #[arg(long, env = env::API_KEY_PROTECT_OPS)]
    pub api_key_protect_ops: bool,

    /// HTTPS: the server's certificate chain (PEM, its own certificate first); with
    /// --tls-key-file the frontend speaks HTTPS only.
    #[arg(long, env = env::TLS_CERT_FILE, requires = "tls_key_file")]
    pub tls_cert_file: Option<std::path::PathBuf>,

    /// HTTPS: the certificate's private key (PEM).
    #[arg(long, env = env::TLS_KEY_FILE, requires = "tls_cert_file")]
    pub tls_key_file: Option<std::path::PathBuf>,

    /// Admission control: requests one instance may hold from this frontend at once (a
    /// model's places are this × its instances); 0 turns admission control off.
    #[arg(long, env = env::MAX_INFLIGHT_PER_INSTANCE, default_value_t = 512)]
    pub max_inflight_per_instance: usize,

    /// Admission control: requests that may wait for a place (over all models); past it the
    /// next ones get 429 with Retry-After at once.
    #[arg(long, env = env::MAX_QUEUED_REQUESTS, default_value_t = 1024)]
    pub max_queued_requests: usize,

    /// Admission control: longest wait for a place, in seconds, before 429.
    #[arg(long, env = env::QUEUE_TIMEOUT_SECS, default_value_t = 10)]
    pub queue_timeout_secs: u64,

    /// Open HTTP connections at most; past it new ones are closed unanswered.
    #[arg(long, env = env::MAX_CONNECTIONS, default_value_t = 10_000)]
    pub max_connections: usize,

    /// Longest wait for a request's headers, in seconds; also closes a kept-alive connection
    /// idle that long.
    #[arg(long, env = env::HTTP_HEADER_TIMEOUT_SECS, default_value_t = 30)]
    pub http_header_timeout_secs: u64,

    /// Times a response may move to another instance when its instance fails mid-way (the
    /// stream breaks, stalls, or the worker gives it up); 0 fails it with the instance.
    #[arg(long, env = env::MIGRATION_LIMIT, default_value_t = 3)]
    pub migration_limit: u32,

    /// Longest silence between two chunks of a response, in seconds, before its instance is
    /// taken for stuck and the response moves on.
    #[arg(long, env = env::STALL_TIMEOUT_SECS, default_value_t = 30)]
    pub stall_timeout_secs: u64,
}

/// The knobs of routing: the `kv` mode's costs and the prefill/decode split (shared by the
/// frontend and the bench's topologies).
#[derive(Debug, Clone, Args)]
pub struct KvArgs {
    /// kv mode: weight of one prompt block to prefill against one block of running KV.
    #[arg(long, env = env::KV_PREFILL_LOAD_SCALE, default_value_t = 16.0)]
    pub kv_prefill_load_scale: f64,

    /// kv mode: cost of each queued or running request on a worker, in blocks.
    #[arg(long, env = env::KV_ACTIVE_REQUEST_WEIGHT, default_value_t = 1.0)]
    pub kv_active_request_weight: f64,

    /// kv mode: softmax temperature over normalized costs; 0 picks the cheapest.
    #[arg(long, env = env::KV_TEMPERATURE, default_value_t = 0.0)]
    pub kv_temperature: f64,

    /// kv mode, hot-spot guard: pass over a worker that would hold more than this many times
    /// the mean requests per worker (plus --kv-balance-slack); 0 turns the guard off.
    #[arg(long, env = env::KV_BALANCE_RATIO, default_value_t = 1.25)]
    pub kv_balance_ratio: f64,

    /// kv mode, hot-spot guard: requests a worker may hold above the ratio × the mean.
    #[arg(long, env = env::KV_BALANCE_SLACK, default_value_t = 2.0)]
    pub kv_balance_slack: f64,

    /// How long a routing decision stands in for the KV events of a worker that sends none,
    /// in seconds.
    #[arg(long, env = env::KV_DECISION_TTL_SECS, default_value_t = 120)]
    pub kv_decision_ttl_secs: u64,

    /// Prefill/decode split: a prompt whose part not cached on the chosen decode worker is at
    /// most this many tokens is prefilled on that decode worker.
    #[arg(long, env = env::MAX_LOCAL_PREFILL_TOKENS, default_value_t = DisaggConfig::default().max_local_prefill_tokens)]
    pub max_local_prefill_tokens: usize,

    /// Prefill/decode split: a prefill worker with more requests than this queued or running
    /// gets no more; with every one over it, the decode worker prefills.
    #[arg(long, env = env::MAX_PREFILL_QUEUE, default_value_t = DisaggConfig::default().max_prefill_queue)]
    pub max_prefill_queue: u32,

    /// Prefill/decode split: seconds to wait for a prefill worker's first token and KV
    /// handle before the decode worker prefills instead.
    #[arg(long, env = env::PREFILL_TIMEOUT_SECS, default_value_t = 30)]
    pub prefill_timeout_secs: u64,
}

impl HttpArgs {
    pub fn config(&self) -> anyhow::Result<FrontendConfig> {
        let mut keys = self.api_keys.clone();
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the API key file {}", path.display()))?;
            let from_file = ApiKeys::parse_file(&text);
            anyhow::ensure!(
                !from_file.is_empty(),
                "the API key file {} holds no key",
                path.display()
            );
            keys.extend(from_file);
        }
        let tls = match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(HttpTls::load(cert, key)?),
            _ => None,
        };
        Ok(FrontendConfig {
            router_mode: self.router_mode,
            policy: PolicyConfig {
                kv: KvPolicyConfig {
                    prefill_load_scale: self.kv.kv_prefill_load_scale,
                    active_request_weight: self.kv.kv_active_request_weight,
                    temperature: self.kv.kv_temperature,
                    balance_ratio: self.kv.kv_balance_ratio,
                    balance_slack: self.kv.kv_balance_slack,
                },
            },
            kv_decision_ttl: Duration::from_secs(self.kv.kv_decision_ttl_secs),
            disagg: DisaggConfig {
                max_local_prefill_tokens: self.kv.max_local_prefill_tokens,
                max_prefill_queue: self.kv.max_prefill_queue,
            },
            prefill_timeout: Duration::from_secs(self.kv.prefill_timeout_secs),
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            migration_limit: self.migration_limit,
            stall_timeout: Duration::from_secs(self.stall_timeout_secs.max(1)),
            api_keys: ApiKeys::new(keys, self.api_key_protect_ops),
            http: HttpLimits {
                max_connections: self.max_connections,
                header_timeout: Duration::from_secs(self.http_header_timeout_secs.max(1)),
                ..HttpLimits::default()
            },
            tls,
            admission: AdmissionConfig {
                max_inflight_per_instance: self.max_inflight_per_instance,
                max_queued: self.max_queued_requests,
                queue_timeout: Duration::from_secs(self.queue_timeout_secs),
            },
            ..FrontendConfig::default()
        })
    }

    /// Binds the HTTP listener with a backlog of [`LISTEN_BACKLOG`], so a burst of new
    /// connections waits to be accepted rather than being refused.
    pub async fn bind(&self) -> anyhow::Result<TcpListener> {
        let (host, port) = (self.http_host.as_str(), self.http_port);
        let context = || format!("binding the HTTP server to {host}:{port}");
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(context)?
            .next()
            .with_context(|| format!("{host} resolves to no address"))?;
        let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
            .with_context(context)?;
        socket.set_reuseaddr(true).with_context(context)?;
        socket.bind(addr).with_context(context)?;
        socket.listen(LISTEN_BACKLOG).with_context(context)
    }
}

#[derive(Debug, Clone, Args)]
pub struct FrontendArgs {
    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub plane: PlaneArgs,
}

pub async fn run(args: FrontendArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let discovery = args.store.open().await?;
    let listener = args.http.bind().await?;
    let scheme = if args.http.tls_cert_file.is_some() { "https" } else { "http" };
    println!("switchyard frontend listening on {scheme}://{}", listener.local_addr()?);
    serve(listener, &args.http, &args.plane, discovery, shutdown).await
}

/// Serves the frontend on an already-bound listener (shared with `switchyard up`).
pub async fn serve(
    listener: TcpListener,
    http: &HttpArgs,
    plane: &PlaneArgs,
    discovery: Discovery,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = plane.client().await?;
    // Kept alive while the frontend runs: the TCP event plane follows it for workers' streams.
    let instances = discovery
        .watch_instances(shutdown.child_token())
        .await
        .context("watching discovery for the event plane")?;
    let mut config = http.config()?;
    config.events = Some(plane.event_subscriber(discovery.namespace(), &instances).await?);
    let served = switchyard_frontend::serve(listener, config, discovery, client, shutdown).await;
    drop(instances);
    served.context("frontend failed")
}
