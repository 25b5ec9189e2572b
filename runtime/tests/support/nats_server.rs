//! A real `nats-server` for tests: a free 127.0.0.1 port, a temporary directory for its log,
//! killed (by process id) on drop.
//!
//! Uses only std and `tempfile`, so that any test crate can include it:
//! `#[path = "../runtime/tests/support/nats_server.rs"] mod nats_server;` (path relative to the
//! including file). Its calls block (each for well under a second), which a multi-threaded tokio
//! test tolerates. A missing `nats-server` binary fails the test with a message saying how to
//! install it: tests that need NATS never skip silently.

// Each including crate uses its own part of this file.
#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Longest wait for a started nats-server to greet a client; generous for a loaded machine.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one readiness probe, so that a wedged server cannot stall the wait.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Port picks can race with other processes; a start that lost the race is tried again.
const START_ATTEMPTS: usize = 3;
/// Where Debian's `nats-server` package puts the binary (often not on a user's PATH).
const DEBIAN_BINARY: &str = "/usr/sbin/nats-server";

/// One nats-server process (or none while stopped) with its port and log directory.
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    /// Holds `nats.log`, the server's output over every run.
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Flags beyond address and port (authentication, TLS).
    extra: Vec<String>,
}

impl NatsServer {
    /// Starts a nats-server on a free port and waits until it greets clients; panics with its
    /// log if it does not.
    pub fn start() -> NatsServer {
        NatsServer::start_with(&[])
    }

    /// [`NatsServer::start`] with further flags, e.g. `--user`/`--pass` or `--tls…`.
    pub fn start_with(extra: &[&str]) -> NatsServer {
        let binary = find_binary();
        let dir = tempfile::Builder::new()
            .prefix("switchyard-nats-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot create a temp dir for nats-server: {e}"));
        let extra = extra.iter().map(|s| (*s).to_owned()).collect();
        let mut server = NatsServer { binary, port: 0, dir, child: None, extra };
        for attempt in 1..=START_ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) if attempt < START_ATTEMPTS => {
                    eprintln!(
                        "nats-server start attempt {attempt} failed ({e}); trying another port"
                    );
                }
                Err(e) => panic!("{e}"),
            }
        }
        unreachable!("the last attempt returns or panics")
    }

    /// The client URL, e.g. `nats://127.0.0.1:40123`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL, by its process id) and reaps it: its clients see their
    /// connections drop.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // It may have exited already; either way it is gone after `wait`.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port (after [`NatsServer::kill`]) and waits until it
    /// greets clients.
    pub fn restart(&mut self) {
        self.kill();
        // The port was just released; another process could take it, which fails loudly here.
        if let Err(e) = self.spawn_and_wait() {
            panic!("{e}");
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("cannot open {}: {e}", self.log_path().display()))?;
        let log_err = log.try_clone().map_err(|e| format!("cannot clone the log handle: {e}"))?;
        let child = Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Connects until the server sends its `INFO` greeting.
    fn wait_ready(&mut self) -> Result<(), String> {
        let address = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                return Err(format!(
                    "nats-server exited at start-up ({status}); {}",
                    self.log_tail()
                ));
            }
            if greets(address) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(format!(
                    "nats-server did not answer within {READY_TIMEOUT:?}; {}",
                    self.log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("last lines of {}:\n{tail}", self.log_path().display())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_binary() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .chain([PathBuf::from(DEBIAN_BINARY)])
        .find(|path| path.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the nats-server binary is not on PATH nor at {DEBIAN_BINARY}; install it with \
                 `apt-get install -y nats-server` (tests that need NATS fail rather than skip)"
            )
        })
}

/// A port that was free a moment ago: bound to port 0, read, released.
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("cannot bind a free port on 127.0.0.1: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("cannot read the bound port: {e}")).port()
}

/// True when a nats-server answers on `address`: it greets every new connection with `INFO`.
fn greets(address: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&address, PROBE_TIMEOUT) else {
        return false;
    };
    if stream.set_read_timeout(Some(PROBE_TIMEOUT)).is_err() {
        return false;
    }
    let mut greeting = [0_u8; 5];
    stream.read_exact(&mut greeting).is_ok() && &greeting == b"INFO "
}
