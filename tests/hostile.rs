//! Hostile input through the real binary: several hundred malformed, mistyped, oversized or
//! deeply nested requests. None may get a 5xx or take the frontend down, and every error is
//! OpenAI-shaped JSON — also the ones the HTTP layer itself produces.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::{Mode, Topology};

const MODEL: &str = "switchyard-tiny";

/// Values of the wrong type, range or size, tried in every field.
fn bad_values() -> Vec<Value> {
    let mut deep = json!(1);
    for _ in 0..100 {
        deep = json!([deep]);
    }
    vec![
        Value::Null,
        json!(true),
        json!(-1),
        json!(0),
        json!(1.5),
        json!(-1e300),
        json!(u64::MAX),
        json!(i64::MIN),
        json!(""),
        json!("x".repeat(20_000)),
        json!("\u{0}\u{202e}<|im_start|>"),
        json!([]),
        json!({}),
        json!([1, "a", null]),
        json!({"a": {"b": [1]}}),
        deep,
    ]
}

const CHAT_FIELDS: &[&str] = &[
    "model",
    "messages",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "stop",
    "seed",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "response_format",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "user",
    "min_tokens",
    "ignore_eos",
    "top_k",
    "min_p",
    "repetition_penalty",
    "parallel_tool_calls",
    "chat_template_kwargs",
];

const COMPLETION_FIELDS: &[&str] =
    &["prompt", "max_tokens", "echo", "best_of", "suffix", "logprobs", "stop", "stream"];

/// Raw bodies no JSON parser should accept as a request.
fn raw_bodies() -> Vec<Vec<u8>> {
    let mut bodies: Vec<Vec<u8>> = [
        "",
        " ",
        "null",
        "[]",
        "1",
        "\"text\"",
        "{",
        "}",
        "{\"model\":",
        "{\"model\": \"x\",}",
        "{\"model\": 'x'}",
        "{model: 1}",
        "{\"a\":1}{\"b\":2}",
        "{\"messages\": [}",
        "\u{feff}{\"model\": \"switchyard-tiny\"}",
        "{\"model\": \"switchyard-tiny\", \"messages\": NaN}",
        "{\"model\": \"switchyard-tiny\", \"max_tokens\": 1e999}",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    bodies.push(b"{\"model\": \"\xff\xfe\"}".to_vec());
    bodies.push(b"\xc3\x28\xa0\xa1".to_vec());
    bodies.push(format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000)).into_bytes());
    bodies.push(format!("{}{}", "{\"a\":".repeat(5_000), "}".repeat(5_000)).into_bytes());
    bodies.push(vec![b'x'; 100_000]);
    bodies
}

/// Checks one answer: no 5xx, and an OpenAI error body for every 4xx.
fn check(what: &str, status: u16, body: &[u8], failures: &mut Vec<String>) {
    if status >= 500 {
        failures.push(format!("{what}: {status} {}", String::from_utf8_lossy(body)));
        return;
    }
    if status >= 400 {
        let parsed: Option<Value> = serde_json::from_slice(body).ok();
        let shaped = parsed.as_ref().is_some_and(|v| {
            v["error"]["message"].as_str().is_some_and(|m| !m.is_empty())
                && v["error"]["type"].is_string()
                && v["error"].get("param").is_some()
                && v["error"].get("code").is_some()
        });
        if !shaped {
            failures.push(format!(
                "{what}: {status} not OpenAI-shaped: {}",
                String::from_utf8_lossy(body)
            ));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_4xx_in_openai_shape_never_5xx() {
    let t = Topology::start_on(Mode::FILE_TCP, &[], &["--max-body-bytes", "65536"]).await;
    let mut t = t;
    t.add_worker(MODEL, &["--speedup-ratio", "1000"]);
    t.wait_instances(1).await;
    let http = &t.http;
    let mut cases = 0;
    let mut failures = Vec::new();
    let send = async |path: &str, what: String, body: Vec<u8>, content_type: Option<&str>| {
        let mut req = http.post(format!("{}{path}", t.url)).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        (what, status, bytes)
    };

    let chat =
        json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4});
    let completion = json!({"model": MODEL, "prompt": "hi", "max_tokens": 4});
    let mut answers = Vec::new();
    for (path, base, fields) in [
        ("/v1/chat/completions", &chat, CHAT_FIELDS),
        ("/v1/completions", &completion, COMPLETION_FIELDS),
    ] {
        for field in fields {
            for value in bad_values() {
                let mut body = base.clone();
                body[*field] = value.clone();
                let what = format!(
                    "{path} {field}={}",
                    &value.to_string()[..value.to_string().len().min(40)]
                );
                answers.push(
                    send(path, what, serde_json::to_vec(&body).unwrap(), Some("application/json"))
                        .await,
                );
            }
        }
    }
    // Messages of every wrong shape.
    for message in bad_values().into_iter().chain([
        json!({"role": "wizard", "content": "x"}),
        json!({"role": "user"}),
        json!({"content": "x"}),
        json!({"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}),
        json!({"role": "user", "content": [{"type": "nonsense"}]}),
        json!({"role": "assistant", "tool_calls": [{"id": 1}]}),
        json!({"role": "tool", "content": "x"}),
    ]) {
        let body = json!({"model": MODEL, "messages": [message], "max_tokens": 4});
        answers.push(
            send(
                "/v1/chat/completions",
                format!("message {message}"),
                serde_json::to_vec(&body).unwrap(),
                Some("application/json"),
            )
            .await,
        );
    }
    for (i, raw) in raw_bodies().into_iter().enumerate() {
        for path in ["/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/embeddings"] {
            answers.push(
                send(path, format!("{path} raw body #{i}"), raw.clone(), Some("application/json"))
                    .await,
            );
        }
    }
    for ct in [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("\u{1}")] {
        let body = serde_json::to_vec(&chat).unwrap();
        if let Some(ct) = ct
            && reqwest::header::HeaderValue::from_str(ct).is_err()
        {
            continue;
        }
        answers.push(send("/v1/chat/completions", format!("content-type {ct:?}"), body, ct).await);
    }
    let over = json!({"model": MODEL, "prompt": "x".repeat(70_000)});
    answers.push(
        send(
            "/v1/completions",
            "body over the limit".into(),
            serde_json::to_vec(&over).unwrap(),
            Some("application/json"),
        )
        .await,
    );
    for (what, status, bytes) in &answers {
        cases += 1;
        check(what, *status, bytes, &mut failures);
    }
    // Paths and methods nobody serves.
    for (method, path) in [
        ("GET", "/v1/chat/completions"),
        ("DELETE", "/v1/models"),
        ("GET", "/v1/nope"),
        ("GET", "/%ff"),
        ("PUT", "/health"),
    ] {
        let resp =
            http.request(method.parse().unwrap(), format!("{}{path}", t.url)).send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap_or_default();
        cases += 1;
        check(&format!("{method} {path}"), status, &bytes, &mut failures);
    }
    let (status, _) = support::get_json(http, &format!("{}/live", t.url)).await;
    assert_eq!(status, 200, "the frontend is down after the corpus");
    eprintln!("{cases} hostile requests: {} failures", failures.len());
    assert!(cases >= 500, "{cases}");
    assert!(failures.is_empty(), "{} of {cases}:\n{}", failures.len(), failures.join("\n"));
}
