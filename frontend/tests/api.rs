//! The OpenAI API end to end: the real frontend, the real TCP request plane, a memory store,
//! and scripted workers that emit known token ids.

#![allow(clippy::unwrap_used)]

mod common;

use anyhow::Result;
use common::*;
use serde_json::{Value, json};
use switchyard_frontend::FrontendConfig;
use switchyard_proto::FinishReason;

const TEXT: &str = "Hello, wörld! 日本語 😀 done.";

fn text_worker(finish: FinishReason) -> std::sync::Arc<ScriptedWorker> {
    let ids = encode(TEXT, false);
    // Three tokens per chunk, so chunk boundaries fall inside multi-byte characters too.
    let chunks = ids.chunks(3).map(<[u32]>::to_vec).collect();
    ScriptedWorker::new(Script::Tokens { chunks, finish })
}

fn parse(events: &[String]) -> Vec<Value> {
    events.iter().filter(|e| *e != "[DONE]").map(|e| serde_json::from_str(e).unwrap()).collect()
}

#[tokio::test]
async fn chat_without_streaming() -> Result<()> {
    let worker = text_worker(FinishReason::Length);
    let h = Harness::start(FrontendConfig::default(), vec![worker.clone()]).await?;
    let (status, body) = h.post_json("/v1/chat/completions", chat_body("Hi there")).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "chat.completion");
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["choices"][0]["message"]["role"], "assistant");
    assert_eq!(body["choices"][0]["message"]["content"], TEXT);
    assert_eq!(body["choices"][0]["finish_reason"], "length");

    let prompt = chat_prompt_tokens("Hi there");
    let completion = encode(TEXT, false).len() as u64;
    assert_eq!(body["usage"]["prompt_tokens"], prompt.len() as u64);
    assert_eq!(body["usage"]["completion_tokens"], completion);
    assert_eq!(body["usage"]["total_tokens"], prompt.len() as u64 + completion);
    assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], CACHED);

    // The worker got the tokenized prompt, its block hashes and a bounded max_tokens.
    let sent = worker.last_request();
    assert_eq!(sent.token_ids, prompt);
    assert_eq!(sent.block_hashes, switchyard_router::block_hashes(&prompt, BLOCK_SIZE as usize));
    assert!(!sent.block_hashes.is_empty());
    assert_eq!(sent.model, MODEL);
    assert!(sent.deadline_ms > 0);
    let sampling = sent.sampling.unwrap();
    assert_eq!(sampling.max_tokens as usize, CONTEXT as usize - prompt.len());
    h.stop().await
}

#[tokio::test]
async fn chat_streaming_with_usage() -> Result<()> {
    let worker = text_worker(FinishReason::Stop);
    let h = Harness::start(FrontendConfig::default(), vec![worker.clone()]).await?;
    let mut body = chat_body("Hi");
    body["stream"] = json!(true);
    body["stream_options"] = json!({ "include_usage": true });
    body["max_tokens"] = json!(100);
    body["temperature"] = json!(0.5);
    body["top_k"] = json!(5);
    body["seed"] = json!(42);
    body["some_unknown_field"] = json!({ "ignored": true });
    let response = h.post("/v1/chat/completions", body).await?;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = sse_data(&within(response.text()).await?)?;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = parse(&events);

    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut content = String::new();
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        assert_eq!(c["id"], chunks[0]["id"]);
        if let Some(text) = c["choices"][0]["delta"]["content"].as_str() {
            content.push_str(text);
        }
    }
    assert_eq!(content, TEXT);
    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    let usage = &chunks[chunks.len() - 1];
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["prompt_tokens"], chat_prompt_tokens("Hi").len() as u64);
    assert_eq!(usage["usage"]["completion_tokens"], encode(TEXT, false).len() as u64);

    let sampling = worker.last_request().sampling.unwrap();
    assert_eq!(sampling.max_tokens, 100);
    assert_eq!(sampling.temperature, Some(0.5));
    assert_eq!(sampling.top_k, Some(5));
    assert_eq!(sampling.seed, Some(42));
    h.stop().await
}

#[tokio::test]
async fn streaming_without_include_usage_has_no_usage_chunk() -> Result<()> {
    let h =
        Harness::start(FrontendConfig::default(), vec![text_worker(FinishReason::Stop)]).await?;
    let mut body = chat_body("Hi");
    body["stream"] = json!(true);
    let (status, events) = h.post_stream("/v1/chat/completions", body).await?;
    assert_eq!(status, 200);
    let chunks = parse(&events);
    assert!(
        chunks
            .iter()
            .all(|c| c.get("usage").is_none() && c["choices"].as_array().unwrap().len() == 1)
    );
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    h.stop().await
}

#[tokio::test]
async fn completions_with_text_and_token_prompts() -> Result<()> {
    let worker = text_worker(FinishReason::Length);
    let h = Harness::start(FrontendConfig::default(), vec![worker.clone()]).await?;
    let (status, body) = h
        .post_json(
            "/v1/completions",
            json!({ "model": MODEL, "prompt": "Once upon a time", "max_tokens": 64 }),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "text_completion");
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"));
    assert_eq!(body["choices"][0]["text"], TEXT);
    assert_eq!(body["choices"][0]["finish_reason"], "length");
    let prompt = encode("Once upon a time", true);
    assert_eq!(body["usage"]["prompt_tokens"], prompt.len() as u64);
    assert_eq!(worker.last_request().token_ids, prompt);

    // Token ids go through as given; a one-element list of prompts is one prompt.
    for prompt in [json!([5, 6, 7, 8, 9]), json!([[5, 6, 7, 8, 9]])] {
        let (status, body) =
            h.post_json("/v1/completions", json!({ "model": MODEL, "prompt": prompt })).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["usage"]["prompt_tokens"], 5);
        assert_eq!(worker.last_request().token_ids, vec![5, 6, 7, 8, 9]);
    }

    let (status, events) = h
        .post_stream("/v1/completions", json!({ "model": MODEL, "prompt": "x", "stream": true, "stream_options": {"include_usage": true} }))
        .await?;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = parse(&events);
    let text: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, TEXT);
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], "length");
    assert_eq!(
        chunks[chunks.len() - 1]["usage"]["completion_tokens"],
        encode(TEXT, false).len() as u64
    );
    h.stop().await
}

#[tokio::test]
async fn stop_strings_end_the_response_and_cancel_the_worker() -> Result<()> {
    let worker = ScriptedWorker::new(Script::Endless(encode("abc STOP ", false)));
    let h = Harness::start(FrontendConfig::default(), vec![worker.clone()]).await?;
    let mut body = chat_body("go");
    body["stop"] = json!("STOP");
    let (status, body) = h.post_json("/v1/chat/completions", body.clone()).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["choices"][0]["message"]["content"], "abc ");
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert!(body["usage"]["completion_tokens"].as_u64().unwrap() >= 2);

    // Streaming, with a list of stops; the endless worker's stream is dropped each time.
    let mut body = chat_body("go");
    body["stop"] = json!(["never", " STOP"]);
    body["stream"] = json!(true);
    let (status, events) = h.post_stream("/v1/chat/completions", body).await?;
    assert_eq!(status, 200);
    let chunks = parse(&events);
    let content: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
    assert_eq!(content, "abc");
    assert_eq!(chunks.last().unwrap()["choices"][0]["finish_reason"], "stop");
    eventually(|| async { worker.streams_dropped.load(std::sync::atomic::Ordering::SeqCst) == 2 })
        .await?;
    h.stop().await
}

#[tokio::test]
async fn characters_split_across_chunks_arrive_whole() -> Result<()> {
    // One byte-level token per byte, one token per chunk: every multi-byte character is split.
    let tokenizer = tokenizer();
    let single_byte: Vec<u32> = "é😀"
        .bytes()
        .map(|b| {
            (0..tokenizer.get_vocab_size(true) as u32)
                .find(|&id| byte_token(&tokenizer, id, b))
                .unwrap()
        })
        .collect();
    let chunks = single_byte.iter().map(|&id| vec![id]).collect();
    let h = Harness::start(
        FrontendConfig::default(),
        vec![ScriptedWorker::new(Script::Tokens { chunks, finish: FinishReason::Stop })],
    )
    .await?;
    let mut body = chat_body("x");
    body["stream"] = json!(true);
    let (_, events) = h.post_stream("/v1/chat/completions", body).await?;
    let pieces: Vec<String> = parse(&events)
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str().map(str::to_owned))
        .filter(|t| !t.is_empty())
        .collect();
    assert_eq!(pieces, vec!["é".to_owned(), "😀".to_owned()]);
    h.stop().await
}

/// Whether token `id` is the byte-level token for byte `b` (its one character maps to `b`).
fn byte_token(tokenizer: &tokenizers::Tokenizer, id: u32, b: u8) -> bool {
    let Some(token) = tokenizer.id_to_token(id) else {
        return false;
    };
    let mut chars = token.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return false;
    };
    let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    if printable {
        return c as u32 == u32::from(b);
    }
    let shifted =
        (0..b).filter(|x| !matches!(x, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF)).count() as u32;
    c as u32 == 256 + shifted
}

#[tokio::test]
async fn models_health_live_and_metrics() -> Result<()> {
    let h =
        Harness::start(FrontendConfig::default(), vec![text_worker(FinishReason::Stop)]).await?;
    let models: Value = within(h.get("/v1/models").await?.json()).await?;
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], MODEL);
    assert_eq!(models["data"][0]["object"], "model");

    let health = h.get("/health").await?;
    assert_eq!(health.status(), 200);
    let health: Value = within(health.json()).await?;
    assert_eq!(health["instances"][MODEL], 1);
    assert_eq!(h.get("/live").await?.status(), 200);

    let (status, _) = h.post_json("/v1/chat/completions", chat_body("count me")).await?;
    assert_eq!(status, 200);
    let metrics = within(h.get("/metrics").await?.text()).await?;
    for name in [
        "switchyard_frontend_requests_total",
        "switchyard_frontend_time_to_first_token_seconds_bucket",
        "switchyard_frontend_inter_token_latency_seconds_bucket",
        "switchyard_frontend_request_duration_seconds_bucket",
        "switchyard_frontend_inflight_requests",
        "switchyard_frontend_instance_requests_total",
        "switchyard_frontend_input_tokens_total",
        "switchyard_frontend_output_tokens_total",
    ] {
        assert!(metrics.contains(name), "{name} missing from:\n{metrics}");
    }
    assert!(metrics.contains(r#"model="tiny""#));
    assert!(metrics.contains(r#"status="200""#));
    assert!(metrics.contains(r#"instance="w0""#));
    h.stop().await
}

#[tokio::test]
async fn health_is_503_without_instances() -> Result<()> {
    let h = Harness::start(FrontendConfig::default(), vec![]).await?;
    let health = h.get("/health").await?;
    assert_eq!(health.status(), 503);
    assert_eq!(h.get("/live").await?.status(), 200);
    let models: Value = within(h.get("/v1/models").await?.json()).await?;
    assert_eq!(models["data"], json!([]));
    h.stop().await
}
