//! The OpenAI surface beyond plain text: output parsers named by a model's card, the timing
//! extension, `/v1/responses`, `/v1/models/{id}`, `/openapi.json`, refusals that must be 4xx,
//! and a model whose chat template does not compile (not served, never a 500).

#![allow(clippy::unwrap_used)]

mod common;

use anyhow::Result;
use common::*;
use serde_json::{Value, json};
use switchyard_frontend::FrontendConfig;
use switchyard_proto::FinishReason;

const OUTPUT: &str = "<think>\nCheck the weather.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";

fn tools() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}])
}

/// A harness whose model `qwen` replays [`OUTPUT`] one token per chunk, with the Qwen3 and
/// Hermes parsers in its card.
async fn parsing_harness() -> Result<Harness> {
    let h = Harness::start(FrontendConfig::default(), vec![]).await?;
    let chunks = encode(OUTPUT, false).into_iter().map(|id| vec![id]).collect();
    let worker = ScriptedWorker::new(Script::Tokens { chunks, finish: FinishReason::Stop });
    let mut card = card("qwen");
    card.reasoning_parser = "qwen3".into();
    card.tool_call_parser = "hermes".into();
    h.add_worker_with_card("q1", worker, card).await?;
    eventually(|| async { h.get("/v1/models/qwen").await.is_ok_and(|r| r.status() == 200) })
        .await?;
    Ok(h)
}

#[tokio::test]
async fn streamed_reasoning_and_tool_calls_with_timing() -> Result<()> {
    let h = parsing_harness().await?;
    let body = json!({
        "model": "qwen", "messages": [{"role": "user", "content": "Weather?"}],
        "tools": tools(), "stream": true, "nvext": {"timing": true},
    });
    let (status, events) = h.post_stream("/v1/chat/completions", body).await?;
    assert_eq!(status, 200);
    let chunks: Vec<Value> = events
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let text = |key: &str| -> String {
        chunks.iter().filter_map(|c| c["choices"][0]["delta"][key].as_str()).collect()
    };
    assert_eq!(text("reasoning_content"), "Check the weather.");
    assert_eq!(text("content"), "");
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["index"], 0);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert_eq!(calls[0]["function"]["arguments"], r#"{"city":"Paris"}"#);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(last["nvext"]["worker_id"], "q1");
    assert!(last["nvext"]["timing"]["total_ms"].as_f64().unwrap() > 0.0);
    h.stop().await
}

#[tokio::test]
async fn responses_whole() -> Result<()> {
    let h = parsing_harness().await?;
    let body = json!({
        "model": "qwen", "instructions": "Be brief.", "input": "Weather?",
        "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}],
    });
    let (status, body) = h.post_json("/v1/responses", body).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "response");
    assert_eq!(body["status"], "completed");
    let kinds: Vec<&str> =
        body["output"].as_array().unwrap().iter().map(|i| i["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["reasoning", "function_call"]);
    assert_eq!(body["output"][1]["name"], "get_weather");
    assert!(body["usage"]["input_tokens"].as_u64().unwrap() > 0);
    h.stop().await
}

#[tokio::test]
async fn refusals_are_client_errors() -> Result<()> {
    let h = parsing_harness().await?;
    let user = json!([{"role": "user", "content": "x"}]);
    let cases = [
        (
            "/v1/chat/completions",
            json!({"model": "qwen", "messages": user, "tools": tools(), "tool_choice": "required"}),
            400,
            "tool_choice",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "qwen", "messages": user, "continue_final_message": true}),
            400,
            "continue_final_message",
        ),
        (
            "/v1/responses",
            json!({"model": "qwen", "input": "x", "previous_response_id": "resp_1"}),
            400,
            "previous_response_id",
        ),
        (
            "/v1/responses",
            json!({"model": "qwen", "input": [{"type": "web_search_call"}]}),
            400,
            "input[0].type",
        ),
        ("/v1/embeddings", json!({"model": "qwen", "input": "x"}), 400, ""),
        ("/v1/embeddings", json!({"model": "nope", "input": "x"}), 404, ""),
    ];
    for (path, body, want, param) in cases {
        let (status, reply) = h.post_json(path, body.clone()).await?;
        assert_eq!(status, want, "{path} {body}: {reply}");
        if !param.is_empty() {
            assert_eq!(reply["error"]["param"], param, "{reply}");
        }
    }
    assert_eq!(h.get("/v1/models/nope").await?.status(), 404);
    let doc: Value = h.get("/openapi.json").await?.json().await?;
    for path in [
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/responses",
        "/v1/embeddings",
        "/v1/models/{id}",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from /openapi.json");
    }
    h.stop().await
}

#[tokio::test]
async fn a_template_that_does_not_compile_keeps_its_model_out() -> Result<()> {
    let h = Harness::start(FrontendConfig::default(), vec![]).await?;
    let dir = tempfile::tempdir()?;
    let files = switchyard_model::ModelFiles::resolve(switchyard_model::DEFAULT_SOURCE)?;
    std::fs::write(dir.path().join("tokenizer.json"), &*files.tokenizer_json)?;
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        json!({"chat_template": "{% for m in messages %}{{ m.content }"}).to_string(),
    )?;
    let mut broken = card("broken");
    broken.tokenizer_source = dir.path().display().to_string();
    let worker = ScriptedWorker::new(Script::Tokens { chunks: vec![], finish: FinishReason::Stop });
    h.add_worker_with_card("b1", worker, broken).await?;
    // Loading starts when the model appears; once it failed, the model is not listed.
    eventually(|| async {
        let reply = h
            .post_json(
                "/v1/chat/completions",
                json!({"model": "broken", "messages": [{"role": "user", "content": "x"}]}),
            )
            .await;
        reply.is_ok_and(|(status, body)| {
            status == 503 && body["error"]["code"] == "model_not_served"
        })
    })
    .await?;
    let (status, body) = h
        .post_json(
            "/v1/chat/completions",
            json!({"model": "broken", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await?;
    assert_eq!(status, 503);
    assert!(body["error"]["message"].as_str().unwrap().contains("chat template"), "{body}");
    let models: Value = h.get("/v1/models").await?.json().await?;
    assert!(models["data"].as_array().unwrap().iter().all(|m| m["id"] != "broken"), "{models}");
    assert_eq!(h.get("/v1/models/broken").await?.status(), 404);
    h.stop().await
}

#[tokio::test]
async fn embeddings_go_to_instances_that_serve_them() -> Result<()> {
    let h = Harness::start(FrontendConfig::default(), vec![]).await?;
    let worker = ScriptedWorker::new(Script::Embedding(vec![1.0, -0.5]));
    let mut embedder = card("embedder");
    embedder.embeddings = true;
    h.add_worker_with_card("e1", worker.clone(), embedder).await?;
    eventually(|| async { h.get("/v1/models/embedder").await.is_ok_and(|r| r.status() == 200) })
        .await?;
    let (status, body) =
        h.post_json("/v1/embeddings", json!({"model": "embedder", "input": ["a b", "c"]})).await?;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["object"], "list");
    assert_eq!(body["data"][1]["index"], 1);
    assert_eq!(body["data"][0]["embedding"], json!([1.0, -0.5]));
    assert_eq!(
        body["usage"]["prompt_tokens"],
        (encode("a b", true).len() + encode("c", true).len()) as u64
    );
    let sent = worker.last_request();
    assert!(sent.embed);
    assert_eq!(sent.token_ids, encode("c", true));
    let (status, body) = h
        .post_json(
            "/v1/embeddings",
            json!({"model": "embedder", "input": "x", "encoding_format": "base64"}),
        )
        .await?;
    assert_eq!(status, 200, "{body}");
    // 1.0 and -0.5 as little-endian f32s.
    assert_eq!(body["data"][0]["embedding"], "AACAPwAAAL8=");
    h.stop().await
}
