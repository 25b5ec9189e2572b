//! Test harness: a memory store, scripted workers served over the real TCP request plane and
//! registered in discovery as a worker would, and the real frontend on 127.0.0.1:0.

#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use async_trait::async_trait;
use futures::StreamExt;
use switchyard_frontend::FrontendConfig;
use switchyard_model::ModelFiles;
use switchyard_proto::{
    ErrorKind, FinishReason, GenerateChunk, GenerateRequest, InstanceRecord, ModelCard, Role,
    Usage, WorkerError,
};
use switchyard_runtime::discovery::{Discovery, Registration};
use switchyard_runtime::plane::tcp::{TcpClient, TcpClientConfig};
use switchyard_runtime::store::memory::MemoryStore;
use switchyard_runtime::{ChunkStream, GenerateHandler};
use tokenizers::Tokenizer;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Limit on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);
pub const MODEL: &str = "tiny";
pub const BLOCK_SIZE: u32 = 4;
pub const CONTEXT: u32 = 2048;
/// `cached_tokens` every scripted worker reports.
pub const CACHED: u32 = 3;

/// Awaits `fut`, failing the test if it takes longer than [`WAIT`].
pub async fn within<T>(fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut).await.expect("timed out")
}

/// The builtin model's tokenizer, as the frontend loads it.
pub fn tokenizer() -> Tokenizer {
    let files = ModelFiles::resolve(switchyard_model::DEFAULT_SOURCE).unwrap();
    Tokenizer::from_bytes(&files.tokenizer_json).unwrap()
}

pub fn encode(text: &str, special: bool) -> Vec<u32> {
    tokenizer().encode(text, special).unwrap().get_ids().to_vec()
}

/// What a scripted worker does with each request.
#[derive(Debug, Clone)]
pub enum Script {
    /// Emits these chunks of token ids, then finishes with `finish`.
    Tokens { chunks: Vec<Vec<u32>>, finish: FinishReason },
    /// Answers with one error chunk of this kind.
    Reject(ErrorKind),
    /// Emits these tokens, then fails with an engine error.
    FailAfter(Vec<u32>),
    /// Never answers.
    Hang,
    /// Emits these tokens over and over, 5 ms apart, until cancelled.
    Endless(Vec<u32>),
    /// Answers with one final chunk carrying this embedding (an engine that serves them).
    Embedding(Vec<f32>),
}

/// A worker whose behaviour is scripted, recording what it receives.
pub struct ScriptedWorker {
    pub script: Script,
    pub requests: Mutex<Vec<GenerateRequest>>,
    /// Response streams dropped (finished or cancelled).
    pub streams_dropped: Arc<AtomicUsize>,
    pub dropped: Arc<Notify>,
}

impl ScriptedWorker {
    pub fn new(script: Script) -> Arc<ScriptedWorker> {
        Arc::new(ScriptedWorker {
            script,
            requests: Mutex::new(Vec::new()),
            streams_dropped: Arc::new(AtomicUsize::new(0)),
            dropped: Arc::new(Notify::new()),
        })
    }

    pub fn received(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    pub fn last_request(&self) -> GenerateRequest {
        self.requests.lock().unwrap().last().cloned().expect("a request")
    }
}

/// Counts the stream's drop: that is how cancellation reaches a worker.
struct DropSignal {
    count: Arc<AtomicUsize>,
    notify: Arc<Notify>,
}

impl Drop for DropSignal {
    fn drop(&mut self) {
        self.count.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }
}

fn chunk(seq: u64, token_ids: Vec<u32>) -> GenerateChunk {
    GenerateChunk { seq, token_ids, ..GenerateChunk::default() }
}

#[async_trait]
impl GenerateHandler for ScriptedWorker {
    async fn generate(&self, request: GenerateRequest) -> ChunkStream {
        let prompt_tokens = request.token_ids.len() as u32;
        self.requests.lock().unwrap().push(request);
        let signal =
            DropSignal { count: self.streams_dropped.clone(), notify: self.dropped.clone() };
        let chunks: Vec<GenerateChunk> = match &self.script {
            Script::Tokens { chunks, finish } => {
                let mut out: Vec<GenerateChunk> = chunks
                    .iter()
                    .enumerate()
                    .map(|(i, ids)| chunk(i as u64, ids.clone()))
                    .collect();
                let completion_tokens = chunks.iter().map(Vec::len).sum::<usize>() as u32;
                out.push(GenerateChunk {
                    seq: chunks.len() as u64,
                    finish_reason: (*finish).into(),
                    usage: Some(Usage { prompt_tokens, completion_tokens, cached_tokens: CACHED }),
                    ..GenerateChunk::default()
                });
                out
            }
            Script::Reject(kind) => vec![error_chunk(0, *kind)],
            Script::Embedding(vector) => vec![GenerateChunk {
                finish_reason: FinishReason::Stop.into(),
                usage: Some(Usage { prompt_tokens, completion_tokens: 0, cached_tokens: 0 }),
                embedding: vector.clone(),
                ..GenerateChunk::default()
            }],
            Script::FailAfter(ids) => {
                vec![chunk(0, ids.clone()), error_chunk(1, ErrorKind::Engine)]
            }
            Script::Hang => {
                return Box::pin(futures::stream::pending().map(move |c| {
                    let _ = &signal;
                    c
                }));
            }
            Script::Endless(ids) => {
                let ids = ids.clone();
                return Box::pin(futures::stream::unfold((0u64, signal), move |(seq, signal)| {
                    let ids = ids.clone();
                    async move {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        Some((Ok(chunk(seq, ids)), (seq + 1, signal)))
                    }
                }));
            }
        };
        Box::pin(futures::stream::iter(chunks).map(move |c| {
            let _ = &signal;
            Ok(c)
        }))
    }
}

fn error_chunk(seq: u64, kind: ErrorKind) -> GenerateChunk {
    GenerateChunk {
        seq,
        finish_reason: FinishReason::Error.into(),
        error: Some(WorkerError {
            kind: kind.into(),
            message: format!("scripted {kind:?}"),
            ..Default::default()
        }),
        ..GenerateChunk::default()
    }
}

/// A running frontend with its workers.
pub struct Harness {
    pub base: String,
    pub http: reqwest::Client,
    pub discovery: Discovery,
    pub shutdown: CancellationToken,
    registrations: Mutex<Vec<Registration>>,
    frontend: tokio::task::JoinHandle<Result<(), switchyard_frontend::Error>>,
}

pub fn card(model: &str) -> ModelCard {
    ModelCard {
        model: model.to_owned(),
        tokenizer_source: switchyard_model::DEFAULT_SOURCE.to_owned(),
        context_length: CONTEXT,
        kv_block_size: BLOCK_SIZE,
        kv_total_blocks: 1024,
        engine: "scripted".to_owned(),
        ..ModelCard::default()
    }
}

/// The frontend's task.
pub type FrontendTask = tokio::task::JoinHandle<Result<(), switchyard_frontend::Error>>;

/// Serves a frontend with `config` over the TCP request plane on a free port; its base URL.
pub async fn start_frontend(
    config: FrontendConfig,
    discovery: &Discovery,
    shutdown: &CancellationToken,
) -> Result<(String, FrontendTask)> {
    let listener = within(TcpListener::bind("127.0.0.1:0")).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let client = Arc::new(TcpClient::new(TcpClientConfig::default()));
    let frontend = tokio::spawn(switchyard_frontend::serve(
        listener,
        config,
        discovery.clone(),
        client,
        shutdown.clone(),
    ));
    Ok((base, frontend))
}

impl Harness {
    /// A frontend over `workers` (all serving [`MODEL`]).
    pub async fn start(
        config: FrontendConfig,
        workers: Vec<Arc<ScriptedWorker>>,
    ) -> Result<Harness> {
        let store = Arc::new(MemoryStore::new());
        let discovery = Discovery::new(store, "test");
        let shutdown = CancellationToken::new();
        let harness_registrations = Mutex::new(Vec::new());
        for (i, worker) in workers.into_iter().enumerate() {
            let address = serve_worker(worker, shutdown.clone()).await?;
            let registration = register(
                &discovery,
                &format!("w{i}"),
                MODEL,
                &address,
                Role::Aggregated,
                &shutdown,
            )
            .await?;
            harness_registrations.lock().unwrap().push(registration);
        }
        let (base, frontend) = start_frontend(config, &discovery, &shutdown).await?;
        let http = reqwest::Client::builder().timeout(WAIT).build()?;
        Ok(Harness {
            base,
            http,
            discovery,
            shutdown,
            registrations: harness_registrations,
            frontend,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Registers another instance of `model` at `address`.
    pub async fn add_instance(
        &self,
        id: &str,
        model: &str,
        address: &str,
        role: Role,
    ) -> Result<()> {
        let registration =
            register(&self.discovery, id, model, address, role, &self.shutdown).await?;
        self.registrations.lock().unwrap().push(registration);
        Ok(())
    }

    /// Serves `worker` as an instance with `card`.
    pub async fn add_worker_with_card(
        &self,
        id: &str,
        worker: Arc<ScriptedWorker>,
        card: ModelCard,
    ) -> Result<()> {
        let address = serve_worker(worker, self.shutdown.clone()).await?;
        let record = InstanceRecord {
            instance_id: id.to_owned(),
            namespace: "test".to_owned(),
            role: Role::Aggregated.into(),
            address,
            card: Some(card),
            transport: "tcp".to_owned(),
            ..InstanceRecord::default()
        };
        let registration =
            within(self.discovery.register(record, Duration::from_secs(5), self.shutdown.clone()))
                .await?;
        self.registrations.lock().unwrap().push(registration);
        Ok(())
    }

    /// Removes every instance from discovery.
    pub async fn deregister_all(&self) -> Result<()> {
        let registrations: Vec<Registration> =
            std::mem::take(&mut *self.registrations.lock().unwrap());
        for registration in registrations {
            within(registration.deregister()).await?;
        }
        Ok(())
    }

    /// POSTs `body` as JSON to `path`.
    pub async fn post(&self, path: &str, body: serde_json::Value) -> Result<reqwest::Response> {
        Ok(within(self.http.post(self.url(path)).json(&body).send()).await?)
    }

    /// POSTs and returns the status and the JSON body.
    pub async fn post_json(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(u16, serde_json::Value)> {
        let response = self.post(path, body).await?;
        let status = response.status().as_u16();
        let json = within(response.json()).await.context("JSON body")?;
        Ok((status, json))
    }

    /// POSTs a streaming request and returns the status and its `data:` payloads.
    pub async fn post_stream(
        &self,
        path: &str,
        body: serde_json::Value,
    ) -> Result<(u16, Vec<String>)> {
        let response = self.post(path, body).await?;
        let status = response.status().as_u16();
        let text = within(response.text()).await?;
        Ok((status, sse_data(&text)?))
    }

    pub async fn get(&self, path: &str) -> Result<reqwest::Response> {
        Ok(within(self.http.get(self.url(path)).send()).await?)
    }

    /// Stops the frontend and waits for it.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        within(self.frontend).await??;
        Ok(())
    }
}

/// The `data:` payloads of an SSE body, checking the framing.
pub fn sse_data(text: &str) -> Result<Vec<String>> {
    text.split("\n\n")
        .filter(|event| !event.is_empty())
        .map(|event| {
            event
                .strip_prefix("data: ")
                .map(str::to_owned)
                .ok_or_else(|| anyhow!("not a data event: {event:?}"))
        })
        .collect()
}

/// Serves `worker` over the TCP request plane; its address.
pub async fn serve_worker(
    worker: Arc<ScriptedWorker>,
    shutdown: CancellationToken,
) -> Result<String> {
    let listener = within(TcpListener::bind("127.0.0.1:0")).await?;
    let address = listener.local_addr()?.to_string();
    tokio::spawn(switchyard_runtime::plane::tcp::serve(listener, worker, shutdown));
    Ok(address)
}

async fn register(
    discovery: &Discovery,
    id: &str,
    model: &str,
    address: &str,
    role: Role,
    shutdown: &CancellationToken,
) -> Result<Registration> {
    let record = InstanceRecord {
        instance_id: id.to_owned(),
        namespace: "test".to_owned(),
        role: role.into(),
        address: address.to_owned(),
        card: Some(card(model)),
        transport: "tcp".to_owned(),
        ..InstanceRecord::default()
    };
    Ok(within(discovery.register(record, Duration::from_secs(5), shutdown.clone())).await?)
}

/// Polls `check` every 20 ms until it holds, up to [`WAIT`].
pub async fn eventually<F, Fut>(mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    within(async {
        while !check().await {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    Ok(())
}

/// A chat request for [`MODEL`] with one user message.
pub fn chat_body(content: &str) -> serde_json::Value {
    serde_json::json!({ "model": MODEL, "messages": [{ "role": "user", "content": content }] })
}

/// Token count of the builtin template's rendering of one user message.
pub fn chat_prompt_tokens(content: &str) -> Vec<u32> {
    encode(&format!("<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n"), false)
}
