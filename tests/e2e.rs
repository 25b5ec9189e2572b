//! End-to-end: the real binary as processes (a frontend and mocker workers), driven over real
//! HTTP, on every topology: {file, etcd} store × {tcp, nats} request plane. Each test is written once
//! as a function of the [`Mode`] and instantiated per topology below.

#![allow(clippy::unwrap_used)]

mod support;

/// Instantiates each named test once per topology, as `<topology>::<test>`.
macro_rules! on_every_topology {
    ($($test:ident),* $(,)?) => {
        mod file_tcp {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Mode::FILE_TCP).await })*
        }
        mod etcd_tcp {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Mode::ETCD_TCP).await })*
        }
        mod file_nats {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Mode::FILE_NATS).await })*
        }
        mod etcd_nats {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $test() { super::$test(super::Mode::ETCD_NATS).await })*
        }
    };
}

on_every_topology!(
    chat_and_completions_stream_and_not_with_usage_that_adds_up,
    round_robin_uses_both_workers,
    a_killed_worker_leaves_within_its_lease_and_requests_keep_succeeding,
    sigterm_deregisters_at_once_and_drains_in_flight_requests,
    bad_requests_get_openai_errors_with_the_right_status,
    kv_keeps_a_prefix_on_its_worker_while_it_has_room_and_spreads_it_when_busy,
);

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};
use support::{Mode, Topology, WAIT, post_raw, post_sse};

const MODEL: &str = "switchyard-tiny";

/// Token count of `text` with the builtin tokenizer, special tokens parsed, none added.
fn token_count(text: &str) -> u64 {
    let files = switchyard_model::ModelFiles::resolve(switchyard_model::DEFAULT_SOURCE).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_bytes(&*files.tokenizer_json).unwrap();
    tokenizer.encode(text, false).unwrap().get_ids().len() as u64
}

/// Requests routed to each instance, by its metric labels.
fn instance_requests(metrics: &str) -> std::collections::BTreeMap<String, f64> {
    metrics
        .lines()
        .filter_map(|l| l.strip_prefix("switchyard_frontend_instance_requests_total{"))
        .filter_map(|l| {
            let (labels, value) = l.rsplit_once(' ')?;
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn chat_body(content: &str, max_tokens: u32) -> Value {
    json!({"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens})
}

async fn chat_and_completions_stream_and_not_with_usage_that_adds_up(mode: Mode) {
    let t = Topology::start_on(mode, &[MODEL, MODEL], &[]).await;

    // Chat, not streamed: the prompt is the ChatML rendering of the message.
    let (status, body) = t.post("/v1/chat/completions", &chat_body("Hello there", 7)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert!(body["choices"][0]["message"]["content"].is_string(), "{body}");
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let rendered = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(body["usage"]["prompt_tokens"], token_count(rendered), "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 7);
    assert_eq!(body["usage"]["total_tokens"], token_count(rendered) + 7);

    // Completions, not streamed: the prompt is tokenized as is.
    let prompt = "The quick brown fox jumps over the lazy dog";
    let req = json!({"model": MODEL, "prompt": prompt, "max_tokens": 5});
    let (status, body) = t.post("/v1/completions", &req).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(body["choices"][0]["text"].is_string());
    assert_eq!(body["usage"]["prompt_tokens"], token_count(prompt));
    assert_eq!(body["usage"]["completion_tokens"], 5);

    // Chat, streamed with usage: role first, a finish reason, a usage chunk, then [DONE].
    let url = format!("{}/v1/chat/completions", t.url);
    let mut req = chat_body("Stream to me", 6);
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let (status, events) = post_sse(&t.http, &url, &req).await;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"));
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0))
        .map(|c| &c["finish_reason"])
        .filter(|f| !f.is_null())
        .collect();
    assert_eq!(finish, [&json!("length")]);
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], 6, "{chunks:?}");
    let rendered = "<|im_start|>user\nStream to me<|im_end|>\n<|im_start|>assistant\n";
    assert_eq!(usage["prompt_tokens"], token_count(rendered));

    // Completions, streamed.
    let url = format!("{}/v1/completions", t.url);
    let req = json!({"model": MODEL, "prompt": prompt, "max_tokens": 4, "stream": true});
    let (status, events) = post_sse(&t.http, &url, &req).await;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    assert_eq!(first["object"], "text_completion");
}

/// How many requests each instance took between two readings of the frontend's metrics.
fn requests_between(before: &str, after: &str) -> Vec<f64> {
    let before = instance_requests(before);
    let mut moved: Vec<f64> = instance_requests(after)
        .iter()
        .map(|(instance, n)| n - before.get(instance).copied().unwrap_or(0.0))
        .collect();
    moved.sort_by(f64::total_cmp);
    moved
}

async fn kv_keeps_a_prefix_on_its_worker_while_it_has_room_and_spreads_it_when_busy(mode: Mode) {
    // The default router mode is kv.
    let t = Topology::start_on(mode, &[MODEL, MODEL], &[]).await;
    let prefix =
        "Every request of this test shares this system prompt, many blocks long. ".repeat(12);
    let completion = |question: &str, max_tokens: u32| json!({"model": MODEL, "prompt": format!("{prefix}{question}"), "max_tokens": max_tokens});

    // One at a time: every request after the first goes where the prefix is cached, and
    // the worker says it found it there.
    let before = t.metrics().await;
    for i in 0..6 {
        let (status, body) = t.post("/v1/completions", &completion(&format!("Q{i}?"), 2)).await;
        assert_eq!(status, 200, "{body}");
        let cached = body["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap();
        if i > 0 {
            assert!(cached >= token_count(&prefix) / 16 * 16 - 16, "request {i}: {body}");
        }
        // The worker's KV event for this prompt reaches the frontend before the next one.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(requests_between(&before, &t.metrics().await), [0.0, 6.0]);

    // Twelve at once, long enough to overlap: the holder fills up, and the rest go to the
    // other worker instead of piling on.
    let before = t.metrics().await;
    let requests = (0..12).map(|i| {
        let body = completion(&format!("Busy {i}?"), 100);
        let t = &t;
        async move { t.post("/v1/completions", &body).await }
    });
    for (status, body) in futures::future::join_all(requests).await {
        assert_eq!(status, 200, "{body}");
    }
    let moved = requests_between(&before, &t.metrics().await);
    assert!(moved[0] > 0.0 && moved.iter().sum::<f64>() == 12.0, "{moved:?}");
}

async fn round_robin_uses_both_workers(mode: Mode) {
    let t = Topology::start_on(mode, &[MODEL, MODEL], &["--router-mode", "round-robin"]).await;
    for _ in 0..6 {
        let (status, body) = t.post("/v1/chat/completions", &chat_body("hi", 2)).await;
        assert_eq!(status, 200, "{body}");
    }
    // The frontend's metrics say which instance got what.
    let metrics = t.metrics().await;
    let per_instance: Vec<f64> = instance_requests(&metrics).into_values().collect();
    assert_eq!(per_instance.len(), 2, "{metrics}");
    assert!(per_instance.iter().all(|&n| n == 3.0), "{per_instance:?}");
}

async fn a_killed_worker_leaves_within_its_lease_and_requests_keep_succeeding(mode: Mode) {
    let t = Topology::start_on(mode, &[MODEL, MODEL, "switchyard-tiny-extra"], &[]).await;
    assert_eq!(t.models().await, vec![MODEL.to_owned(), "switchyard-tiny-extra".to_owned()]);

    // SIGKILL: no deregistration; the lease (2 s) must expire.
    let killed_at = Instant::now();
    t.workers[0].signal(Signal::SIGKILL);
    t.workers[2].signal(Signal::SIGKILL);
    // Requests right after the kill may be routed to the dead worker first; the frontend must
    // retry them on the live one.
    for _ in 0..6 {
        let (status, body) = t.post("/v1/chat/completions", &chat_body("still there?", 2)).await;
        assert_eq!(status, 200, "{body}");
    }
    t.wait_instances(1).await;
    let gone_after = killed_at.elapsed();
    assert!(gone_after < Duration::from_secs(2) + Duration::from_secs(3), "{gone_after:?}");
    assert_eq!(t.models().await, vec![MODEL.to_owned()]);
    eprintln!("{mode:?}: SIGKILLed workers left routing {gone_after:?} after the kill (lease 2 s)");
    let health = support::health_instances(&t.health().await);
    assert_eq!(health.get(MODEL), Some(&1), "{health:?}");
    // From now on every request goes to the live worker: only its counter moves.
    let before = instance_requests(&t.metrics().await);
    for _ in 0..4 {
        let (status, body) = t
            .post("/v1/completions", &json!({"model": MODEL, "prompt": "x", "max_tokens": 2}))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let after = instance_requests(&t.metrics().await);
    let moved: Vec<f64> = after
        .iter()
        .map(|(instance, n)| n - before.get(instance).copied().unwrap_or(0.0))
        .filter(|d| *d != 0.0)
        .collect();
    assert_eq!(moved, [4.0], "before {before:?} after {after:?}");
    // The extra model is gone: 404 now.
    let (status, body) = t.post("/v1/chat/completions", &json!({"model": "switchyard-tiny-extra", "messages": [{"role": "user", "content": "x"}]})).await;
    assert!(status == 404 || status == 503, "{status} {body}");
}

async fn sigterm_deregisters_at_once_and_drains_in_flight_requests(mode: Mode) {
    let mut t = Topology::start_on(mode, &[], &[]).await;
    // A slow worker (simulated real time / 2: a few ms per token), so the request below is
    // still running when the worker is told to stop.
    t.add_worker(MODEL, &["--speedup-ratio", "2"]);
    t.wait_instances(1).await;
    let req = json!({"model": MODEL, "prompt": "go", "max_tokens": 150, "stream": true,
        "stream_options": {"include_usage": true}});
    let send = t.http.post(format!("{}/v1/completions", t.url)).json(&req).send();
    let mut resp = tokio::time::timeout(WAIT, send).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = String::new();
    let first = tokio::time::timeout(WAIT, resp.chunk()).await.unwrap().unwrap().unwrap();
    body.push_str(&String::from_utf8_lossy(&first));

    // In flight now: SIGTERM must deregister at once and let the request finish.
    t.workers[0].signal(Signal::SIGTERM);
    let deregistered = Instant::now();
    t.wait_instances(0).await;
    // Deregistered, not expired: well within the 2 s lease.
    assert!(deregistered.elapsed() < Duration::from_secs(2), "{:?}", deregistered.elapsed());
    while let Some(chunk) = tokio::time::timeout(WAIT, resp.chunk()).await.unwrap().unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert!(body.contains("\"completion_tokens\":150"), "{body}");
    let exit = t.workers[0].wait_exit(WAIT);
    assert!(exit.success(), "{exit:?}");
}

async fn bad_requests_get_openai_errors_with_the_right_status(mode: Mode) {
    let t = Topology::start_on(mode, &[MODEL], &["--max-body-bytes", "4096"]).await;
    let chat = format!("{}/v1/chat/completions", t.url);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("malformed JSON", b"{\"model\": ".to_vec(), 400),
        ("wrong type", br#"{"model": "switchyard-tiny", "messages": "hi"}"#.to_vec(), 400),
        ("missing messages", br#"{"model": "switchyard-tiny"}"#.to_vec(), 400),
        ("temperature out of range", serde_json::to_vec(&json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": 7})).unwrap(), 400),
        ("n > 1", serde_json::to_vec(&json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 2})).unwrap(), 400),
        ("max_tokens 0", serde_json::to_vec(&json!({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0})).unwrap(), 400),
        ("unknown model", serde_json::to_vec(&json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]})).unwrap(), 404),
        ("body over the limit", serde_json::to_vec(&json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(8000)}]})).unwrap(), 413),
    ];
    for (what, body, want) in cases {
        let (status, err) = post_raw(&t.http, &chat, body).await;
        assert_eq!(status, want, "{what}: {err}");
        let e = &err["error"];
        assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {err}");
        assert!(e["type"].is_string(), "{what}: {err}");
        assert!(e.get("param").is_some() && e.get("code").is_some(), "{what}: {err}");
    }
    let completions = format!("{}/v1/completions", t.url);
    let (status, err) =
        post_raw(&t.http, &completions, br#"{"model": "switchyard-tiny"}"#.to_vec()).await;
    assert_eq!(status, 400, "missing prompt: {err}");

    // No live instance of a model the frontend knows: 503.
    t.workers[0].signal(Signal::SIGKILL);
    t.wait_instances(0).await;
    let (status, err) = t.post("/v1/chat/completions", &chat_body("anyone?", 2)).await;
    assert_eq!(status, 503, "{err}");
    assert!(err["error"]["message"].is_string());
}
