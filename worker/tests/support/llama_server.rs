//! A real `llama-server` for tests, serving the tiny model on a free 127.0.0.1 port; killed
//! (SIGKILL) and reaped when dropped. `scripts/setup.sh` builds the binary and makes the model
//! in `$SWITCHYARD_CACHE_DIR` (default `~/.cache/switchyard`); tests fail with that hint when
//! they are missing.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The llama-cpp-python release whose vendored llama.cpp the setup script builds.
const LLAMA_CPP_PYTHON_VERSION: &str = "0.3.36";

pub fn cache_dir() -> PathBuf {
    match std::env::var_os("SWITCHYARD_CACHE_DIR") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/switchyard")
        }
    }
}

fn needs(path: PathBuf) -> PathBuf {
    assert!(path.exists(), "{} is missing: run `bash scripts/setup.sh` first", path.display());
    path
}

/// The tiny model with weights (tokenizer, configs, model.safetensors, tiny.gguf).
pub fn tiny_model() -> PathBuf {
    let dir = cache_dir().join("tiny-model");
    needs(dir.join(".complete"));
    dir
}

pub fn llama_server_bin() -> PathBuf {
    needs(cache_dir().join(format!("llama-server-{LLAMA_CPP_PYTHON_VERSION}/llama-server")))
}

/// A running llama-server.
pub struct LlamaServer {
    child: Child,
    pub url: String,
}

impl LlamaServer {
    /// Starts one with two slots of 2,048 tokens (or what `extra` says) and waits until its
    /// /health is OK.
    pub async fn start(extra: &[&str]) -> LlamaServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let model = tiny_model().join("tiny.gguf");
        let mut args: Vec<String> = [
            "-m",
            model.to_str().unwrap(),
            "--alias",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "-t",
            "1",
            "--jinja",
            "--metrics",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if !extra.contains(&"-c") {
            args.extend(["-c", "4096"].map(String::from));
        }
        if !extra.contains(&"-np") {
            args.extend(["-np", "2"].map(String::from));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let child = Command::new(llama_server_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting llama-server");
        let server = LlamaServer { child, url: format!("http://127.0.0.1:{port}") };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = http.get(format!("{}/health", server.url)).send().await;
            if ok.is_ok_and(|r| r.status().is_success()) {
                return server;
            }
            assert!(Instant::now() < deadline, "llama-server did not become ready");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The sum of a metric's samples on its /metrics page.
    pub async fn metric(&self, name: &str) -> f64 {
        let text =
            reqwest::get(format!("{}/metrics", self.url)).await.unwrap().text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
            .sum()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.kill();
    }
}
