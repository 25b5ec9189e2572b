//! A scripted OpenAI-style server for the bench tests: it streams `max_tokens` one-token chunks
//! after a configured time to first token and per-token delay, and logs its own timings (when
//! each request arrived, when it emitted each chunk and `[DONE]`), so the bench's measurements
//! can be checked against the server's own clock.

#![allow(dead_code, clippy::unwrap_used)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Every await of these tests is bounded by this.
pub const WAIT: Duration = Duration::from_secs(60);

/// How the server behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct Script {
    pub ttft: Duration,
    pub per_token: Duration,
    /// Every `n`-th request (1-based) is answered with 503.
    pub fail_every: Option<usize>,
}

/// What the server saw and did for one streamed request.
#[derive(Debug, Clone)]
pub struct ServerLog {
    pub received: Instant,
    /// When each content chunk was handed to the connection.
    pub chunks: Vec<Instant>,
    pub done: Instant,
    pub body: Value,
}

impl ServerLog {
    pub fn ttft(&self) -> Duration {
        self.chunks[0] - self.received
    }
    pub fn e2e(&self) -> Duration {
        self.done - self.received
    }
    pub fn itls(&self) -> Vec<Duration> {
        self.chunks.windows(2).map(|w| w[1] - w[0]).collect()
    }
}

struct Shared {
    script: Script,
    count: AtomicUsize,
    logs: Mutex<Vec<ServerLog>>,
}

/// A running server; stopped when dropped.
pub struct ScriptedServer {
    pub url: String,
    shared: Arc<Shared>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ScriptedServer {
    pub async fn start(script: Script) -> ScriptedServer {
        let shared =
            Arc::new(Shared { script, count: AtomicUsize::new(0), logs: Mutex::new(Vec::new()) });
        let app = Router::new()
            .route("/v1/completions", post(generate))
            .route("/v1/chat/completions", post(generate))
            .route(
                "/v1/models",
                get(|| async { axum::Json(json!({"data": [{"id": "scripted"}]})) }),
            )
            .with_state(shared.clone());
        let bind = TcpListener::bind("127.0.0.1:0");
        let listener = tokio::time::timeout(WAIT, bind).await.unwrap().unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            // Small streamed writes must not wait on Nagle's algorithm.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
        });
        ScriptedServer { url, shared, stop, task }
    }

    /// The logs of the streamed requests, in order of completion.
    pub fn logs(&self) -> Vec<ServerLog> {
        self.shared.logs.lock().unwrap().clone()
    }
}

impl Drop for ScriptedServer {
    fn drop(&mut self) {
        self.stop.cancel();
        self.task.abort();
    }
}

fn sse(event: &Value) -> Bytes {
    Bytes::from(format!("data: {event}\n\n"))
}

async fn generate(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let received = Instant::now();
    let n = shared.count.fetch_add(1, Ordering::Relaxed) + 1;
    if shared.script.fail_every.is_some_and(|every| n % every == 0) {
        return (StatusCode::SERVICE_UNAVAILABLE, "scripted failure").into_response();
    }
    let body: Value = serde_json::from_slice(&body).unwrap();
    let max_tokens = body["max_tokens"].as_u64().unwrap() as usize;
    let chat = body.get("messages").is_some();
    let include_usage = body["stream_options"]["include_usage"] == true;
    let text_chunk = move |i: usize| {
        let text = format!(" t{i}");
        if chat {
            json!({"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"content": text}}]})
        } else {
            json!({"object": "text_completion", "choices": [{"index": 0, "text": text}]})
        }
    };
    if body["stream"] != true {
        tokio::time::sleep(shared.script.ttft + shared.script.per_token * max_tokens as u32).await;
        let text: String = (0..max_tokens).map(|i| format!(" t{i}")).collect();
        let choice = if chat {
            json!({"index": 0, "message": {"role": "assistant", "content": text}})
        } else {
            json!({"index": 0, "text": text})
        };
        let usage = json!({"prompt_tokens": 1, "completion_tokens": max_tokens});
        return axum::Json(json!({"choices": [choice], "usage": usage})).into_response();
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(4);
    let script = shared.script;
    // The task ends when the response is written or the client goes away; the server's
    // runtime owns it for that short while.
    tokio::spawn(async move {
        let mut log = ServerLog { received, chunks: Vec::new(), done: received, body };
        if chat {
            let role =
                json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]});
            if tx.send(Ok(sse(&role))).await.is_err() {
                return;
            }
        }
        let mut due = received + script.ttft;
        for i in 0..max_tokens {
            tokio::time::sleep_until(due.into()).await;
            log.chunks.push(Instant::now());
            if tx.send(Ok(sse(&text_chunk(i)))).await.is_err() {
                return;
            }
            due = Instant::now() + script.per_token;
        }
        if include_usage {
            let usage = json!({"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": max_tokens}});
            let _ = tx.send(Ok(sse(&usage))).await;
        }
        log.done = Instant::now();
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
        shared.logs.lock().unwrap().push(log);
    });
    let stream =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(stream))
        .unwrap()
}
