//! The `openai` engine: wraps an engine server that speaks the OpenAI API (vLLM, SGLang,
//! TensorRT-LLM's `trtllm-serve`, llama.cpp's `llama-server`, or any other). It waits until the
//! server is ready, forwards each request (token ids as the prompt where the engine takes
//! them), streams the result back as chunks, reads load from the engine's metrics and KV
//! events from its ZeroMQ publisher, and does prefill/decode the way each engine does it.

mod body;
mod codec;
mod decode;
mod flavour;
mod handoff;
pub mod kv_events;
mod load;
mod probe;
mod stream;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use switchyard_proto::{GenerateRequest, KvEvent, LoadReport, ModelCard, SamplingParams};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;

pub use flavour::Flavour;

use crate::engine::{Engine, EngineStream};
use crate::{Error, Result};
use body::Prompt;
use codec::TextCodec;
use decode::Decoder;
use handoff::Handoff;
use stream::StreamSetup;

/// How to reach and treat the engine server.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// Base URL of the engine server, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The make; detected from the server's `/v1/models` when `None`.
    pub flavour: Option<Flavour>,
    /// The engine's name for the model; its first listed model when `None`.
    pub served_model: Option<String>,
    /// Longest wait for the server to become ready.
    pub ready_timeout: Duration,
    /// Tokens per KV block of the engine (the block hashes routers compare); vLLM's own is
    /// read from its metrics when this is `None`.
    pub kv_block_size: Option<u32>,
    /// The engine's ZeroMQ KV event publisher (vLLM, SGLang), e.g. `tcp://127.0.0.1:5557`.
    pub kv_events_endpoint: Option<String>,
    /// llama.cpp prefill/decode: the directory both servers' `--slot-save-path` name.
    pub slot_dir: Option<std::path::PathBuf>,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        OpenAiConfig {
            url: "http://127.0.0.1:8000".into(),
            flavour: None,
            served_model: None,
            ready_timeout: Duration::from_secs(600),
            kv_block_size: None,
            kv_events_endpoint: None,
            slot_dir: None,
        }
    }
}

/// Block size assumed for engines that do not say (llama.cpp has no blocks; routers then
/// track it approximately anyway).
const DEFAULT_BLOCK_SIZE: u32 = 16;

/// A wrapped engine server.
pub struct OpenAiEngine {
    card: ModelCard,
    flavour: Flavour,
    base: String,
    model_id: String,
    http: reqwest::Client,
    /// For engines that take or return text only.
    codec: Option<Arc<TextCodec>>,
    handoff: Handoff,
    up: watch::Receiver<bool>,
    load: Option<watch::Receiver<Option<LoadReport>>>,
    events: Option<kv_events::KvEventSource>,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl OpenAiEngine {
    /// Waits until the server is ready and starts watching it. `card` names the model and
    /// its tokenizer; its context length (if 0), block size, block count and engine are
    /// filled in from the server. `tokenizer_json` is the model's tokenizer (for engines that
    /// speak text only). `died` fires when a launched engine process exits (the wait for it
    /// then ends early). The background tasks stop when `stop` fires.
    pub async fn start(
        config: OpenAiConfig,
        mut card: ModelCard,
        tokenizer_json: &[u8],
        died: CancellationToken,
        stop: CancellationToken,
    ) -> Result<OpenAiEngine> {
        let base = config.url.trim_end_matches('/').to_owned();
        let http = reqwest::Client::builder()
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| Error::Config(format!("building the HTTP client: {e}")))?;
        let served = tokio::select! {
            served = probe::wait_ready(
                &http, &base, config.served_model.as_deref(), config.ready_timeout, &stop,
            ) => served?,
            () = died.cancelled() => {
                return Err(Error::Engine("the engine exited before it was ready".into()));
            }
        };
        let flavour = config.flavour.or(served.flavour).unwrap_or(Flavour::Openai);
        let metrics = load::scrape(&http, &base).await.unwrap_or_default();
        let block_size = config
            .kv_block_size
            .or_else(|| vllm_cache_label(&metrics, "block_size"))
            .unwrap_or(DEFAULT_BLOCK_SIZE);
        let total_blocks = vllm_cache_label(&metrics, "num_gpu_blocks").map_or(0, u64::from);
        if card.context_length == 0 {
            card.context_length = served.context_length.unwrap_or(0);
        } else if let Some(engine) = served.context_length {
            card.context_length = card.context_length.min(engine);
        }
        card.kv_block_size = block_size;
        card.kv_total_blocks = total_blocks;
        card.engine = flavour.name().to_owned();
        // Those whose guided decoding takes a JSON schema in every build (TensorRT-LLM's needs
        // a grammar backend configured; a plain OpenAI server may have none).
        card.structured_output =
            matches!(flavour, Flavour::Llamacpp | Flavour::Vllm | Flavour::Sglang);
        let codec = if flavour.returns_token_ids() && flavour.takes_token_ids() {
            None
        } else {
            Some(Arc::new(TextCodec::new(tokenizer_json)?))
        };

        let tasks = TaskTracker::new();
        let (up_tx, up) = watch::channel(true);
        tasks.spawn(probe::watch_health(http.clone(), base.clone(), up_tx, stop.clone()));
        let load = load::reports_load(flavour).then(|| {
            let (tx, rx) = watch::channel(None);
            tasks.spawn(load::poll(
                http.clone(),
                base.clone(),
                flavour,
                block_size,
                total_blocks,
                tx,
                stop.clone(),
            ));
            rx
        });
        let events = config.kv_events_endpoint.as_ref().map(|endpoint| {
            kv_events::KvEventSource::start(endpoint.clone(), block_size, &tasks, stop.clone())
        });
        tasks.close();
        info!(
            engine = %flavour, url = %base, model = %served.id,
            context_length = card.context_length, kv_block_size = block_size,
            "engine server ready"
        );
        let handoff = Handoff::new(flavour, config.slot_dir.clone());
        Ok(OpenAiEngine {
            card,
            flavour,
            base,
            model_id: served.id,
            http,
            codec,
            handoff,
            up,
            load,
            events,
            stop,
            tasks,
        })
    }

    /// The make of the wrapped server.
    pub fn flavour(&self) -> Flavour {
        self.flavour
    }

    /// Waits until the background tasks have stopped (after the stop token fired).
    pub async fn stopped(&self) {
        self.tasks.wait().await;
    }

    /// The prompt as this engine takes it.
    fn prompt<'a>(&self, ids: &'a [u32]) -> Result<Prompt<'a>> {
        match &self.codec {
            Some(codec) if !self.flavour.takes_token_ids() => Ok(Prompt::Text(codec.decode(ids)?)),
            _ => Ok(Prompt::Tokens(ids)),
        }
    }

    /// Sends `body` to `path`; an answer other than 2xx becomes an error of the matching kind
    /// (an unreachable engine is OVERLOADED, so the router tries another worker).
    async fn post(&self, path: &str, body: &serde_json::Value) -> Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        let send = || {
            let request = self.http.post(&url).json(body);
            // llama.cpp's server closes the connection after every streamed response without
            // saying so; asking for that up front keeps such a connection out of the pool.
            match self.flavour {
                Flavour::Llamacpp => request.header(reqwest::header::CONNECTION, "close"),
                _ => request,
            }
            .send()
        };
        let response = match send().await {
            Ok(response) => Ok(response),
            // A kept-alive connection the engine closed as the request went out, with no
            // answer (an idle timeout racing the request): the engine never read the
            // request, so it goes out again, once. The pool drops the closed connection.
            Err(e) if e.is_request() && !e.is_connect() && !e.is_timeout() => send().await,
            Err(e) => Err(e),
        }
        .map_err(|e| {
            if e.is_connect() || e.is_timeout() {
                Error::Overloaded(format!("the engine at {} is not reachable: {e}", self.base))
            } else {
                Error::Engine(format!("POST {url}: {e}"))
            }
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let text = response.text().await.unwrap_or_default();
        let message = engine_message(&text);
        Err(match status.as_u16() {
            400 | 404 | 413 | 422 => Error::InvalidRequest(message),
            429 | 503 => Error::Overloaded(message),
            _ => Error::Engine(format!("{status}: {message}")),
        })
    }

    fn stream_setup(&self, request: &GenerateRequest, sampling: &SamplingParams) -> StreamSetup {
        StreamSetup {
            decoder: Decoder::new(self.flavour, sampling.logprobs),
            codec: if self.flavour.returns_token_ids() { None } else { self.codec.clone() },
            // llama.cpp has no stop token ids; the worker applies them.
            stop_token_ids: if self.flavour == Flavour::Llamacpp {
                sampling.stop_token_ids.clone()
            } else {
                Vec::new()
            },
            ignore_eos: sampling.ignore_eos,
            prompt_tokens: u32::try_from(request.token_ids.len()).unwrap_or(u32::MAX),
            generated_before: 0,
        }
    }
}

fn vllm_cache_label(metrics: &str, name: &str) -> Option<u32> {
    load::label(metrics, "vllm:cache_config_info", name).and_then(|v| v.parse().ok())
}

/// The message of an engine's error body (OpenAI's `{"error":{"message"}}`, FastAPI's
/// `{"detail"}`, or the text itself).
fn engine_message(text: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
    let message = value
        .pointer("/error/message")
        .or_else(|| value.get("message"))
        .or_else(|| value.get("detail"))
        .map(|m| m.as_str().map_or_else(|| m.to_string(), str::to_owned));
    message.unwrap_or_else(|| text.chars().take(500).collect())
}

#[async_trait]
impl Engine for OpenAiEngine {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    async fn generate(
        &self,
        request: GenerateRequest,
        cancel: CancellationToken,
    ) -> Result<EngineStream, Error> {
        if self.stop.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if !*self.up.borrow() {
            return Err(Error::Overloaded(format!("the engine at {} is down", self.base)));
        }
        let sampling = request.sampling.clone().unwrap_or_default();
        body::check(self.flavour, &sampling)?;
        if request.disaggregated.as_ref().is_some_and(|d| d.prefill_only) {
            return self.handoff.prefill(self, &request, &sampling, cancel).await;
        }
        let plan = self.handoff.decode_prompt(self, &request, &sampling).await?;
        let prompt = self.prompt(&plan.prompt_ids)?;
        let mut body =
            body::build(self.flavour, &self.model_id, &prompt, &sampling, plan.max_tokens, true)?;
        handoff::merge(&mut body, plan.extra);
        let mut setup = self.stream_setup(&request, &sampling);
        setup.generated_before = plan.generated_before;
        let response = tokio::select! {
            response = self.post(body::generate_path(self.flavour), &body) => response?,
            () = cancel.cancelled() => {
                return Err(Error::Engine("cancelled before the engine answered".into()));
            }
        };
        let stream = stream::from_response(response, setup, cancel.child_token());
        Ok(handoff::finish_stream(stream, plan.hold, plan.skip))
    }

    fn load(&self) -> Option<LoadReport> {
        self.load.as_ref().and_then(|l| *l.borrow())
    }

    fn kv_events(&self) -> Option<broadcast::Receiver<KvEvent>> {
        self.events.as_ref().map(kv_events::KvEventSource::subscribe)
    }

    fn request_kv_snapshot(&self) -> bool {
        self.events.as_ref().is_some_and(kv_events::KvEventSource::request_snapshot)
    }

    fn up(&self) -> Option<watch::Receiver<bool>> {
        Some(self.up.clone())
    }

    fn serves_prefill(&self) -> bool {
        self.handoff.supported()
    }
}
