//! Helpers for end-to-end tests: start the real `switchyard` binary as processes on
//! 127.0.0.1, talk to it over real HTTP, and stop every process by its PID.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Every wait in these tests is bounded by this unless said otherwise.
pub const WAIT: Duration = Duration::from_secs(30);

/// The binary under test: this build's, or the one `SWITCHYARD_TEST_BIN` names (to run a
/// test against another build side by side, e.g. a release binary of an earlier commit).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("SWITCHYARD_TEST_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_switchyard").to_owned())
    })
}

/// Kills `nats`, keeps it down for half a second, starts it again on the same port (on a
/// blocking thread) and hands it back once it greets clients.
pub async fn bounce_nats(mut nats: nats_server::NatsServer) -> nats_server::NatsServer {
    tokio::task::spawn_blocking(move || {
        nats.kill();
        std::thread::sleep(Duration::from_millis(500));
        nats.restart();
        nats
    })
    .await
    .unwrap()
}

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
}

impl Proc {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), signal).unwrap();
    }

    /// Waits for the process to exit; its exit status.
    pub fn wait_exit(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {limit:?}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `switchyard ARGS`, with its stderr passed through (shown when a test fails).
pub fn spawn(name: &str, args: &[&str]) -> Proc {
    let child = Command::new(bin())
        .args(args)
        .env("SWITCHYARD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Proc { name: name.to_owned(), child }
}

/// Reads the child's stdout until a line containing `marker`; returns that line. Further
/// output is drained in the background so the child never blocks on a full pipe.
pub fn wait_for_line(proc: &mut Proc, marker: &str) -> String {
    let stdout = proc.child.stdout.take().expect("stdout piped");
    let (tx, rx) = mpsc::channel();
    let wanted = marker.to_owned();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if !sent && line.contains(&wanted) {
                let _ = tx.send(line);
                sent = true;
            }
        }
    });
    rx.recv_timeout(WAIT).unwrap_or_else(|_| panic!("{} printed no {marker:?}", proc.name))
}

/// Extracts `http://host:port` from a line.
pub fn url_in(line: &str) -> String {
    let start = line
        .find("http://")
        .or_else(|| line.find("https://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"));
    let rest = &line[start..];
    let end = rest.find(|c: char| c.is_whitespace() || c == ';').unwrap_or(rest.len());
    rest[..end].trim_end_matches("/v1").to_owned()
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Flags shared by the workers of these tests: fast simulation, short leases.
pub const FAST_WORKER: &[&str] = &["--lease-ttl-secs", "2", "--drain-timeout-secs", "10"];

#[path = "../../runtime/tests/support/etcd_server.rs"]
pub mod etcd_server;
#[path = "../../runtime/tests/support/nats_server.rs"]
pub mod nats_server;

/// Which discovery store and request plane a topology runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    File,
    Etcd,
}

/// Which request plane a topology runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlaneMode {
    Tcp,
    Nats,
}

/// A store and a request plane: one of the topologies every end-to-end test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode {
    pub store: StoreMode,
    pub plane: PlaneMode,
}

impl Mode {
    pub const FILE_TCP: Mode = Mode { store: StoreMode::File, plane: PlaneMode::Tcp };
    pub const ETCD_TCP: Mode = Mode { store: StoreMode::Etcd, plane: PlaneMode::Tcp };
    pub const FILE_NATS: Mode = Mode { store: StoreMode::File, plane: PlaneMode::Nats };
    pub const ETCD_NATS: Mode = Mode { store: StoreMode::Etcd, plane: PlaneMode::Nats };
}

/// The servers a topology's mode needs, owned (and stopped) by the topology.
pub struct Servers {
    pub store_dir: tempfile::TempDir,
    pub etcd: Option<etcd_server::EtcdServer>,
    pub nats: Option<nats_server::NatsServer>,
    /// Flags that point a process at the store and the request plane.
    pub store_flags: Vec<String>,
}

impl Servers {
    pub fn start(mode: Mode) -> Servers {
        let store = mode.store;
        let store_dir = tempfile::tempdir().unwrap();
        let (etcd, store_flags) = match store {
            StoreMode::File => {
                let dir = store_dir.path().to_str().unwrap().to_owned();
                (None, vec!["--store".into(), "file".into(), "--store-dir".into(), dir])
            }
            StoreMode::Etcd => {
                let etcd = etcd_server::EtcdServer::start();
                let flags = vec![
                    "--store".into(),
                    "etcd".into(),
                    "--etcd-endpoints".into(),
                    etcd.endpoint(),
                ];
                (Some(etcd), flags)
            }
        };
        let mut store_flags = store_flags;
        let nats = match mode.plane {
            PlaneMode::Tcp => None,
            PlaneMode::Nats => {
                let nats = nats_server::NatsServer::start();
                store_flags.extend(["--request-plane".into(), "nats".into()]);
                store_flags.extend(["--nats-url".into(), nats.url()]);
                Some(nats)
            }
        };
        Servers { store_dir, etcd, nats, store_flags }
    }
}

/// A frontend and its workers on one store.
pub struct Topology {
    pub servers: Servers,
    pub frontend: Proc,
    pub workers: Vec<Proc>,
    pub url: String,
    pub http: reqwest::Client,
}

impl Topology {
    /// A frontend plus one worker per entry of `models` (a served model name each), on a
    /// file store and the TCP request plane.
    pub async fn start(models: &[&str], frontend_args: &[&str]) -> Topology {
        Topology::start_on(Mode::FILE_TCP, models, frontend_args).await
    }

    pub async fn start_on(mode: Mode, models: &[&str], frontend_args: &[&str]) -> Topology {
        let servers = tokio::task::spawn_blocking(move || Servers::start(mode)).await.unwrap();
        let flags: Vec<&str> = servers.store_flags.iter().map(String::as_str).collect();
        let workers = models.iter().map(|model| start_worker(&flags, model, &[])).collect();
        let mut args = vec!["frontend", "--http-host", "127.0.0.1", "--http-port", "0"];
        args.extend_from_slice(&flags);
        args.extend_from_slice(&["--lease-ttl-secs", "2"]);
        args.extend_from_slice(frontend_args);
        let mut frontend = spawn("frontend", &args);
        let url = url_in(&wait_for_line(&mut frontend, "listening on"));
        let topology = Topology { servers, frontend, workers, url, http: client() };
        topology.wait_instances(models.len()).await;
        topology
    }

    /// Another frontend on the same store (its own process and port).
    pub fn start_frontend(&self, extra: &[&str]) -> Frontend {
        let flags: Vec<&str> = self.servers.store_flags.iter().map(String::as_str).collect();
        let mut args = vec!["frontend", "--http-host", "127.0.0.1", "--http-port", "0"];
        args.extend_from_slice(&flags);
        args.extend_from_slice(extra);
        let mut proc = spawn("frontend", &args);
        let url = url_in(&wait_for_line(&mut proc, "listening on"));
        Frontend { proc, url, http: client() }
    }

    pub fn store_dir(&self) -> &Path {
        self.servers.store_dir.path()
    }

    pub fn add_worker(&mut self, model: &str, extra: &[&str]) {
        let flags: Vec<&str> = self.servers.store_flags.iter().map(String::as_str).collect();
        self.workers.push(start_worker(&flags, model, extra));
    }

    /// Waits until /health counts `n` live instances in all.
    pub async fn wait_instances(&self, n: usize) {
        let deadline = Instant::now() + WAIT;
        loop {
            let total = self.instance_count().await;
            if total == Some(n) {
                return;
            }
            assert!(Instant::now() < deadline, "expected {n} instances, /health says {total:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Live instances over all models, as /health reports them.
    pub async fn instance_count(&self) -> Option<usize> {
        let resp = self.http.get(format!("{}/health", self.url)).send().await.ok()?;
        let body: Value = resp.json().await.ok()?;
        Some(health_instances(&body).values().sum())
    }

    pub async fn health(&self) -> Value {
        get_json(&self.http, &format!("{}/health", self.url)).await.1
    }

    pub async fn models(&self) -> Vec<String> {
        let (_, body) = get_json(&self.http, &format!("{}/v1/models", self.url)).await;
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        post_json(&self.http, &format!("{}{path}", self.url), body).await
    }

    pub async fn metrics(&self) -> String {
        let resp =
            tokio::time::timeout(WAIT, self.http.get(format!("{}/metrics", self.url)).send())
                .await
                .unwrap()
                .unwrap();
        resp.text().await.unwrap()
    }
}

/// A frontend process of its own.
pub struct Frontend {
    pub proc: Proc,
    pub url: String,
    pub http: reqwest::Client,
}

impl Frontend {
    pub async fn instance_count(&self) -> Option<usize> {
        let resp = self.http.get(format!("{}/health", self.url)).send().await.ok()?;
        let body: Value = resp.json().await.ok()?;
        Some(health_instances(&body).values().sum())
    }
}

/// Instances per model from a /health body, whatever its exact nesting.
pub fn health_instances(body: &Value) -> std::collections::BTreeMap<String, usize> {
    let models = body.get("instances").and_then(Value::as_object);
    models
        .map(|m| {
            m.iter()
                .map(|(name, v)| {
                    let n = v.as_u64().or_else(|| v.get("instances").and_then(Value::as_u64));
                    (name.clone(), usize::try_from(n.unwrap_or(0)).unwrap())
                })
                .collect()
        })
        .unwrap_or_default()
}

pub fn start_worker(store_flags: &[&str], model: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["worker", "--model-name", model];
    args.extend_from_slice(store_flags);
    // `extra` may set its own simulation speed; the fast default applies otherwise.
    if !extra.contains(&"--speedup-ratio") {
        args.extend_from_slice(&["--speedup-ratio", "50"]);
    }
    // Likewise its own drain timeout.
    for pair in FAST_WORKER.chunks(2) {
        if !extra.contains(&pair[0]) {
            args.extend_from_slice(pair);
        }
    }
    args.extend_from_slice(extra);
    spawn(&format!("worker {model}"), &args)
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(WAIT).build().unwrap()
}

pub async fn get_json(http: &reqwest::Client, url: &str) -> (u16, Value) {
    let resp = tokio::time::timeout(WAIT, http.get(url).send()).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap())
}

pub async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    post_raw(http, url, serde_json::to_vec(body).unwrap()).await
}

pub async fn post_raw(http: &reqwest::Client, url: &str, body: Vec<u8>) -> (u16, Value) {
    let send = http.post(url).header("content-type", "application/json").body(body).send();
    let resp = tokio::time::timeout(WAIT, send).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text:?}"));
    (status, value)
}

/// Posts a streaming request; returns the status and the `data:` payloads in order.
pub async fn post_sse(http: &reqwest::Client, url: &str, body: &Value) -> (u16, Vec<String>) {
    let send = http.post(url).json(body).send();
    let resp = tokio::time::timeout(WAIT, send).await.unwrap().unwrap();
    let status = resp.status().as_u16();
    let text = tokio::time::timeout(WAIT, resp.text()).await.unwrap().unwrap();
    let events = text
        .lines()
        .filter_map(|line| line.strip_prefix("data:"))
        .map(|data| data.trim().to_owned())
        .collect();
    (status, events)
}

/// The workspace root (for files shipped in the repository).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
