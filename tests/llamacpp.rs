//! End-to-end through real engines: the real binary's frontend and workers wrapping two
//! llama.cpp `llama-server`s (built by `scripts/setup.sh`) serving the tiny model. Chat and
//! completions, streamed and not, give the same greedy text and usage as the engine itself; a
//! client that goes away stops the engine's work; an engine killed under its worker takes the
//! worker out of routing without failing any request that had not started; a prefill worker
//! and a decode worker over two servers give the text of one server; an engine the worker
//! launched dies with it, even when the worker is killed with SIGKILL; a forced tool choice
//! is enforced with the engine's grammar and comes back as tool calls.

#![allow(clippy::unwrap_used)]

#[path = "../worker/tests/support/llama_server.rs"]
mod llama_server;
mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use llama_server::{LlamaServer, llama_server_bin, tiny_model};
use serde_json::{Value, json};
use support::{Mode, Proc, Topology, WAIT, post_json, post_sse, spawn};

/// Starts a worker wrapping the llama-server at `url`, on the topology's store.
fn llamacpp_worker(topology: &Topology, url: &str) -> Proc {
    llamacpp_worker_with(topology, &["--engine-url", url])
}

/// A llama.cpp worker on the topology's store, with `extra` flags (the engine's URL, or
/// `--launch -- …` last).
fn llamacpp_worker_with(topology: &Topology, extra: &[&str]) -> Proc {
    let model = tiny_model();
    let mut args = vec![
        "worker",
        "--engine",
        "llamacpp",
        "--model-path",
        model.to_str().unwrap(),
        "--model-name",
        "tiny",
        "--lease-ttl-secs",
        "2",
        "--drain-timeout-secs",
        "5",
    ];
    let flags: Vec<&str> = topology.servers.store_flags.iter().map(String::as_str).collect();
    args.extend_from_slice(&flags);
    args.extend_from_slice(extra);
    spawn("llamacpp worker", &args)
}

/// A frontend and two workers over two llama-servers.
async fn start() -> (Topology, Vec<LlamaServer>) {
    let (a, b) = tokio::join!(LlamaServer::start(&[]), LlamaServer::start(&[]));
    let mut topology =
        Topology::start_on(Mode::FILE_TCP, &[], &["--router-mode", "round-robin"]).await;
    for server in [&a, &b] {
        let worker = llamacpp_worker(&topology, &server.url);
        topology.workers.push(worker);
    }
    topology.wait_instances(2).await;
    (topology, vec![a, b])
}

fn chat_body(stream: bool) -> Value {
    json!({
        "model": "tiny",
        "messages": [{"role": "user", "content": "Tell me about the print statement."}],
        "max_tokens": 16, "temperature": 0, "ignore_eos": true, "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

fn completion_body(stream: bool) -> Value {
    json!({
        "model": "tiny", "prompt": "The for statement is used to iterate over",
        "max_tokens": 16, "temperature": 0, "ignore_eos": true, "stream": stream,
        "stream_options": {"include_usage": true},
    })
}

/// Text and usage of a response, streamed or not.
async fn text_and_usage(http: &reqwest::Client, url: &str, body: &Value) -> (String, Value) {
    if body["stream"] == json!(true) {
        let (status, events) = post_sse(http, url, body).await;
        assert_eq!(status, 200, "{events:?}");
        let mut text = String::new();
        let mut usage = Value::Null;
        for event in events.iter().filter(|e| *e != "[DONE]") {
            let v: Value = serde_json::from_str(event).unwrap();
            if let Some(choice) = v["choices"].get(0) {
                let piece = choice["delta"]["content"].as_str().or(choice["text"].as_str());
                text.push_str(piece.unwrap_or_default());
            }
            if !v["usage"].is_null() {
                usage = v["usage"].clone();
            }
        }
        (text, usage)
    } else {
        let (status, v) = post_json(http, url, body).await;
        assert_eq!(status, 200, "{v}");
        let choice = &v["choices"][0];
        let text = choice["message"]["content"].as_str().or(choice["text"].as_str()).unwrap();
        (text.to_owned(), v["usage"].clone())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_and_completions_give_the_engines_own_greedy_text_and_usage() {
    let (topology, servers) = start().await;
    let http = &topology.http;
    for stream in [false, true] {
        for (path, body) in [
            ("/v1/chat/completions", chat_body(stream)),
            ("/v1/completions", completion_body(stream)),
        ] {
            let direct = text_and_usage(http, &format!("{}{path}", servers[0].url), &body).await;
            // Twice, so that both workers (round-robin) answer.
            for _ in 0..2 {
                let ours = text_and_usage(http, &format!("{}{path}", topology.url), &body).await;
                assert_eq!(ours.0, direct.0, "{path} stream={stream}: same greedy text");
                for key in ["prompt_tokens", "completion_tokens"] {
                    assert_eq!(ours.1[key], direct.1[key], "{path} stream={stream}: {key}");
                }
                assert_eq!(ours.1["completion_tokens"], json!(16));
            }
        }
    }
    // Log probabilities come back in OpenAI's shape.
    let mut body = chat_body(false);
    body["logprobs"] = json!(true);
    body["top_logprobs"] = json!(2);
    let (status, v) = topology.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 200, "{v}");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 16);
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    assert!(content[0]["logprob"].as_f64().unwrap() <= 0.0);
    // A parameter llama.cpp cannot honour is a 400 naming it.
    let mut body = completion_body(false);
    body["min_tokens"] = json!(3);
    let (status, v) = topology.post("/v1/completions", &body).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], json!("min_tokens"));
}

/// Decode steps of both engines so far (their own counter).
async fn decodes(servers: &[LlamaServer]) -> f64 {
    let mut sum = 0.0;
    for server in servers {
        sum += server.metric("llamacpp:n_decode_total").await;
    }
    sum
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_goes_away_stops_the_engines_work() {
    let (topology, servers) = start().await;
    let decodes_before = decodes(&servers).await;
    let mut body = completion_body(true);
    body["max_tokens"] = json!(1900);
    let response = topology
        .http
        .post(format!("{}/v1/completions", topology.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let mut stream = response.bytes_stream();
    for _ in 0..3 {
        tokio::time::timeout(WAIT, stream.next()).await.unwrap().unwrap().unwrap();
    }
    drop(stream);
    // The engines' own metrics: nothing processing, and decoding stopped well short of 1,900.
    let deadline = Instant::now() + WAIT;
    loop {
        let busy = servers[0].metric("llamacpp:requests_processing").await
            + servers[1].metric("llamacpp:requests_processing").await;
        if busy == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "the engine still processes the request");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = decodes(&servers).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(decodes(&servers).await, after, "no more decoding after the client left");
    assert!(
        after - decodes_before < 1000.0,
        "stopped early: {} decode steps",
        after - decodes_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_engine_takes_its_worker_out_and_no_new_request_fails() {
    let (topology, mut servers) = start().await;
    servers[0].kill();
    // Requests right after the kill: those routed to the dead engine's worker are turned away
    // before they start, and the frontend sends them to the other worker.
    let mut sent = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(4) {
        let (status, v) = topology.post("/v1/completions", &completion_body(false)).await;
        assert_eq!(status, 200, "request {sent} after the kill failed: {v}");
        sent += 1;
    }
    assert!(sent >= 4, "{sent} requests");
    // The worker leaves discovery.
    topology.wait_instances(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_over_two_llama_servers_gives_one_servers_text() {
    // llama.cpp hands a prompt's KV over as a slot file in a directory both servers share.
    let slots = tempfile::tempdir().unwrap();
    let slot_path = format!("{}/", slots.path().display());
    let args = ["-np", "1", "--slot-save-path", &slot_path];
    let (prefill, decode) = tokio::join!(LlamaServer::start(&args), LlamaServer::start(&args));
    // Every prompt goes to the prefill worker: none is short enough to stay on the decode one.
    let mut topology =
        Topology::start_on(Mode::FILE_TCP, &[], &["--max-local-prefill-tokens", "0"]).await;
    let slot_dir = slots.path().to_str().unwrap();
    for (server, role) in [(&prefill, "prefill"), (&decode, "decode")] {
        let flags = ["--engine-url", &server.url, "--role", role, "--engine-slot-dir", slot_dir];
        let worker = llamacpp_worker_with(&topology, &flags);
        topology.workers.push(worker);
    }
    topology.wait_instances(2).await;
    let http = &topology.http;
    let mut sent = 0.0;
    for stream in [false, true] {
        for (path, body) in [
            ("/v1/chat/completions", chat_body(stream)),
            ("/v1/completions", completion_body(stream)),
        ] {
            let direct = text_and_usage(http, &format!("{}{path}", decode.url), &body).await;
            let ours = text_and_usage(http, &format!("{}{path}", topology.url), &body).await;
            assert_eq!(ours.0, direct.0, "{path} stream={stream}: same greedy text");
            for key in ["prompt_tokens", "completion_tokens"] {
                assert_eq!(ours.1[key], direct.1[key], "{path} stream={stream}: {key}");
            }
            sent += 1.0;
        }
    }
    let metrics = topology.metrics().await;
    let count = |prefix: &str| -> f64 {
        let lines = metrics.lines().filter(|l| l.starts_with(prefix));
        lines.filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok()).sum()
    };
    let remote = "switchyard_frontend_prefills_total{place=\"remote\"";
    assert_eq!(count(remote), sent, "every request prefilled remotely: {metrics}");
    assert_eq!(count("switchyard_frontend_prefill_fallbacks_total"), 0.0, "{metrics}");
}

/// Processes whose parent is `parent`.
fn children_of(parent: i32) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // After the command's name in parentheses: state, then the parent's pid.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        if after.split_whitespace().nth(1).and_then(|p| p.parse().ok()) == Some(parent) {
            found.push(pid);
        }
    }
    found
}

/// Whether `pid` still runs (a zombie waiting for its reaper does not).
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        state != Some("Z")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launched_engine_dies_with_its_worker_even_on_sigkill() {
    let topology = Topology::start_on(Mode::FILE_TCP, &[], &[]).await;
    let gguf = tiny_model().join("tiny.gguf");
    let server = llama_server_bin();
    let worker = llamacpp_worker_with(
        &topology,
        &[
            "--launch",
            "--",
            server.to_str().unwrap(),
            "-m",
            gguf.to_str().unwrap(),
            "--alias",
            "tiny",
            "-t",
            "1",
            "-c",
            "2048",
        ],
    );
    topology.wait_instances(1).await;
    let engines = children_of(worker.pid());
    assert_eq!(engines.len(), 1, "one engine process under the worker: {engines:?}");
    let (status, v) = topology.post("/v1/completions", &completion_body(false)).await;
    assert_eq!(status, 200, "{v}");

    worker.signal(nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + WAIT;
    while running(engines[0]) {
        if Instant::now() > deadline {
            // Stop the orphan before failing, so the failure leaves nothing running.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(engines[0]),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("the engine outlived its worker");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The tool calls and finish reason of a chat response, streamed or not.
async fn tool_calls(topology: &Topology, body: &Value) -> (Vec<Value>, String) {
    let url = format!("{}/v1/chat/completions", topology.url);
    if body["stream"] != json!(true) {
        let (status, v) = post_json(&topology.http, &url, body).await;
        assert_eq!(status, 200, "{v}");
        let choice = &v["choices"][0];
        let calls = choice["message"]["tool_calls"].as_array().cloned().unwrap_or_default();
        return (calls, choice["finish_reason"].as_str().unwrap_or_default().to_owned());
    }
    let (status, events) = post_sse(&topology.http, &url, body).await;
    assert_eq!(status, 200, "{events:?}");
    let (mut calls, mut finish) = (Vec::new(), String::new());
    for event in events.iter().filter(|e| *e != "[DONE]") {
        let chunk: Value = serde_json::from_str(event).unwrap();
        let Some(choice) = chunk["choices"].get(0) else { continue };
        calls.extend(choice["delta"]["tool_calls"].as_array().cloned().unwrap_or_default());
        if let Some(reason) = choice["finish_reason"].as_str() {
            finish = reason.to_owned();
        }
    }
    (calls, finish)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forced_tool_choice_is_enforced_by_the_engines_grammar() {
    let (topology, _servers) = start().await;
    let unit = json!({"type": "object", "properties": {"unit": {"type": "string",
        "enum": ["celsius", "fahrenheit"]}}, "required": ["unit"]});
    let zone = json!({"type": "object", "properties": {"zone": {"type": "string",
        "enum": ["utc", "local"]}}, "required": ["zone"]});
    let tools = json!([
        {"type": "function", "function": {"name": "get_weather", "parameters": unit}},
        {"type": "function", "function": {"name": "get_time", "parameters": zone}},
    ]);
    let named = json!({"type": "function", "function": {"name": "get_weather"}});
    for (choice, stream) in [(&named, false), (&named, true), (&json!("required"), false)] {
        let body = json!({
            "model": "tiny", "messages": [{"role": "user", "content": "Weather in Paris?"}],
            "tools": tools, "tool_choice": choice, "max_tokens": 128, "temperature": 0,
            "stream": stream,
        });
        let (calls, finish) = tool_calls(&topology, &body).await;
        assert_eq!(finish, "tool_calls", "{choice} stream={stream}: {calls:?}");
        assert!(!calls.is_empty(), "{choice} stream={stream}");
        for call in &calls {
            let name = call["function"]["name"].as_str().unwrap();
            let arguments: Value =
                serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
            match name {
                "get_weather" => assert!(arguments["unit"].is_string(), "{arguments}"),
                "get_time" if choice == &json!("required") => {
                    assert!(arguments["zone"].is_string(), "{arguments}");
                }
                other => panic!("{choice}: called {other}"),
            }
            assert!(call["id"].as_str().unwrap().starts_with("call_"), "{call}");
        }
    }
    // Another format with a forced call is a client error.
    let body = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
        "tools": tools, "tool_choice": named, "response_format": {"type": "json_object"}});
    let (status, v) = topology.post("/v1/chat/completions", &body).await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], json!("response_format"));
}
