//! A real `etcd` for tests: free 127.0.0.1 ports, a temporary data directory, killed on drop.
//!
//! Uses only std and `tempfile`, so that any test crate can include it:
//! `#[path = "../runtime/tests/support/etcd_server.rs"] mod etcd_server;` (path relative to the
//! including file). Its calls block (each for about a second), which a multi-threaded tokio test
//! tolerates. A missing `etcd` binary fails the test with a message saying how to install it:
//! tests that need etcd never skip silently.

// Each including crate uses its own part of this file.
#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a started etcd to answer its health check; generous for a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one health-check connection, so that a wedged etcd cannot stall the wait.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Port picks can race with other processes; a start that lost the race is tried again.
const START_ATTEMPTS: usize = 3;
/// Where Debian's `etcd-server` package puts the binary.
const DEBIAN_BINARY: &str = "/usr/bin/etcd";

/// One etcd process (or none while stopped) with its ports and data directory.
pub struct EtcdServer {
    binary: PathBuf,
    name: String,
    client_port: u16,
    peer_port: u16,
    /// Holds `data/` (etcd's data directory) and `etcd.log` (its output over every run).
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Serving clients over TLS only: (CA, certificate, key) PEM files; clients must present
    /// a certificate the CA signed. `/health` is then served on `metrics_port`, plain.
    tls: Option<[PathBuf; 3]>,
    metrics_port: u16,
}

impl EtcdServer {
    /// [`EtcdServer::start`] serving clients over TLS only, verifying their certificates.
    pub fn start_tls(ca: PathBuf, cert: PathBuf, key: PathBuf) -> EtcdServer {
        EtcdServer::start_with(Some([ca, cert, key]))
    }

    /// Starts an etcd on free ports and waits until it answers; panics with etcd's log if it
    /// does not.
    pub fn start() -> EtcdServer {
        EtcdServer::start_with(None)
    }

    fn start_with(tls: Option<[PathBuf; 3]>) -> EtcdServer {
        let binary = find_binary();
        let dir = tempfile::Builder::new()
            .prefix("switchyard-etcd-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for etcd: {e}"));
        let name = format!("test-{}", std::process::id());
        let mut server = EtcdServer {
            binary,
            name,
            client_port: 0,
            peer_port: 0,
            dir,
            child: None,
            tls,
            metrics_port: 0,
        };
        for attempt in 1..=START_ATTEMPTS {
            server.client_port = free_port();
            server.peer_port = free_port();
            server.metrics_port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) if attempt < START_ATTEMPTS => {
                    eprintln!("etcd start attempt {attempt} failed ({e}); trying other ports");
                    server.wipe_data();
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    /// etcd's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills etcd (SIGKILL, by its process id) and reaps it. Its data directory stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; either way it is gone after `wait`.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts etcd again on the same ports and data directory (after [`EtcdServer::kill`]).
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait() {
            panic!("{e}");
        }
    }

    /// Starts etcd again on the same ports with an empty data directory: every key, lease and
    /// revision is gone, as after losing a single-member cluster's disk.
    pub fn restart_wiped(&mut self) {
        self.kill();
        self.wipe_data();
        if let Err(e) = self.spawn_and_wait() {
            panic!("{e}");
        }
    }

    /// The value of an unlabelled metric on etcd's `/metrics` (e.g.
    /// `etcd_debugging_mvcc_watcher_total`), or `None` when etcd is down or lacks it.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let address = SocketAddr::from(([127, 0, 0, 1], self.client_port));
        let body = http_get(address, "/metrics")?;
        body.lines().find_map(|line| {
            let value = line.strip_prefix(name)?.strip_prefix(' ')?;
            value.trim().parse().ok()
        })
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn wipe_data(&self) {
        match std::fs::remove_dir_all(self.data_dir()) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("cannot wipe {}: {e}", self.data_dir().display()),
        }
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open {}: {e}", self.log_path().display()))?;
        let log_err = log.try_clone().map_err(|e| format!("cannot clone the log handle: {e}"))?;
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut command = Command::new(&self.binary);
        if let Some([ca, cert, key]) = &self.tls {
            let metrics = format!("http://127.0.0.1:{}", self.metrics_port);
            command
                .args(["--listen-metrics-urls", &metrics, "--client-cert-auth"])
                .arg("--trusted-ca-file")
                .arg(ca)
                .arg("--cert-file")
                .arg(cert)
                .arg("--key-file")
                .arg(key);
        }
        let child = command
            .arg("--name")
            .arg(&self.name)
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client, "--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer, "--initial-advertise-peer-urls", &peer])
            .arg("--initial-cluster")
            .arg(format!("{}={peer}", self.name))
            .args(["--initial-cluster-state", "new"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Polls etcd's `/health` (served on the client port) until it reports a leader.
    fn wait_ready(&mut self) -> Result<(), String> {
        let port = if self.tls.is_some() { self.metrics_port } else { self.client_port };
        let address = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!("etcd exited at start-up ({status}); {}", self.log_tail()));
            }
            if healthy(address) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "etcd did not become healthy within {READY_TIMEOUT:?}; {}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log_path().display())
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("etcd"))
        .chain([PathBuf::from(DEBIAN_BINARY)])
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the etcd binary is not on PATH nor at {DEBIAN_BINARY}; install it with \
                 `apt-get install -y etcd-server` (tests that need etcd fail rather than skip)"
            )
        })
}

/// A port that was free a moment ago: bound to port 0, read, released.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("cannot read the bound port: {e}")).port()
}

/// True when etcd's `/health` says it is healthy (it has a leader).
fn healthy(address: SocketAddr) -> bool {
    http_get(address, "/health").is_some_and(|body| body.contains(r#""health":"true""#))
}

/// The body of one HTTP/1.1 `GET`, when the answer is a 200.
fn http_get(address: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&address, PROBE_TIMEOUT).ok()?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(PROBE_TIMEOUT)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    // A timeout mid-read leaves what arrived; the checks below decide.
    let _ = stream.read_to_string(&mut response);
    if !response.starts_with("HTTP/1.1 200") {
        return None;
    }
    response.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}
