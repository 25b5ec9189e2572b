//! `switchyard up`: a whole local topology in one command — a frontend and N simulated
//! workers on the embedded default (file store in a fresh directory, TCP request plane);
//! aggregated workers, or prefill and decode workers for a split topology.
//!
//! Workers are child processes running `switchyard worker`, the same code a container runs;
//! with `--store memory` they run as tasks of this process instead.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchyard_runtime::Discovery;
use switchyard_worker::WorkerConfig;
use switchyard_worker::service::new_instance_id;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::frontend::HttpArgs;
use super::plane::PlaneArgs;
use super::store::{StoreArgs, StoreKind};
use super::worker::{ServeArgs, WorkerRole};
use crate::env_names as env;

/// How long the workers get to register before `up` gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Number of aggregated workers (unless --prefill-workers / --decode-workers are given).
    #[arg(long, env = env::UP_WORKERS, default_value_t = 2)]
    pub workers: usize,

    /// Prefill workers of a split topology (given with --decode-workers, they replace the
    /// aggregated --workers).
    #[arg(long, env = env::UP_PREFILL_WORKERS, default_value_t = 0)]
    pub prefill_workers: usize,

    /// Decode workers of a split topology.
    #[arg(long, env = env::UP_DECODE_WORKERS, default_value_t = 0)]
    pub decode_workers: usize,

    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub plane: PlaneArgs,

    /// Where child processes write their output (`worker-N.log`, `frontend.log`) instead of
    /// this process's stdout and stderr. Set by callers such as the bench, not a flag.
    #[arg(skip)]
    pub child_log_dir: Option<PathBuf>,

    /// `--log` filter of the child processes. Set by callers, not a flag.
    #[arg(skip)]
    pub child_log_filter: Option<String>,

    /// Run the frontend as a child process (`switchyard frontend`) rather than in this one,
    /// so that its CPU and memory are its own (the bench measures them). Not a flag.
    #[arg(skip)]
    pub frontend_process: bool,
}

impl UpArgs {
    /// The role of each worker to start.
    pub fn roles(&self) -> anyhow::Result<Vec<WorkerRole>> {
        if self.prefill_workers == 0 && self.decode_workers == 0 {
            if self.workers == 0 {
                bail!("--workers must be at least 1");
            }
            return Ok(vec![WorkerRole::Aggregated; self.workers]);
        }
        if self.decode_workers == 0 {
            bail!(
                "--prefill-workers needs --decode-workers ≥ 1: prefill workers serve no whole requests"
            );
        }
        let mut roles = vec![WorkerRole::Prefill; self.prefill_workers];
        roles.extend(std::iter::repeat_n(WorkerRole::Decode, self.decode_workers));
        Ok(roles)
    }

    /// How the topology reads in a sentence, e.g. `2 prefill + 2 decode workers`.
    pub fn describe(&self) -> String {
        if self.prefill_workers == 0 && self.decode_workers == 0 {
            format!("{} worker(s)", self.workers)
        } else {
            format!("{} prefill + {} decode worker(s)", self.prefill_workers, self.decode_workers)
        }
    }

    /// The arguments `switchyard up FLAGS…` would run with (the environment read as usual), for
    /// callers that start a local topology themselves, such as the bench's topology runner.
    pub fn from_flags<S: AsRef<str>>(flags: &[S]) -> Result<UpArgs, clap::Error> {
        #[derive(clap::Parser)]
        struct Up {
            #[command(flatten)]
            up: UpArgs,
        }
        let argv = std::iter::once("up").chain(flags.iter().map(AsRef::as_ref));
        <Up as clap::Parser>::try_parse_from(argv).map(|parsed| parsed.up)
    }
}

pub async fn run(args: UpArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if args.serve.engine != super::worker::EngineKind::Mocker {
        anyhow::bail!(
            "`up` runs simulated workers only; start a worker per engine server with \
             `switchyard worker --engine …`"
        );
    }
    let listener = args.http.bind().await?;
    let topology = LocalTopology::start(&args, listener, shutdown.clone()).await?;
    println!(
        "switchyard is up: {} serving {}; OpenAI API at {}/v1 (Ctrl-C stops)",
        args.describe(),
        args.serve.served_name(),
        topology.url()
    );
    topology.wait().await
}

/// A running local topology: workers, the store they register in, and a frontend.
pub struct LocalTopology {
    workers: Topology,
    frontend: tokio::task::JoinHandle<anyhow::Result<()>>,
    /// The frontend's PID when it runs as a child process.
    frontend_pid: Option<u32>,
    url: String,
    stop: CancellationToken,
}

impl LocalTopology {
    /// Starts the workers, waits until every one has registered, then starts the frontend on
    /// `listener`. Everything stops when `shutdown` fires (or [`LocalTopology::stop`]).
    pub async fn start(
        args: &UpArgs,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> anyhow::Result<LocalTopology> {
        let roles = args.roles()?;
        let stop = shutdown.child_token();
        let workers = Topology::start(args, &roles, stop.clone()).await?;
        if let Err(e) = workers.wait_ready(roles.len(), &stop).await {
            stop.cancel();
            workers.stop().await;
            return Err(e);
        }
        let addr = listener.local_addr()?;
        let host =
            if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
        let scheme = if args.http.tls_cert_file.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{host}:{}", addr.port());
        if args.frontend_process {
            // The child binds the port itself: free it first.
            drop(listener);
            let started =
                start_frontend_child(args, &workers.store, &host, addr.port(), &stop).await;
            return match started {
                Ok((frontend, pid)) => {
                    Ok(LocalTopology { workers, frontend, frontend_pid: Some(pid), url, stop })
                }
                Err(e) => {
                    stop.cancel();
                    workers.stop().await;
                    Err(e)
                }
            };
        }
        let (http, plane) = (args.http.clone(), args.plane.clone());
        let (discovery, token) = (workers.discovery.clone(), stop.clone());
        let frontend = tokio::spawn(async move {
            super::frontend::serve(listener, &http, &plane, discovery, token).await
        });
        Ok(LocalTopology { workers, frontend, frontend_pid: None, url, stop })
    }

    /// The child processes and their PIDs: `frontend` (when it runs as one), `worker-N`.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let frontend = self.frontend_pid.map(|pid| ("frontend".to_owned(), pid));
        frontend.into_iter().chain(self.workers.pids.iter().cloned()).collect()
    }

    /// Base URL of the frontend, e.g. `http://127.0.0.1:8000`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Runs until shutdown (or until the frontend fails), then stops everything.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        let result = tokio::select! {
            () = self.stop.cancelled() => None,
            joined = &mut self.frontend => Some(joined),
        };
        self.stop.cancel();
        let result = match result {
            Some(joined) => joined?,
            None => (&mut self.frontend).await?,
        };
        self.workers.stop().await;
        result
    }

    /// Stops the frontend and the workers and waits for them.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.wait().await
    }
}

/// The workers of one `up` run and the store they register in.
struct Topology {
    discovery: Discovery,
    /// The store as the workers were told it (a fresh directory when `up` made one).
    store: StoreArgs,
    /// Worker processes by label (`worker-N`), none when they run in-process.
    pids: Vec<(String, u32)>,
    tasks: TaskTracker,
    /// Removed on stop when `up` made it.
    temp_store_dir: Option<PathBuf>,
}

impl Topology {
    async fn start(
        args: &UpArgs,
        roles: &[WorkerRole],
        shutdown: CancellationToken,
    ) -> anyhow::Result<Topology> {
        let tasks = TaskTracker::new();
        let lease_ttl = args.store.lease_ttl()?;
        let topology = match args.store.store {
            StoreKind::Memory => {
                let discovery = args.store.open_memory();
                for &role in roles {
                    let id = new_instance_id();
                    let namespace = discovery.namespace();
                    let listener =
                        super::worker::bind(&args.plane, "127.0.0.1", 0, namespace, &id).await?;
                    let kv_transfer = super::worker::bind_kv_transfer(role, "127.0.0.1", 0).await?;
                    let config = WorkerConfig {
                        instance_id: Some(id),
                        role: role.proto(),
                        lease_ttl,
                        ..WorkerConfig::default()
                    };
                    let (serve, discovery, stop) =
                        (args.serve.clone(), discovery.clone(), shutdown.clone());
                    tasks.spawn(async move {
                        let result = super::worker::serve(
                            listener,
                            kv_transfer,
                            &serve,
                            None,
                            config,
                            discovery,
                            stop,
                        )
                        .await;
                        if let Err(e) = result {
                            warn!(error = format!("{e:#}"), "worker stopped");
                        }
                    });
                }
                Topology {
                    discovery,
                    store: args.store.clone(),
                    pids: Vec::new(),
                    tasks,
                    temp_store_dir: None,
                }
            }
            StoreKind::File | StoreKind::Etcd => {
                let (store, temp_store_dir) = match &args.store.store_dir {
                    Some(_) => (args.store.clone(), None),
                    None if args.store.store == StoreKind::Etcd => (args.store.clone(), None),
                    None => {
                        let dir = std::env::temp_dir()
                            .join(format!("switchyard-up-{}", std::process::id()));
                        std::fs::create_dir_all(&dir)
                            .with_context(|| format!("creating {}", dir.display()))?;
                        (
                            StoreArgs { store_dir: Some(dir.clone()), ..args.store.clone() },
                            Some(dir),
                        )
                    }
                };
                let discovery = store.open().await?;
                let mut pids = Vec::new();
                for (i, role) in roles.iter().enumerate() {
                    let label = match role {
                        WorkerRole::Aggregated => format!("worker-{i}"),
                        role => format!("{}-{i}", role.name()),
                    };
                    let mut command = child_command(args, &label)?;
                    let child = command
                        .args(worker_args(&store, &args.serve))
                        .args(["--role", role.name()])
                        .args(args.plane.to_flags())
                        .envs(args.plane.secret_env())
                        .envs(store.secret_env())
                        .spawn()
                        .with_context(|| format!("starting worker {i}"))?;
                    pids.extend(child.id().map(|pid| (label, pid)));
                    tasks.spawn(supervise(i, child, shutdown.clone()));
                }
                Topology { discovery, store, pids, tasks, temp_store_dir }
            }
        };
        topology.tasks.close();
        Ok(topology)
    }

    async fn wait_ready(&self, workers: usize, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let watch = self.discovery.watch_instances(shutdown.child_token()).await?;
        let mut rx = watch.subscribe();
        let ready = async {
            loop {
                let live = rx.borrow_and_update().len();
                if live >= workers {
                    return Ok(());
                }
                if self.tasks.len() < workers {
                    bail!("a worker exited during start-up (see its log above)");
                }
                tokio::select! {
                    changed = rx.changed() => changed.context("discovery watch stopped")?,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    () = shutdown.cancelled() => bail!("stopped before the workers were ready"),
                }
            }
        };
        tokio::time::timeout(READY_TIMEOUT, ready)
            .await
            .context("workers did not register within 60 s")?
    }

    async fn stop(self) {
        self.tasks.wait().await;
        if let Some(dir) = self.temp_store_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// `switchyard` as a child: its output to `<child_log_dir>/<label>.log` when set, its log
/// filter from `child_log_filter`, killed if dropped.
fn child_command(args: &UpArgs, label: &str) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("locating the switchyard binary")?;
    let mut command = Command::new(exe);
    command.stdin(Stdio::null()).kill_on_drop(true);
    if let Some(filter) = &args.child_log_filter {
        command.env(env::LOG, filter);
    }
    if let Some(dir) = &args.child_log_dir {
        let path = dir.join(format!("{label}.log"));
        let file =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        command.stdout(file.try_clone()?).stderr(file);
    }
    Ok(command)
}

/// The store flags every child gets: the same store the workers register in.
fn store_flags(store: &StoreArgs) -> Vec<OsString> {
    let mut args: Vec<OsString> = Vec::new();
    let mut flag = |name: &str, value: String| {
        args.push(format!("--{name}").into());
        args.push(value.into());
    };
    match store.store {
        StoreKind::Etcd => {
            flag("store", "etcd".into());
            flag("etcd-endpoints", store.etcd_endpoints().join(","));
            if let Some(user) = &store.etcd_user {
                flag("etcd-user", user.clone());
            }
            let paths = [
                ("etcd-tls-ca", &store.etcd_tls_ca),
                ("etcd-tls-cert", &store.etcd_tls_cert),
                ("etcd-tls-key", &store.etcd_tls_key),
            ];
            for (name, path) in paths {
                if let Some(path) = path {
                    flag(name, path.display().to_string());
                }
            }
        }
        StoreKind::File | StoreKind::Memory => {
            flag("store", "file".into());
            flag("store-dir", store.store_dir().display().to_string());
        }
    }
    flag("namespace", store.namespace.clone());
    flag("lease-ttl-secs", store.lease_ttl_secs.to_string());
    args
}

/// Starts `switchyard frontend` on `host:port` over the workers' store, and waits until it
/// accepts connections; the task returned supervises it until `stop`.
async fn start_frontend_child(
    args: &UpArgs,
    store: &StoreArgs,
    host: &str,
    port: u16,
    stop: &CancellationToken,
) -> anyhow::Result<(tokio::task::JoinHandle<anyhow::Result<()>>, u32)> {
    let h = &args.http;
    let mut command = child_command(args, "frontend")?;
    command.arg("frontend").args(store_flags(store)).args(args.plane.to_flags());
    command.envs(args.plane.secret_env()).envs(store.secret_env());
    if !h.api_keys.is_empty() {
        command.env(env::API_KEY, h.api_keys.join(","));
    }
    if let Some(file) = &h.api_key_file {
        command.arg("--api-key-file").arg(file);
    }
    if h.api_key_protect_ops {
        command.arg("--api-key-protect-ops");
    }
    if let (Some(cert), Some(key)) = (&h.tls_cert_file, &h.tls_key_file) {
        command.arg("--tls-cert-file").arg(cert).arg("--tls-key-file").arg(key);
    }
    for (name, value) in [
        ("http-host", host.to_owned()),
        ("http-port", port.to_string()),
        ("router-mode", h.router_mode.name().to_owned()),
        ("kv-prefill-load-scale", h.kv.kv_prefill_load_scale.to_string()),
        ("kv-active-request-weight", h.kv.kv_active_request_weight.to_string()),
        ("kv-temperature", h.kv.kv_temperature.to_string()),
        ("kv-balance-ratio", h.kv.kv_balance_ratio.to_string()),
        ("kv-balance-slack", h.kv.kv_balance_slack.to_string()),
        ("kv-decision-ttl-secs", h.kv.kv_decision_ttl_secs.to_string()),
        ("max-body-bytes", h.max_body_bytes.to_string()),
        ("request-timeout-secs", h.request_timeout_secs.to_string()),
        ("migration-limit", h.migration_limit.to_string()),
        ("stall-timeout-secs", h.stall_timeout_secs.to_string()),
        ("max-inflight-per-instance", h.max_inflight_per_instance.to_string()),
        ("max-queued-requests", h.max_queued_requests.to_string()),
        ("queue-timeout-secs", h.queue_timeout_secs.to_string()),
        ("max-connections", h.max_connections.to_string()),
        ("http-header-timeout-secs", h.http_header_timeout_secs.to_string()),
    ] {
        command.arg(format!("--{name}")).arg(value);
    }
    let mut child = command.spawn().context("starting the frontend")?;
    let pid = child.id().context("the frontend exited at once")?;
    let ready = async {
        loop {
            if tokio::net::TcpStream::connect((host, port)).await.is_ok() {
                return Ok(());
            }
            if let Some(status) = child.try_wait()? {
                bail!("the frontend exited during start-up ({status})");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    match tokio::time::timeout(READY_TIMEOUT, ready).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(e),
        Err(_) => bail!("the frontend did not listen on {host}:{port} within 60 s"),
    }
    let stop = stop.clone();
    let task = tokio::spawn(async move {
        tokio::select! {
            status = child.wait() => bail!("the frontend exited ({})", status?),
            () = stop.cancelled() => {}
        }
        if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match tokio::time::timeout(Duration::from_secs(40), child.wait()).await {
            Ok(status) => info!(status = %status?, "frontend stopped"),
            Err(_) => {
                warn!("frontend did not stop in time; killing it");
                let _ = child.kill().await;
            }
        }
        Ok(())
    });
    Ok((task, pid))
}

/// The command line of one worker child: the same flags a user would give.
fn worker_args(store: &StoreArgs, serve: &ServeArgs) -> Vec<OsString> {
    let m = &serve.mocker;
    let mut args: Vec<OsString> = vec!["worker".into()];
    args.extend(["--parent-pid".into(), std::process::id().to_string().into()]);
    args.extend(store_flags(store));
    let mut flag = |name: &str, value: String| {
        args.push(format!("--{name}").into());
        args.push(value.into());
    };
    flag("model-path", serve.model_path.clone());
    if let Some(name) = &serve.model_name {
        flag("model-name", name.clone());
    }
    flag("drain-timeout-secs", serve.drain_timeout_secs.to_string());
    if let Some(parser) = serve.reasoning_parser {
        flag("reasoning-parser", parser.name().to_owned());
    }
    if let Some(parser) = serve.tool_call_parser {
        flag("tool-call-parser", parser.name().to_owned());
    }
    flag("block-size", m.block_size.to_string());
    flag("num-gpu-blocks", m.num_gpu_blocks.to_string());
    flag("max-num-seqs", m.max_num_seqs.to_string());
    flag("max-num-batched-tokens", m.max_num_batched_tokens.to_string());
    flag("speedup-ratio", m.speedup_ratio.to_string());
    flag("prefix-caching", m.prefix_caching.to_string());
    flag("eos-probability", m.eos_probability.to_string());
    flag("context-length", m.context_length.to_string());
    flag("kv-bytes-per-token", m.kv_bytes_per_token.to_string());
    flag("kv-transfer-scale", m.kv_transfer_scale.to_string());
    flag("kv-link", m.kv_link.to_string());
    flag("kv-lease-secs", m.kv_lease_secs.to_string());
    flag("kv-pull-timeout-secs", serve.kv_pull_timeout_secs.to_string());
    if let Some(path) = &m.replay_output {
        args.extend([
            "--replay-output".into(),
            std::path::absolute(path).unwrap_or_else(|_| path.clone()).into(),
        ]);
    }
    args
}

/// Owns one worker process: reports it if it dies, and on shutdown asks it to stop (SIGTERM),
/// killing it if it has not exited after its drain time.
async fn supervise(index: usize, mut child: Child, shutdown: CancellationToken) {
    let pid = child.id();
    tokio::select! {
        status = child.wait() => {
            warn!(worker = index, ?status, "worker exited");
            return;
        }
        () = shutdown.cancelled() => {}
    }
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(40), child.wait()).await {
        Ok(Ok(status)) => info!(worker = index, %status, "worker stopped"),
        Ok(Err(e)) => warn!(worker = index, error = %e, "waiting for worker failed"),
        Err(_) => {
            warn!(worker = index, "worker did not stop in time; killing it");
            let _ = child.kill().await;
        }
    }
}
