//! Every error status in OpenAI's JSON shape, retries across instances, timeouts, and
//! cancellation when the client goes away.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use common::*;
use serde_json::{Value, json};
use switchyard_frontend::{FrontendConfig, PolicyKind};
use switchyard_proto::{ErrorKind, FinishReason, Role};

fn ok_worker() -> std::sync::Arc<ScriptedWorker> {
    ScriptedWorker::new(Script::Tokens {
        chunks: vec![encode("fine", false)],
        finish: FinishReason::Stop,
    })
}

/// Checks OpenAI's error shape; returns the `error` object.
fn error_of(body: &Value) -> &Value {
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some() && error.get("code").is_some(), "{body}");
    error
}

async fn expect_400(h: &Harness, path: &str, body: Value, param: Option<&str>) -> Result<()> {
    let (status, response) = h.post_json(path, body.clone()).await?;
    assert_eq!(status, 400, "{body} -> {response}");
    let error = error_of(&response);
    assert_eq!(error["type"], "invalid_request_error");
    match param {
        Some(param) => assert_eq!(error["param"], param, "{body} -> {response}"),
        None => assert!(error["param"].is_null(), "{response}"),
    }
    Ok(())
}

#[tokio::test]
async fn bad_requests_are_400_naming_the_field() -> Result<()> {
    let h = Harness::start(FrontendConfig::default(), vec![ok_worker()]).await?;
    let chat = "/v1/chat/completions";
    let with = |key: &str, value: Value| {
        let mut body = chat_body("hi");
        body[key] = value;
        body
    };
    expect_400(&h, chat, json!({ "model": MODEL }), Some("messages")).await?;
    expect_400(&h, chat, json!({ "messages": [{"role": "user", "content": "x"}] }), Some("model"))
        .await?;
    expect_400(&h, chat, with("temperature", json!(2.5)), Some("temperature")).await?;
    expect_400(&h, chat, with("temperature", json!("warm")), Some("temperature")).await?;
    expect_400(&h, chat, with("top_p", json!(0)), Some("top_p")).await?;
    expect_400(&h, chat, with("max_tokens", json!(0)), Some("max_tokens")).await?;
    expect_400(&h, chat, with("max_tokens", json!(-5)), Some("max_tokens")).await?;
    expect_400(&h, chat, with("max_completion_tokens", json!(0)), Some("max_completion_tokens"))
        .await?;
    expect_400(&h, chat, with("n", json!(2)), Some("n")).await?;
    expect_400(&h, chat, with("stop", json!(7)), Some("stop")).await?;
    expect_400(&h, chat, with("messages", json!([])), Some("messages")).await?;
    expect_400(&h, chat, with("messages", json!("hello")), Some("messages")).await?;
    expect_400(
        &h,
        chat,
        with("messages", json!([{"role": "user", "content": 1}])),
        Some("messages[0].content"),
    )
    .await?;
    expect_400(&h, chat, with("messages", json!([{"content": "x"}])), Some("messages[0].role"))
        .await?;
    // Prompt plus max_tokens over the context (2048).
    expect_400(&h, chat, with("max_tokens", json!(CONTEXT)), Some("max_tokens")).await?;
    expect_400(
        &h,
        chat,
        with("messages", json!([{"role": "user", "content": "word ".repeat(3000)}])),
        Some("messages"),
    )
    .await?;

    let completions = "/v1/completions";
    expect_400(&h, completions, json!({ "model": MODEL }), Some("prompt")).await?;
    expect_400(&h, completions, json!({ "model": MODEL, "prompt": ["a", "b"] }), Some("prompt"))
        .await?;
    expect_400(&h, completions, json!({ "model": MODEL, "prompt": [] }), Some("prompt")).await?;
    expect_400(
        &h,
        completions,
        json!({ "model": MODEL, "prompt": [1, 9_999_999] }),
        Some("prompt"),
    )
    .await?;

    // Not JSON at all, or not an object.
    for raw in ["{\"model\": ", "[1, 2]", "", "null"] {
        let response = within(
            h.http.post(h.url(chat)).header("content-type", "application/json").body(raw).send(),
        )
        .await?;
        assert_eq!(response.status(), 400, "{raw:?}");
        let body: Value = within(response.json()).await?;
        assert!(error_of(&body)["param"].is_null());
    }
    h.stop().await
}

#[tokio::test]
async fn unknown_model_is_404_and_a_model_without_instances_is_503() -> Result<()> {
    let h = Harness::start(FrontendConfig::default(), vec![ok_worker()]).await?;
    let mut body = chat_body("hi");
    body["model"] = json!("no-such-model");
    let (status, response) = h.post_json("/v1/chat/completions", body).await?;
    assert_eq!(status, 404);
    assert_eq!(error_of(&response)["code"], "model_not_found");

    // A prefill-only instance cannot take a whole request.
    h.add_instance("p0", "prefill-only", "127.0.0.1:1", Role::Prefill).await?;
    eventually(|| async {
        let mut body = chat_body("hi");
        body["model"] = json!("prefill-only");
        h.post_json("/v1/chat/completions", body).await.is_ok_and(|(s, _)| s == 503)
    })
    .await?;

    // A model whose instances all left stays known: 503, not 404.
    h.deregister_all().await?;
    eventually(|| async { h.get("/health").await.is_ok_and(|r| r.status() == 503) }).await?;
    let (status, response) = h.post_json("/v1/chat/completions", chat_body("hi")).await?;
    assert_eq!(status, 503, "{response}");
    let error = error_of(&response);
    assert_eq!(error["type"], "server_error");
    assert_eq!(error["code"], "no_instance");
    h.stop().await
}

#[tokio::test]
async fn oversized_bodies_unknown_routes_and_wrong_methods() -> Result<()> {
    let config = FrontendConfig { max_body_bytes: 1024, ..FrontendConfig::default() };
    let h = Harness::start(config, vec![ok_worker()]).await?;
    let (status, response) =
        h.post_json("/v1/chat/completions", chat_body(&"x".repeat(4096))).await?;
    assert_eq!(status, 413);
    assert_eq!(error_of(&response)["code"], "request_too_large");

    let response = h.get("/v1/nothing-here").await?;
    assert_eq!(response.status(), 404);
    let body: Value = within(response.json()).await?;
    assert_eq!(error_of(&body)["code"], "not_found");

    let response = h.get("/v1/chat/completions").await?;
    assert_eq!(response.status(), 405);
    let body: Value = within(response.json()).await?;
    assert_eq!(error_of(&body)["code"], "method_not_allowed");
    h.stop().await
}

#[tokio::test]
async fn requests_go_around_unreachable_and_overloaded_instances() -> Result<()> {
    let overloaded = ScriptedWorker::new(Script::Reject(ErrorKind::Overloaded));
    let draining = ScriptedWorker::new(Script::Reject(ErrorKind::ShuttingDown));
    let good = ok_worker();
    // Round-robin puts every instance first in turn; kv would keep the repeated prompt on
    // the one instance that answered it.
    let config = FrontendConfig {
        max_attempts: 4,
        router_mode: PolicyKind::RoundRobin,
        ..FrontendConfig::default()
    };
    let h =
        Harness::start(config, vec![overloaded.clone(), draining.clone(), good.clone()]).await?;
    // An instance whose address has nobody listening.
    let dead = within(tokio::net::TcpListener::bind("127.0.0.1:0")).await?;
    let dead_address = dead.local_addr()?.to_string();
    drop(dead);
    h.add_instance("dead", MODEL, &dead_address, Role::Aggregated).await?;
    eventually(|| async {
        let health: Value = match h.get("/health").await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => return false,
        };
        health["instances"][MODEL] == 4
    })
    .await?;

    for i in 0..8 {
        let mut body = chat_body("hi");
        body["stream"] = json!(i % 2 == 0);
        let response = h.post("/v1/chat/completions", body).await?;
        assert_eq!(response.status(), 200);
        within(response.text()).await?;
    }
    assert_eq!(good.received(), 8);
    assert!(overloaded.received() > 0 && draining.received() > 0);
    h.stop().await
}

#[tokio::test]
async fn every_instance_turning_the_request_away_is_503() -> Result<()> {
    let h = Harness::start(
        FrontendConfig::default(),
        vec![
            ScriptedWorker::new(Script::Reject(ErrorKind::Overloaded)),
            ScriptedWorker::new(Script::Reject(ErrorKind::Overloaded)),
        ],
    )
    .await?;
    let (status, response) = h.post_json("/v1/chat/completions", chat_body("hi")).await?;
    assert_eq!(status, 503);
    assert_eq!(error_of(&response)["code"], "overloaded");
    h.stop().await
}

#[tokio::test]
async fn worker_rejections_and_failures() -> Result<()> {
    let h = Harness::start(
        FrontendConfig::default(),
        vec![ScriptedWorker::new(Script::Reject(ErrorKind::InvalidRequest))],
    )
    .await?;
    let (status, response) = h.post_json("/v1/chat/completions", chat_body("hi")).await?;
    assert_eq!(status, 400);
    assert_eq!(error_of(&response)["code"], "rejected_by_worker");
    h.stop().await?;

    // A failure after the first token: a 5xx that hides the worker's message, or, once a stream
    // has begun, an error event and the end of the stream.
    let h = Harness::start(
        FrontendConfig::default(),
        vec![ScriptedWorker::new(Script::FailAfter(encode("partial", false)))],
    )
    .await?;
    let (status, response) = h.post_json("/v1/chat/completions", chat_body("hi")).await?;
    assert_eq!(status, 502);
    let error = error_of(&response);
    assert_eq!(error["type"], "server_error");
    assert!(!error["message"].as_str().unwrap().contains("scripted"), "{response}");

    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    let (status, events) = h.post_stream("/v1/chat/completions", body).await?;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> =
        events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["content"], "partial");
    error_of(chunks.last().unwrap());
    h.stop().await
}

#[tokio::test]
async fn a_silent_worker_times_out() -> Result<()> {
    let config =
        FrontendConfig { request_timeout: Duration::from_millis(300), ..FrontendConfig::default() };
    let worker = ScriptedWorker::new(Script::Hang);
    let h = Harness::start(config, vec![worker.clone()]).await?;
    let started = std::time::Instant::now();
    let (status, response) = h.post_json("/v1/chat/completions", chat_body("hi")).await?;
    assert_eq!(status, 504);
    assert_eq!(error_of(&response)["code"], "timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
    eventually(|| async { worker.streams_dropped.load(Ordering::SeqCst) == 1 }).await?;
    h.stop().await
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_the_worker() -> Result<()> {
    let worker = ScriptedWorker::new(Script::Endless(encode("more ", false)));
    let h = Harness::start(FrontendConfig::default(), vec![worker.clone()]).await?;
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    let mut response = h.post("/v1/chat/completions", body).await?;
    assert_eq!(response.status(), 200);
    let first = within(response.chunk()).await?.unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));
    let dropped = worker.dropped.notified();
    drop(response);
    within(dropped).await;
    assert_eq!(worker.streams_dropped.load(Ordering::SeqCst), 1);

    // The stream also ends at the request's limit, with an error event.
    h.stop().await?;
    let config =
        FrontendConfig { request_timeout: Duration::from_millis(300), ..FrontendConfig::default() };
    let h =
        Harness::start(config, vec![ScriptedWorker::new(Script::Endless(encode("more ", false)))])
            .await?;
    let mut body = chat_body("hi");
    body["stream"] = json!(true);
    let (status, events) = h.post_stream("/v1/chat/completions", body).await?;
    assert_eq!(status, 200);
    let error: Value = serde_json::from_str(&events[events.len() - 2])?;
    assert_eq!(error_of(&error)["code"], "timeout");
    h.stop().await
}
