//! `switchyard bench`: the load generator with sglang.bench_serving's flags, against a server
//! (`--base-url`) or against local topologies it starts itself (`--topology agg:1,agg:2`,
//! through the same code as `switchyard up`, each process its own); `switchyard bench compare
//! FILE…` puts result files side by side and `switchyard bench outputs FILE…` their outputs.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use serde_json::json;
use switchyard_bench::config::{Backend, Goodput, RequestRate, RunConfig, Sampling};
use switchyard_bench::dataset::{DatasetConfig, DatasetKind};
use switchyard_bench::output::summary::summary;
use switchyard_bench::resources::{Watched, prometheus};
use switchyard_bench::sweep::{self, Bench, BenchPlan, PointResult, Target};
use switchyard_bench::topology::{self, TopologySpec};
use switchyard_router::PolicyKind;
use tokio_util::sync::CancellationToken;

use super::bench_files::{self, CompareArgs, OutputsArgs};
use super::bench_flags::{DropInArgs, RecordArgs};
use super::frontend::KvArgs;
use super::up::{LocalTopology, UpArgs};
use super::worker::ServeArgs;
use crate::env_names as env;

#[derive(Debug, Clone, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub command: Option<BenchCommand>,

    /// Server to benchmark, e.g. http://127.0.0.1:8000 [default: http://HOST:PORT].
    #[arg(long, env = env::BENCH_BASE_URL)]
    pub base_url: Option<String>,
    /// Host of the server when --base-url is not given.
    #[arg(long, env = env::BENCH_HOST, default_value = "127.0.0.1")]
    pub host: String,
    /// Port of the server when --base-url is not given.
    #[arg(long, env = env::BENCH_PORT, default_value_t = 8000)]
    pub port: u16,
    /// `model` of every request [default: the first model the server lists].
    #[arg(long, env = env::BENCH_MODEL)]
    pub model: Option<String>,
    /// API flavour, as bench_serving names it: sglang-oai, vllm, lmdeploy, openai (text
    /// completions); sglang-oai-chat, vllm-chat, lmdeploy-chat, openai-chat (chat).
    #[arg(long, env = env::BENCH_BACKEND, default_value = "sglang-oai")]
    pub backend: String,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long, env = env::BENCH_API_KEY, hide_env_values = true)]
    pub api_key: Option<String>,

    /// random, sharegpt, generated-shared-prefix, jsonl or multi-turn.
    #[arg(long, env = env::BENCH_DATASET_NAME, default_value = "random")]
    pub dataset_name: String,
    /// The ShareGPT JSON or JSONL file.
    #[arg(long, env = env::BENCH_DATASET_PATH)]
    pub dataset_path: Option<PathBuf>,
    /// Requests to send (conversations, for multi-turn). The short spellings bench_serving's
    /// users type (`--num-prompt`, `--random-input`, `--random-output`) are accepted too.
    #[arg(long, alias = "num-prompt", env = env::BENCH_NUM_PROMPTS, default_value_t = 1000)]
    pub num_prompts: usize,
    /// Prompt tokens of the random and multi-turn datasets (upper bound of the draw).
    #[arg(long, alias = "random-input", env = env::BENCH_RANDOM_INPUT_LEN, default_value_t = 1024)]
    pub random_input_len: u32,
    /// Output tokens asked for by the random and multi-turn datasets (upper bound).
    #[arg(long, alias = "random-output", env = env::BENCH_RANDOM_OUTPUT_LEN, default_value_t = 1024)]
    pub random_output_len: u32,
    /// Lengths are drawn from [LEN * RATIO, LEN]; 1 makes them exact.
    #[arg(long, env = env::BENCH_RANDOM_RANGE_RATIO, default_value_t = 0.0)]
    pub random_range_ratio: f64,
    /// Fixed output length for ShareGPT [default: the reply's length].
    #[arg(long, env = env::BENCH_SHAREGPT_OUTPUT_LEN)]
    pub sharegpt_output_len: Option<u32>,
    /// Skip ShareGPT pairs longer than this (prompt + output tokens).
    #[arg(long, env = env::BENCH_SHAREGPT_CONTEXT_LEN)]
    pub sharegpt_context_len: Option<usize>,
    /// Generated shared prefix: groups, each with its own system prompt.
    #[arg(long, env = env::BENCH_GSP_NUM_GROUPS, default_value_t = 64)]
    pub gsp_num_groups: usize,
    /// Generated shared prefix: prompts sharing each system prompt.
    #[arg(long, env = env::BENCH_GSP_PROMPTS_PER_GROUP, default_value_t = 16)]
    pub gsp_prompts_per_group: usize,
    /// Generated shared prefix: tokens of each system prompt.
    #[arg(long, env = env::BENCH_GSP_SYSTEM_PROMPT_LEN, default_value_t = 2048)]
    pub gsp_system_prompt_len: u32,
    /// Generated shared prefix: tokens of each question.
    #[arg(long, env = env::BENCH_GSP_QUESTION_LEN, default_value_t = 128)]
    pub gsp_question_len: u32,
    /// Generated shared prefix: output tokens asked for.
    #[arg(long, env = env::BENCH_GSP_OUTPUT_LEN, default_value_t = 256)]
    pub gsp_output_len: u32,
    /// User turns per conversation of the multi-turn dataset.
    #[arg(long, env = env::BENCH_MULTI_TURN_TURNS, default_value_t = 4)]
    pub multi_turn_turns: usize,
    /// Tokenizer prompts are made and measured with: a tokenizer.json, a model directory, an
    /// HF repo id in the local cache, or builtin:tiny [default: the server's (the root of its
    /// /v1/models entry, SGLang's /model_info, else the model id), with a warning and
    /// builtin:tiny when none loads; with --topology, the workers' --model-path].
    #[arg(long, env = env::BENCH_TOKENIZER)]
    pub tokenizer: Option<String>,

    /// Requests per second (Poisson arrivals), or inf; a comma list runs one point per value.
    #[arg(long, env = env::BENCH_REQUEST_RATE, default_value = "inf")]
    pub request_rate: String,
    /// Gamma shape of the arrivals: 1 is Poisson, < 1 burstier, > 1 more regular.
    #[arg(long, env = env::BENCH_BURSTINESS, default_value_t = 1.0)]
    pub burstiness: f64,
    /// Most requests in flight; a comma list runs one point per value.
    #[arg(long, env = env::BENCH_MAX_CONCURRENCY)]
    pub max_concurrency: Option<String>,
    /// Requests sent (at once, at most 32 tokens each) before the measured run.
    #[arg(long, env = env::BENCH_WARMUP_REQUESTS, default_value_t = 1)]
    pub warmup_requests: usize,
    /// Seed of the dataset and of the arrival times.
    #[arg(long, env = env::BENCH_SEED, default_value_t = 1)]
    pub seed: u64,
    /// Limit of one request, in seconds.
    #[arg(long, env = env::BENCH_REQUEST_TIMEOUT_SECS, default_value_t = 600)]
    pub request_timeout_secs: u64,
    /// Ask for whole responses (TTFT is then the whole latency).
    #[arg(long, env = env::BENCH_DISABLE_STREAM)]
    pub disable_stream: bool,
    /// Do not send `ignore_eos: true` (outputs may end before max_tokens).
    #[arg(long, env = env::BENCH_DISABLE_IGNORE_EOS)]
    pub disable_ignore_eos: bool,
    /// JSON object merged into every request body.
    #[arg(long, env = env::BENCH_EXTRA_REQUEST_BODY)]
    pub extra_request_body: Option<String>,
    /// Service-level objectives for goodput: ttft:MS tpot:MS e2el:MS.
    #[arg(long, env = env::BENCH_GOODPUT, num_args = 1..)]
    pub goodput: Vec<String>,

    /// Append one JSONL line per run (bench_serving's keys, then Switchyard's).
    #[arg(long, env = env::BENCH_OUTPUT_FILE)]
    pub output_file: Option<PathBuf>,
    /// Add per-request lists to the JSONL line.
    #[arg(long, env = env::BENCH_OUTPUT_DETAILS)]
    pub output_details: bool,
    /// Label of the run in the JSONL line and in comparisons.
    #[arg(long, env = env::BENCH_TAG)]
    pub tag: Option<String>,
    /// Write an HTML page with latency CDFs (and throughput vs latency for several runs).
    #[arg(long, env = env::BENCH_REPORT)]
    pub report: Option<PathBuf>,
    /// No progress bar (it is shown only when stdout is a terminal anyway).
    #[arg(long, env = env::BENCH_DISABLE_TQDM)]
    pub disable_tqdm: bool,
    /// Price of one GPU-hour: adds cost per 1M output tokens and per request.
    #[arg(long, env = env::BENCH_GPU_COST_PER_HOUR)]
    pub gpu_cost_per_hour: Option<f64>,
    /// GPUs behind the server [default: 1; with --topology, one per worker].
    #[arg(long, env = env::BENCH_GPUS)]
    pub gpus: Option<f64>,
    /// Tokens per KV block of the server, for the workload's prefix-cache hit rate bound
    /// [default: 16; with --topology, the workers' --block-size].
    #[arg(long, env = env::BENCH_KV_BLOCK_SIZE)]
    pub kv_block_size: Option<usize>,

    /// Start these local topologies one after another and run the workload on each, e.g.
    /// agg:1,agg:2,agg:4 (N aggregated mocker workers behind one frontend) or 1p1d,2p2d (X
    /// prefill and Y decode workers).
    #[arg(long, env = env::BENCH_TOPOLOGY)]
    pub topology: Option<String>,
    /// Router modes of --topology's frontend, a comma list: each topology runs once per mode,
    /// labelled e.g. agg:4/kv [default: the frontend's default].
    #[arg(long, env = env::BENCH_ROUTER_MODE)]
    pub router_mode: Option<String>,
    #[command(flatten, next_help_heading = "More of bench_serving's flags")]
    pub drop_in: DropInArgs,
    #[command(flatten, next_help_heading = "Resources, outputs and logs")]
    pub record: RecordArgs,
    #[command(flatten, next_help_heading = "Frontend of --topology")]
    pub kv: KvArgs,
    #[command(flatten, next_help_heading = "Workers of --topology")]
    pub serve: ServeArgs,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Put result files side by side (switchyard bench's or sglang.bench_serving's JSONL): a
    /// table, CSV, or the one-page summary (--summary page.html, --markdown page.md).
    Compare(CompareArgs),
    /// Lay the saved outputs of runs side by side (HTML or Markdown), scored with a rubric.
    Outputs(OutputsArgs),
}

pub async fn run(args: BenchArgs, log: &str, shutdown: CancellationToken) -> anyhow::Result<()> {
    match &args.command {
        Some(BenchCommand::Compare(compare)) => return bench_files::compare(compare),
        Some(BenchCommand::Outputs(outputs)) => return bench_files::outputs(outputs),
        None => {}
    }
    args.drop_in.refuse_unsupported()?;
    let topologies = args.topology.as_deref().map(topology::parse_list).transpose()?;
    let router_modes: Vec<Option<PolicyKind>> = match &args.router_mode {
        None => vec![None],
        Some(modes) => list(modes, |m| {
            m.parse::<PolicyKind>()
                .map(Some)
                .map_err(|e| switchyard_bench::Error::Config(format!("--router-mode: {e}")))
        })?,
    };
    if args.router_mode.is_some() && topologies.is_none() {
        anyhow::bail!(
            "--router-mode chooses the routing of --topology's frontends; give --topology"
        );
    }
    let plan = plan(&args, topologies.is_some())?;
    let base_url =
        args.base_url.clone().unwrap_or_else(|| format!("http://{}:{}", args.host, args.port));
    // A server given by URL is asked first: its model, its tokenizer, its info.
    let facts = match topologies {
        None => Some(sweep::probe_server(&plan, &base_url).await?),
        Some(_) => None,
    };
    let bench = tokio::task::spawn_blocking(move || Bench::prepare(plan, facts))
        .await
        .context("preparing the workload")??;
    if let Some(warning) = bench.tokenizer_warning() {
        eprintln!("\n{warning}\n");
    }
    if args.record.sample_interval_ms > 0
        && let Some(note) = bench.gpu_note()
    {
        eprintln!("GPU use is not sampled: {note}");
    }
    let d = bench.dataset();
    let (input, output) = d
        .sessions
        .iter()
        .flat_map(|s| &s.turns)
        .fold((0, 0), |(i, o), t| (i + t.prompt_len, o + t.output_len as usize));
    println!(
        "{} requests ({}): {input} input tokens, {output} output tokens asked",
        d.num_requests(),
        d.kind.name()
    );
    let plot = args.drop_in.plot_throughput;
    let show = |r: &PointResult| show_point(r, plot);
    let mut results = Vec::new();
    match topologies {
        None => {
            results.extend(bench.run_target(&Target::url(&base_url), &shutdown, show).await?);
        }
        Some(topologies) => {
            let logs = log_dir(&args)?;
            for spec in &topologies {
                for &mode in &router_modes {
                    let frontend = FrontendSetup { router_mode: mode, kv: &args.kv };
                    let out = RunnerOutput { log_dir: &logs, log_filter: log, plot };
                    results.extend(
                        run_topology(&bench, spec, frontend, &args.serve, out, &shutdown).await?,
                    );
                }
            }
        }
    }
    let table = bench.finish(&results)?;
    if !table.is_empty() {
        println!("\n{:=^50}\n{table}", " Comparison ");
    }
    if let Some(path) = &args.output_file {
        println!("results appended to {}", path.display());
    }
    if let Some(path) = &args.report {
        println!("report written to {}", path.display());
    }
    Ok(())
}

/// A point's summary, and with --plot-throughput its timeline in the terminal.
fn show_point(r: &PointResult, plot: bool) {
    print!("{}", summary(&r.info, &r.metrics));
    if plot {
        print!("{}", switchyard_bench::output::chart::text_timeline(&r.report.timeline));
    }
}

/// Where the topology runner's output goes: its child processes' logs (and their level), and
/// whether each summary gets its terminal plot.
#[derive(Debug, Clone, Copy)]
struct RunnerOutput<'a> {
    log_dir: &'a std::path::Path,
    log_filter: &'a str,
    plot: bool,
}

/// `--log-dir`, else `switchyard-bench-logs/<unix time>` beside the output file (or here);
/// created.
fn log_dir(args: &BenchArgs) -> anyhow::Result<PathBuf> {
    let dir = match &args.record.log_dir {
        Some(dir) => dir.clone(),
        None => {
            let base = args
                .output_file
                .as_deref()
                .and_then(std::path::Path::parent)
                .map_or_else(|| PathBuf::from("."), std::path::Path::to_path_buf);
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            base.join("switchyard-bench-logs").join(now.to_string())
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// How the frontend of a topology routes.
#[derive(Debug, Clone, Copy)]
struct FrontendSetup<'a> {
    /// `None`: the frontend's default.
    router_mode: Option<PolicyKind>,
    kv: &'a KvArgs,
}

/// Starts `spec` locally (as `switchyard up` would), runs every sweep point on it, stops it.
async fn run_topology(
    bench: &Bench,
    spec: &TopologySpec,
    frontend: FrontendSetup<'_>,
    serve: &ServeArgs,
    out: RunnerOutput<'_>,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<PointResult>> {
    let mut flags = spec.up_flags();
    flags.extend(["--http-host", "127.0.0.1", "--http-port", "0"].map(String::from));
    let mut up = UpArgs::from_flags(&flags).map_err(|e| anyhow::anyhow!("{e}"))?;
    up.serve = serve.clone();
    up.http.kv = frontend.kv.clone();
    // Every process its own: the frontend's CPU and memory are then measured apart from the
    // client's, and its log and the workers' go to files, never into the summary.
    up.frontend_process = true;
    up.child_log_filter = Some(out.log_filter.to_owned());
    let name = match frontend.router_mode {
        Some(mode) => {
            up.http.router_mode = mode;
            format!("{}/{mode}", spec.name)
        }
        None => spec.name.clone(),
    };
    let dir = out.log_dir.join(name.replace([':', '/'], "-"));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    up.child_log_dir = Some(dir.clone());
    let listener = up.http.bind().await?;
    println!(
        "starting topology {name} ({} of the mocker, {} routing); logs in {}",
        up.describe(),
        up.http.router_mode,
        dir.display()
    );
    let topology = LocalTopology::start(&up, listener, shutdown.clone())
        .await
        .with_context(|| format!("starting topology {name}"))?;
    let target = Target {
        base_url: topology.url().to_owned(),
        topology: Some(name.clone()),
        server_info: json!({
            "topology": name,
            "router_mode": up.http.router_mode.name(),
            "workers": spec.workers,
            "engine": "mocker",
            "model": serve.served_name(),
            "speedup_ratio": serve.mocker.speedup_ratio,
        }),
        default_gpus: Some(spec.workers as f64),
        workers: Some(spec.workers),
        processes: topology
            .processes()
            .into_iter()
            .map(|(label, pid)| Watched::new(label, pid))
            .collect(),
    };
    let show = |r: &PointResult| show_point(r, out.plot);
    let results = bench.run_target(&target, shutdown, show).await;
    let stopped = tokio::time::timeout(Duration::from_secs(60), topology.stop()).await;
    let results = results?;
    stopped.context("the topology did not stop within 60 s")??;
    Ok(results)
}

fn list<T>(
    value: &str,
    parse: impl Fn(&str) -> Result<T, switchyard_bench::Error>,
) -> anyhow::Result<Vec<T>> {
    let items: Vec<T> = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(parse)
        .collect::<Result<_, _>>()?;
    anyhow::ensure!(!items.is_empty(), "empty list {value:?}");
    Ok(items)
}

fn backend_is_chat(run: &RunConfig) -> bool {
    run.backend.endpoint == switchyard_bench::config::Endpoint::Chat
}

/// The flags as a plan, checked.
fn plan(a: &BenchArgs, topology: bool) -> anyhow::Result<BenchPlan> {
    let backend: Backend = a.backend.parse()?;
    let mut run = RunConfig::new("http://unset", backend);
    run.burstiness = a.burstiness;
    run.warmup_requests = a.warmup_requests;
    run.seed = a.seed;
    run.stream = !a.disable_stream;
    run.ignore_eos = !a.disable_ignore_eos;
    run.api_key = a.api_key.clone();
    run.request_timeout = Duration::from_secs(a.request_timeout_secs);
    run.goodput = Goodput::parse(&a.goodput)?;
    run.progress = !a.disable_tqdm && std::io::stdout().is_terminal();
    let d = &a.drop_in;
    run.sampling = Sampling {
        temperature: d.temperature,
        top_p: d.top_p,
        logprobs: d.return_logprob.then_some(d.top_logprobs_num),
    };
    run.headers = d.headers()?;
    run.lora_names = d.lora_name.clone();
    run.flush_cache = d.flush_cache;
    if d.apply_chat_template && backend_is_chat(&run) {
        anyhow::bail!(
            "--apply-chat-template renders prompts for text-completion backends; with {} the \
             server applies the chat template itself",
            run.backend.name
        );
    }
    if let Some(extra) = &a.extra_request_body {
        let value: serde_json::Value =
            serde_json::from_str(extra).context("--extra-request-body is not JSON")?;
        run.extra_request_body = match value {
            serde_json::Value::Object(map) => map,
            _ => anyhow::bail!("--extra-request-body must be a JSON object"),
        };
    }
    let dataset = DatasetConfig {
        kind: a.dataset_name.parse::<DatasetKind>()?,
        path: a.dataset_path.clone(),
        num_prompts: a.num_prompts,
        random_input_len: a.random_input_len,
        random_output_len: a.random_output_len,
        random_range_ratio: a.random_range_ratio,
        sharegpt_output_len: a.sharegpt_output_len,
        sharegpt_context_len: a.sharegpt_context_len,
        gsp_num_groups: a.gsp_num_groups,
        gsp_prompts_per_group: a.gsp_prompts_per_group,
        gsp_system_prompt_len: a.gsp_system_prompt_len,
        gsp_question_len: a.gsp_question_len,
        gsp_output_len: a.gsp_output_len,
        multi_turn_turns: a.multi_turn_turns,
        seed: a.seed,
        prompt_suffix: d.prompt_suffix.clone(),
        apply_chat_template: d.apply_chat_template,
        dataset_offset: d.dataset_offset,
    };
    let mut plan = BenchPlan::new(run, dataset);
    plan.request_rates = list(&a.request_rate, str::parse::<RequestRate>)?;
    plan.max_concurrencies = match &a.max_concurrency {
        None => vec![None],
        Some(v) => list(v, |s| {
            s.parse::<usize>().ok().filter(|n| *n > 0).map(Some).ok_or_else(|| {
                switchyard_bench::Error::Config(format!(
                    "--max-concurrency {s:?}: expected a number >= 1"
                ))
            })
        })?,
    };
    // The topology runner knows what its workers serve.
    plan.model = a.model.clone().or_else(|| topology.then(|| a.serve.served_name()));
    plan.served_model_name = d.served_model_name.clone();
    // Against a server, `None` asks the server where its tokenizer is.
    plan.tokenizer = match (&a.tokenizer, topology) {
        (Some(tokenizer), _) => Some(tokenizer.clone()),
        (None, true) => Some(a.serve.model_path.clone()),
        (None, false) => None,
    };
    plan.ready_timeout = Duration::from_secs(d.ready_check_timeout_sec);
    let r = &a.record;
    plan.sample_interval =
        (r.sample_interval_ms > 0).then(|| Duration::from_millis(r.sample_interval_ms));
    plan.prometheus =
        r.sample_url.iter().map(|url| prometheus::Source::new(url, &r.sample_metric)).collect();
    plan.save_outputs = r.save_outputs;
    plan.tag = a.tag.clone();
    plan.output_file = a.output_file.clone();
    plan.output_details = a.output_details;
    plan.report = a.report.clone();
    plan.gpu_cost_per_hour = a.gpu_cost_per_hour;
    plan.gpus = a.gpus;
    plan.kv_block_size = match (a.kv_block_size, topology) {
        (Some(size), _) => size,
        (None, true) => a.serve.mocker.block_size as usize,
        (None, false) => 16,
    };
    Ok(plan)
}
