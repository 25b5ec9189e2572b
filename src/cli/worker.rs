//! `switchyard worker`: one engine, registered in discovery, served over the request plane.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use switchyard_model::{DEFAULT_MODEL_NAME, DEFAULT_SOURCE, ModelFiles};
use switchyard_proto::{ModelCard, Role};
use switchyard_runtime::Discovery;
use switchyard_runtime::events::NatsEventPublisher;
use switchyard_runtime::plane::nats::{NatsListener, generate_subject};
use switchyard_worker::gpu::GpuInventory;
use switchyard_worker::mocker::{HandoffConfig, KvLink, MockerConfig, MockerEngine};
use switchyard_worker::openai::{Flavour, OpenAiConfig, OpenAiEngine};
use switchyard_worker::service::new_instance_id;
use switchyard_worker::{Engine, PlaneListener, WorkerConfig, WorkerStatus};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::launch;
use super::plane::{PlaneArgs, PlaneKind};
use super::store::StoreArgs;
use crate::env_names as env;
use switchyard_frontend::{ReasoningParserKind, ToolParserKind};

/// What a worker does in serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum WorkerRole {
    /// Prefill and decode (one worker serves whole requests).
    #[default]
    Aggregated,
    /// Computes prompts and hands their KV to decode workers (serves KvTransfer).
    Prefill,
    /// Serves whole requests, usually after a prefill worker computed the prompt.
    Decode,
}

impl WorkerRole {
    pub fn proto(self) -> Role {
        match self {
            WorkerRole::Aggregated => Role::Aggregated,
            WorkerRole::Prefill => Role::Prefill,
            WorkerRole::Decode => Role::Decode,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WorkerRole::Aggregated => "aggregated",
            WorkerRole::Prefill => "prefill",
            WorkerRole::Decode => "decode",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineKind {
    /// The simulated GPU engine (no GPU needed).
    Mocker,
    /// An OpenAI-compatible engine server at --engine-url; its make (vLLM, SGLang,
    /// TensorRT-LLM, llama.cpp) is detected from its /v1/models, else it is spoken to as a
    /// plain OpenAI server.
    Openai,
    /// vLLM's OpenAI server.
    Vllm,
    /// SGLang's server.
    Sglang,
    /// TensorRT-LLM's trtllm-serve.
    Trtllm,
    /// llama.cpp's llama-server.
    Llamacpp,
}

impl EngineKind {
    /// The wrapper's flavour; `None` for the mocker, and for `openai` (detected).
    fn flavour(self) -> Option<Flavour> {
        match self {
            EngineKind::Mocker | EngineKind::Openai => None,
            EngineKind::Vllm => Some(Flavour::Vllm),
            EngineKind::Sglang => Some(Flavour::Sglang),
            EngineKind::Trtllm => Some(Flavour::Trtllm),
            EngineKind::Llamacpp => Some(Flavour::Llamacpp),
        }
    }
}

/// Where the engine server is, for every engine but the mocker.
#[derive(Debug, Clone, Default, Args)]
pub struct EngineServerArgs {
    /// Base URL of the engine server (e.g. http://127.0.0.1:8080); with --launch, where the
    /// launched engine listens.
    #[arg(long, env = env::ENGINE_URL)]
    pub engine_url: Option<String>,

    /// The engine's name for the model [default: the first model it lists].
    #[arg(long, env = env::ENGINE_MODEL)]
    pub engine_model: Option<String>,

    /// Longest wait, in seconds, for the engine server to become ready.
    #[arg(long, env = env::ENGINE_READY_TIMEOUT_SECS, default_value_t = 600)]
    pub engine_ready_timeout_secs: u64,

    /// The engine's ZeroMQ KV event publisher (vLLM/SGLang `--kv-events-config` endpoint,
    /// e.g. tcp://127.0.0.1:5557); its events feed `kv` routing.
    #[arg(long, env = env::ENGINE_KV_EVENTS)]
    pub engine_kv_events: Option<String>,

    /// Tokens per KV block of the engine [default: vLLM's own, else 16].
    #[arg(long, env = env::ENGINE_BLOCK_SIZE)]
    pub engine_block_size: Option<u32>,

    /// llama.cpp prefill/decode: the directory both servers' --slot-save-path name (decode
    /// workers delete each slot file once restored).
    #[arg(long, env = env::ENGINE_SLOT_DIR)]
    pub engine_slot_dir: Option<std::path::PathBuf>,

    /// Start the engine server: the command after `--` (e.g. `-- llama-server -m m.gguf`),
    /// on a private port unless it names one; stopped on shutdown.
    #[arg(long, env = env::ENGINE_LAUNCH)]
    pub launch: bool,

    /// With --launch: start the engine again when it dies (the worker leaves discovery
    /// meanwhile); without it the worker stops.
    #[arg(long, env = env::ENGINE_RESTART)]
    pub engine_restart: bool,

    /// The engine command for --launch.
    #[arg(last = true, value_name = "ENGINE_COMMAND")]
    pub engine_command: Vec<String>,
}

/// What a worker serves and how it is reached.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Engine behind this worker.
    #[arg(long, env = env::ENGINE, value_enum, default_value_t = EngineKind::Mocker)]
    pub engine: EngineKind,

    /// Model: a directory, a Hugging Face repo id present in the local HF cache, or
    /// `builtin:tiny` (embedded; runs offline).
    #[arg(long, env = env::MODEL_PATH, default_value = DEFAULT_SOURCE)]
    pub model_path: String,

    /// Name clients use in the `model` field [default: switchyard-tiny for the builtin model,
    /// else the model path].
    #[arg(long, env = env::MODEL_NAME)]
    pub model_name: Option<String>,

    /// Seconds to wait for in-flight requests on shutdown before cancelling them.
    #[arg(long, env = env::DRAIN_TIMEOUT_SECS, default_value_t = 30)]
    pub drain_timeout_secs: u64,

    /// Seconds one KV pull from a prefill worker may take (connection included) before the
    /// request is prefilled here instead.
    #[arg(long, env = env::KV_PULL_TIMEOUT_SECS, default_value_t = 10)]
    pub kv_pull_timeout_secs: u64,
    /// How the model marks its reasoning, split into `reasoning_content` by frontends:
    /// qwen3, deepseek-r1, gpt-oss.
    #[arg(long, env = env::REASONING_PARSER)]
    pub reasoning_parser: Option<ReasoningParserKind>,

    /// How the model writes tool calls, returned as `tool_calls` by frontends: hermes,
    /// llama3_json, mistral, pythonic, gpt-oss.
    #[arg(long, env = env::TOOL_CALL_PARSER)]
    pub tool_call_parser: Option<ToolParserKind>,

    #[command(flatten)]
    pub mocker: MockerArgs,
}

/// The simulated engine's shape; defaults model one H100 serving an 8B-class model.
#[derive(Debug, Clone, Args)]
pub struct MockerArgs {
    /// Tokens per KV block.
    #[arg(long = "block-size", env = env::MOCKER_BLOCK_SIZE, default_value_t = 16)]
    pub block_size: u32,

    /// KV cache size in blocks.
    #[arg(long = "num-gpu-blocks", env = env::MOCKER_NUM_GPU_BLOCKS, default_value_t = 16384)]
    pub num_gpu_blocks: u64,

    /// Most sequences in one batch.
    #[arg(long = "max-num-seqs", env = env::MOCKER_MAX_NUM_SEQS, default_value_t = 256)]
    pub max_num_seqs: usize,

    /// Token budget of one scheduler step (chunked prefill splits longer prompts).
    #[arg(long = "max-num-batched-tokens", env = env::MOCKER_MAX_NUM_BATCHED_TOKENS, default_value_t = 8192)]
    pub max_num_batched_tokens: usize,

    /// Runs the simulation this many times faster than real time.
    #[arg(long = "speedup-ratio", env = env::MOCKER_SPEEDUP_RATIO, default_value_t = 1.0)]
    pub speedup_ratio: f64,

    /// Prefix caching (reuse of KV blocks of equal prompt prefixes).
    #[arg(long = "prefix-caching", env = env::MOCKER_PREFIX_CACHING, default_value_t = true, action = clap::ArgAction::Set)]
    pub prefix_caching: bool,

    /// Chance that a generated token is EOS (0: outputs run to max_tokens).
    #[arg(long = "eos-probability", env = env::MOCKER_EOS_PROBABILITY, default_value_t = 0.0)]
    pub eos_probability: f64,

    /// Longest prompt + output the simulated engine accepts, in tokens.
    #[arg(long = "context-length", env = env::MOCKER_CONTEXT_LENGTH, default_value_t = 32768)]
    pub context_length: u32,

    /// KV bytes of one token (layers × KV heads × head dim × 2 × bytes per element), for
    /// prefill/decode hand-offs [default: Llama-3.1-8B in bf16, the class of model the
    /// timing profile stands for].
    #[arg(long = "kv-bytes-per-token", env = env::MOCKER_KV_BYTES_PER_TOKEN, default_value_t = HandoffConfig::default().kv_bytes_per_token)]
    pub kv_bytes_per_token: u64,

    /// Hand-offs move the KV's size divided by this over the network (the modelled link
    /// time is of the full size).
    #[arg(long = "kv-transfer-scale", env = env::MOCKER_KV_TRANSFER_SCALE, default_value_t = HandoffConfig::default().scale)]
    pub kv_transfer_scale: u64,

    /// Link between prefill and decode GPUs whose time a hand-off takes: nvlink (450 GB/s),
    /// pcie5 (63 GB/s), ib400 (50 GB/s) or eth25 (3.1 GB/s).
    #[arg(long = "kv-link", env = env::MOCKER_KV_LINK, default_value = "nvlink")]
    pub kv_link: KvLink,

    /// Seconds a prefill worker holds a hand-off's KV blocks for its pull.
    #[arg(long = "kv-lease-secs", env = env::MOCKER_KV_LEASE_SECS, default_value_t = 30)]
    pub kv_lease_secs: u64,
    /// A JSON list of recorded output texts to replay instead of random tokens: a request
    /// gets entry `seed mod N` (entry 0 without a seed), tokenized, then EOS.
    #[arg(long = "replay-output", env = env::MOCKER_REPLAY_OUTPUT)]
    pub replay_output: Option<std::path::PathBuf>,
}

impl ServeArgs {
    /// The name clients use in the `model` field.
    pub fn served_name(&self) -> String {
        match &self.model_name {
            Some(name) => name.clone(),
            None if self.model_path == DEFAULT_SOURCE => DEFAULT_MODEL_NAME.to_owned(),
            None => self.model_path.clone(),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    /// Address the request-plane server binds.
    #[arg(long, env = env::WORKER_HOST, default_value = "127.0.0.1")]
    pub host: String,

    /// Port of the request-plane server (0: any free port; the record says which).
    #[arg(long, env = env::WORKER_PORT, default_value_t = 0)]
    pub port: u16,

    /// Host written into the instance record, when the bind address is not reachable as is
    /// (e.g. 0.0.0.0 in a container: give its service name).
    #[arg(long, env = env::ADVERTISE_HOST)]
    pub advertise_host: Option<String>,

    /// Port of the worker's status server on --host: `/live`, `/health` (200 while registered
    /// and serving) and `/metrics` (Prometheus); 0 turns it off.
    #[arg(long, env = env::METRICS_PORT, default_value_t = 0)]
    pub metrics_port: u16,

    /// Instance id [default: generated].
    #[arg(long, env = env::INSTANCE_ID)]
    pub instance_id: Option<String>,

    /// aggregated (prefill and decode), prefill (computes prompts, hands their KV to decode
    /// workers) or decode. A model with prefill and decode workers is served split.
    #[arg(long, env = env::WORKER_ROLE, value_enum, default_value_t = WorkerRole::Aggregated)]
    pub role: WorkerRole,

    /// Port of a prefill worker's KvTransfer service, on --host (0: any free port; the
    /// record says which). Other roles serve none.
    #[arg(long, env = env::KV_TRANSFER_PORT, default_value_t = 0)]
    pub kv_transfer_port: u16,

    /// Shut down when the process with this PID stops being our parent (set by
    /// `switchyard up`, so workers never outlive it, even when it is killed).
    #[arg(long, env = env::PARENT_PID, hide = true)]
    pub parent_pid: Option<i32>,

    #[command(flatten)]
    pub serve: ServeArgs,

    #[command(flatten)]
    pub engine_server: EngineServerArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub plane: PlaneArgs,
}

pub async fn run(args: WorkerArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    if let Some(parent) = args.parent_pid {
        super::shutdown::with_parent(parent, shutdown.clone());
    }
    let inventory = GpuInventory::probe();
    match &inventory.note {
        Some(note) => info!("no GPU inventory: {note}"),
        None => {
            for gpu in &inventory.gpus {
                info!(index = gpu.index, name = %gpu.name, uuid = %gpu.uuid,
                    memory_total_bytes = gpu.memory_total_bytes,
                    memory_free_bytes = gpu.memory_free_bytes, "GPU");
            }
        }
    }
    if let Some(visible) =
        env::compat(env::CUDA_VISIBLE_DEVICES).or_else(|| env::compat(env::NVIDIA_VISIBLE_DEVICES))
    {
        info!(visible = %visible, "GPUs selected by the environment");
    }
    let discovery = args.store.open().await?;
    let instance_id = args.instance_id.clone().unwrap_or_else(new_instance_id);
    let listener =
        bind(&args.plane, &args.host, args.port, discovery.namespace(), &instance_id).await?;
    let status = match args.metrics_port {
        0 => None,
        port => Some(StatusServer::start(&args.host, port).await?),
    };
    let kv_transfer = bind_kv_transfer(args.role, &args.host, args.kv_transfer_port).await?;
    let config = WorkerConfig {
        instance_id: Some(instance_id),
        advertise_host: args.advertise_host.clone(),
        role: args.role.proto(),
        lease_ttl: args.store.lease_ttl()?,
        status: status.as_ref().map(|s| s.status.clone()),
        gpus: inventory.gpus,
        plane_tls: args.plane.plane_tls()?,
        ..WorkerConfig::default()
    };
    let served = serve(
        listener,
        kv_transfer,
        &args.serve,
        Some(&args.engine_server),
        config,
        discovery,
        shutdown,
    )
    .await;
    if let Some(status) = status {
        status.stop().await;
    }
    served
}

/// The status port's server task, kept up until the worker has drained (its `/health`
/// says so meanwhile).
struct StatusServer {
    status: Arc<WorkerStatus>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl StatusServer {
    async fn start(host: &str, port: u16) -> anyhow::Result<StatusServer> {
        let listener = TcpListener::bind((host, port))
            .await
            .with_context(|| format!("binding the status port to {host}:{port}"))?;
        let (status, stop) = (WorkerStatus::new(), CancellationToken::new());
        let task =
            tokio::spawn(switchyard_worker::serve_status(listener, status.clone(), stop.clone()));
        Ok(StatusServer { status, stop, task })
    }

    async fn stop(self) {
        self.stop.cancel();
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "status server failed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "status server task failed"),
            Err(_) => tracing::warn!("status server did not stop within 5 s"),
        }
    }
}

/// A prefill worker's KvTransfer listener (`None` for other roles).
pub async fn bind_kv_transfer(
    role: WorkerRole,
    host: &str,
    port: u16,
) -> anyhow::Result<Option<TcpListener>> {
    if role != WorkerRole::Prefill {
        return Ok(None);
    }
    let listener = TcpListener::bind((host, port))
        .await
        .with_context(|| format!("binding the KvTransfer service to {host}:{port}"))?;
    Ok(Some(listener))
}

/// Binds where the worker takes requests: a TCP port, or its NATS subject.
pub async fn bind(
    plane: &PlaneArgs,
    host: &str,
    port: u16,
    namespace: &str,
    instance_id: &str,
) -> anyhow::Result<PlaneListener> {
    Ok(match plane.request_plane {
        PlaneKind::Tcp => PlaneListener::Tcp(
            TcpListener::bind((host, port))
                .await
                .with_context(|| format!("binding the worker to {host}:{port}"))?,
        ),
        PlaneKind::Nats => {
            let subject = generate_subject(namespace, instance_id)?;
            let client = plane.connect_nats().await?;
            let events = NatsEventPublisher::new(client.clone(), namespace, instance_id)?;
            PlaneListener::Nats {
                listener: Box::new(NatsListener::bind(client, subject).await?),
                events: Box::new(events),
            }
        }
    })
}

/// Starts the engine and serves it on an already-bound listener (shared with `switchyard up`,
/// which runs simulated engines only and gives no `server`).
pub async fn serve(
    listener: PlaneListener,
    kv_transfer: Option<TcpListener>,
    args: &ServeArgs,
    server: Option<&EngineServerArgs>,
    mut config: WorkerConfig,
    discovery: Discovery,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    config.drain_timeout = Duration::from_secs(args.drain_timeout_secs);
    config.kv_pull_timeout = Duration::from_secs(args.kv_pull_timeout_secs);
    config.reasoning_parser = args.reasoning_parser.map(|p| p.name().to_owned());
    config.tool_call_parser = args.tool_call_parser.map(|p| p.name().to_owned());
    let engine_stop = CancellationToken::new();
    let tasks = TaskTracker::new();
    let default_server = EngineServerArgs::default();
    let server = server.unwrap_or(&default_server);
    let started = start_engine(args, server, &tasks, shutdown.clone(), engine_stop.clone()).await;
    let result = match started {
        Ok(engine) => switchyard_worker::serve(
            listener,
            kv_transfer,
            engine,
            discovery,
            config,
            shutdown.clone(),
        )
        .await
        .context("worker failed"),
        Err(e) => Err(e),
    };
    engine_stop.cancel();
    tasks.close();
    tasks.wait().await;
    result
}

async fn start_engine(
    args: &ServeArgs,
    server: &EngineServerArgs,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
    engine_stop: CancellationToken,
) -> anyhow::Result<Arc<dyn Engine>> {
    let source = args.model_path.clone();
    let files = tokio::task::spawn_blocking(move || ModelFiles::resolve(&source))
        .await?
        .with_context(|| format!("loading model {}", args.model_path))?;
    switchyard_frontend::check_chat_template(&files)?;
    let name = args.served_name();
    // Frontends in other processes resolve the tokenizer from this; a relative directory
    // would mean something else in their working directory.
    let tokenizer_source = match &files.dir {
        Some(dir) if std::path::Path::new(&args.model_path).is_dir() => {
            std::path::absolute(dir).unwrap_or_else(|_| dir.clone()).display().to_string()
        }
        _ => args.model_path.clone(),
    };
    if args.engine != EngineKind::Mocker {
        let card = ModelCard {
            model: name,
            tokenizer_source,
            context_length: files.context_length().unwrap_or(0),
            ..ModelCard::default()
        };
        return start_engine_server(
            args.engine,
            server,
            card,
            &files,
            tasks,
            shutdown,
            engine_stop,
        )
        .await;
    }
    let m = &args.mocker;
    let config = MockerConfig {
        block_size: m.block_size,
        num_gpu_blocks: m.num_gpu_blocks,
        max_num_seqs: m.max_num_seqs,
        max_num_batched_tokens: m.max_num_batched_tokens,
        enable_prefix_caching: m.prefix_caching,
        speedup_ratio: m.speedup_ratio,
        eos_probability: m.eos_probability,
        context_length: m.context_length,
        vocab_size: files.config.vocab_size.unwrap_or(32000),
        eos_token_ids: files.config.eos_token_ids.clone(),
        handoff: HandoffConfig {
            kv_bytes_per_token: m.kv_bytes_per_token,
            scale: m.kv_transfer_scale,
            link: m.kv_link,
            lease: Duration::from_secs(m.kv_lease_secs),
        },
        replay: replay_outputs(m.replay_output.as_deref(), &files)?,
        ..MockerConfig::default()
    };
    let card = ModelCard {
        model: name,
        tokenizer_source,
        context_length: m.context_length,
        kv_block_size: m.block_size,
        kv_total_blocks: m.num_gpu_blocks,
        engine: "mocker".to_owned(),
        ..ModelCard::default()
    };
    let engine =
        MockerEngine::start(config, card, engine_stop).context("starting the mocker engine")?;
    Ok(Arc::new(engine))
}

/// Wraps an engine server: launched here (`--launch`) or already running at --engine-url.
async fn start_engine_server(
    kind: EngineKind,
    server: &EngineServerArgs,
    card: ModelCard,
    files: &ModelFiles,
    tasks: &TaskTracker,
    shutdown: CancellationToken,
    engine_stop: CancellationToken,
) -> anyhow::Result<Arc<dyn Engine>> {
    let (url, died) = if server.launch {
        let launched = launch::launch(
            &server.engine_command,
            server.engine_restart,
            tasks,
            engine_stop.clone(),
        )?;
        // An engine that is gone for good takes the worker with it.
        let (gone, stop) = (launched.gone.clone(), shutdown.clone());
        tasks.spawn(async move {
            tokio::select! {
                () = gone.cancelled() => {
                    warn!("the engine exited and is not restarted; the worker stops");
                    stop.cancel();
                }
                () = stop.cancelled() => {}
            }
        });
        (launched.url, launched.died)
    } else {
        let url = server.engine_url.clone().ok_or_else(|| {
            anyhow::anyhow!(
                "--engine {kind:?} needs --engine-url (or --launch -- <engine command>)"
            )
        })?;
        if !server.engine_command.is_empty() {
            anyhow::bail!("an engine command after `--` needs --launch");
        }
        (url, CancellationToken::new())
    };
    let config = OpenAiConfig {
        url,
        flavour: kind.flavour(),
        served_model: server.engine_model.clone(),
        ready_timeout: Duration::from_secs(server.engine_ready_timeout_secs),
        kv_block_size: server.engine_block_size,
        kv_events_endpoint: server.engine_kv_events.clone(),
        slot_dir: server.engine_slot_dir.clone(),
    };
    let ready = OpenAiEngine::start(config, card, &files.tokenizer_json, died, engine_stop);
    let engine = tokio::select! {
        engine = ready => engine.context("waiting for the engine server")?,
        () = shutdown.cancelled() => anyhow::bail!("shut down while waiting for the engine"),
    };
    Ok(Arc::new(engine))
}

/// The token ids of each recorded output in `path` (a JSON list of strings).
fn replay_outputs(
    path: Option<&std::path::Path>,
    files: &ModelFiles,
) -> anyhow::Result<Vec<Arc<[u32]>>> {
    let Some(path) = path else { return Ok(Vec::new()) };
    let texts: Vec<String> = serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: expected a JSON list of strings", path.display()))?;
    let tokenizer = tokenizers::Tokenizer::from_bytes(&files.tokenizer_json)
        .map_err(|e| anyhow::anyhow!("loading the tokenizer: {e}"))?;
    texts
        .iter()
        .map(|text| {
            let encoding = tokenizer
                .encode(text.as_str(), false)
                .map_err(|e| anyhow::anyhow!("tokenizing a replayed output: {e}"))?;
            Ok(Arc::from(encoding.get_ids()))
        })
        .collect()
}
