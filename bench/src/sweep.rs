//! A whole `switchyard bench` invocation: the workload built once, then every sweep point
//! (each `--request-rate` × each `--max-concurrency`) run against each target, each point's
//! summary shown and its line appended, and at the end a comparison table and the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::config::{RequestRate, RunConfig};
use crate::dataset::{Dataset, DatasetConfig};
use crate::metrics::{GpuCost, RunMetrics};
use crate::output::compare::{self, Labeled};
use crate::output::line::ResultLine;
use crate::output::report::{self, ReportRun};
use crate::output::result::{self, RunInfo};
use crate::prefix_bound::prefix_cache_bound;
use crate::resources::{GpuProbe, ResourceSummary, Sampler, SamplerConfig, Watched, prometheus};
use crate::runner::{self, Point};
use crate::server_probe::{self, ServerFacts};
use crate::{Error, TokenCounter, server_stats};

/// Everything the command line asked for.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// Request options; `base_url` and `model` are set per target.
    pub run: RunConfig,
    /// `--model`; when absent, the first model the server lists.
    pub model: Option<String>,
    /// `--served-model-name`: the `model` of requests, when it differs from `--model`.
    pub served_model_name: Option<String>,
    pub dataset: DatasetConfig,
    /// `--tokenizer`: what prompts are measured with and outputs re-tokenized with; when
    /// absent, what the server points to ([`server_probe`]).
    pub tokenizer: Option<String>,
    pub request_rates: Vec<RequestRate>,
    pub max_concurrencies: Vec<Option<usize>>,
    pub tag: Option<String>,
    pub output_file: Option<PathBuf>,
    pub output_details: bool,
    /// `--save-outputs`: keep every prompt and output in the line.
    pub save_outputs: bool,
    pub report: Option<PathBuf>,
    pub gpu_cost_per_hour: Option<f64>,
    pub gpus: Option<f64>,
    /// Tokens per KV block of the server, for the workload's prefix-cache hit rate bound.
    pub kv_block_size: usize,
    /// `--ready-check-timeout-sec`: how long the server may take to list its models.
    pub ready_timeout: Duration,
    /// Resource sampling interval; `None` turns sampling off.
    pub sample_interval: Option<Duration>,
    /// `--sample-url` endpoints and the metrics kept from them.
    pub prometheus: Vec<prometheus::Source>,
}

impl BenchPlan {
    /// One point (the rate and concurrency of `run`), the builtin tokenizer, nothing written.
    pub fn new(run: RunConfig, dataset: DatasetConfig) -> BenchPlan {
        BenchPlan {
            request_rates: vec![run.request_rate],
            max_concurrencies: vec![run.max_concurrency],
            run,
            model: None,
            served_model_name: None,
            dataset,
            tokenizer: Some(switchyard_model::DEFAULT_SOURCE.to_owned()),
            tag: None,
            output_file: None,
            output_details: false,
            save_outputs: false,
            report: None,
            gpu_cost_per_hour: None,
            gpus: None,
            kv_block_size: 16,
            ready_timeout: Duration::from_secs(60),
            sample_interval: Some(Duration::from_millis(500)),
            prometheus: Vec::new(),
        }
    }
}

/// Where one set of sweep points runs.
#[derive(Debug, Clone)]
pub struct Target {
    pub base_url: String,
    /// The topology's name when the topology runner started it.
    pub topology: Option<String>,
    /// Written as `server_info` (else what the server said of itself).
    pub server_info: Value,
    /// GPUs behind it when `--gpus` is not given (e.g. one per simulated worker).
    pub default_gpus: Option<f64>,
    /// Workers behind it, when known; otherwise those its frontend's metrics name.
    pub workers: Option<usize>,
    /// The server's processes the sampler follows (the topology runner's children).
    pub processes: Vec<Watched>,
}

impl Target {
    /// A server given by URL.
    pub fn url(base_url: &str) -> Target {
        Target {
            base_url: base_url.to_owned(),
            topology: None,
            server_info: Value::Null,
            default_gpus: None,
            workers: None,
            processes: Vec::new(),
        }
    }
}

/// The outcome of one sweep point.
#[derive(Debug, Clone)]
pub struct PointResult {
    pub info: RunInfo,
    pub metrics: RunMetrics,
    pub line: ResultLine,
    pub report: ReportRun,
}

/// Waits until the server at `base_url` is ready and asks what it serves.
pub async fn probe_server(plan: &BenchPlan, base_url: &str) -> Result<ServerFacts, Error> {
    let run = &plan.run;
    let base_url = base_url.trim_end_matches('/');
    let client =
        crate::client::HttpClient::with_headers(base_url, run.api_key.as_deref(), &run.headers)
            .await?;
    let facts = match server_probe::wait_ready(&client, plan.ready_timeout).await {
        Ok(()) => server_probe::probe(&client).await,
        Err(e) => Err(e),
    };
    client.close().await;
    facts
}

/// A prepared invocation: the tokenizer loaded and the workload built.
#[derive(Debug)]
pub struct Bench {
    plan: BenchPlan,
    tokenizer: TokenCounter,
    /// Why the embedded tokenizer stands in for the server's, when it does.
    tokenizer_warning: Option<String>,
    facts: Option<ServerFacts>,
    dataset: Arc<Dataset>,
    hit_rate_bound: Option<f64>,
    gpu: Arc<GpuProbe>,
}

impl Bench {
    /// Loads the tokenizer (`--tokenizer`, else the one `facts` points to) and builds the
    /// workload (CPU work: call it off the async threads).
    pub fn prepare(plan: BenchPlan, facts: Option<ServerFacts>) -> Result<Bench, Error> {
        if plan.request_rates.is_empty() || plan.max_concurrencies.is_empty() {
            return Err(Error::Config("no sweep point: give a request rate".into()));
        }
        let (tokenizer, tokenizer_warning) = match (&plan.tokenizer, &facts) {
            (Some(source), _) => (TokenCounter::load(source)?, None),
            (None, facts) => {
                let facts = facts.clone().unwrap_or_default();
                let model = plan.model.clone().or_else(|| facts.first_model());
                let hints = model.map(|m| facts.tokenizer_hints(&m)).unwrap_or_default();
                let choice = server_probe::choose_tokenizer(&hints)?;
                (choice.tokenizer, choice.warning)
            }
        };
        let dataset = Arc::new(Dataset::build(&plan.dataset, &tokenizer)?);
        let hit_rate_bound = prefix_cache_bound(&dataset, &tokenizer, plan.kv_block_size)?;
        let gpu = Arc::new(if plan.sample_interval.is_some() {
            GpuProbe::open()
        } else {
            GpuProbe::disabled("resource sampling is off")
        });
        Ok(Bench { plan, tokenizer, tokenizer_warning, facts, dataset, hit_rate_bound, gpu })
    }

    pub fn dataset(&self) -> &Dataset {
        &self.dataset
    }

    /// The warning to show when the server's tokenizer could not be loaded.
    pub fn tokenizer_warning(&self) -> Option<&str> {
        self.tokenizer_warning.as_deref()
    }

    /// Why GPUs are not sampled, if they are not (to say once).
    pub fn gpu_note(&self) -> Option<String> {
        self.gpu.note()
    }

    fn points(&self) -> Vec<Point> {
        let mut points = Vec::new();
        for &request_rate in &self.plan.request_rates {
            for &max_concurrency in &self.plan.max_concurrencies {
                points.push(Point { request_rate, max_concurrency });
            }
        }
        points
    }

    /// A run's label: the tag, the topology and the sweep values that vary.
    fn label(&self, target: &Target, point: Point) -> Option<String> {
        let mut parts: Vec<String> = self.plan.tag.iter().cloned().collect();
        parts.extend(target.topology.iter().cloned());
        if self.plan.request_rates.len() > 1 {
            parts.push(format!("rate={}", point.request_rate));
        }
        if self.plan.max_concurrencies.len() > 1 {
            let c = point.max_concurrency.map_or("none".to_owned(), |c| c.to_string());
            parts.push(format!("conc={c}"));
        }
        (!parts.is_empty()).then(|| parts.join(" "))
    }

    /// The `model` of requests: `--served-model-name`, `--model`, else the first the server
    /// lists.
    async fn model(&self, run: &RunConfig) -> Result<String, Error> {
        if let Some(model) = self.plan.served_model_name.as_ref().or(self.plan.model.as_ref()) {
            return Ok(model.clone());
        }
        if let Some(model) = self.facts.as_ref().and_then(ServerFacts::first_model) {
            return Ok(model);
        }
        let facts = probe_server(&self.plan, &run.base_url).await?;
        facts.first_model().ok_or_else(|| {
            Error::Server(format!("{}/v1/models lists no model; give --model", run.base_url))
        })
    }

    /// The settings every request of a run is sent with (`settings` of the line).
    fn settings(&self, run: &RunConfig) -> Value {
        let d = &self.plan.dataset;
        let turns = self.dataset.sessions.iter().flat_map(|s| &s.turns);
        let (lo, hi) =
            turns.fold((u32::MAX, 0), |(lo, hi), t| (lo.min(t.output_len), hi.max(t.output_len)));
        json!({
            "model": run.model,
            "backend": run.backend.name,
            "temperature": run.sampling.temperature,
            "top_p": run.sampling.top_p,
            "logprobs": run.sampling.logprobs,
            "ignore_eos": run.ignore_eos,
            "stream": run.stream,
            "max_tokens_min": lo,
            "max_tokens_max": hi,
            "extra_request_body": run.extra_request_body,
            "lora_names": run.lora_names,
            "tokenizer": self.tokenizer.source(),
            "dataset_name": self.dataset.kind.name(),
            "seed": run.seed,
            "apply_chat_template": d.apply_chat_template,
            "prompt_suffix": d.prompt_suffix,
        })
    }

    /// Runs every sweep point against `target`; `on_point` sees each result as it comes.
    pub async fn run_target(
        &self,
        target: &Target,
        shutdown: &CancellationToken,
        mut on_point: impl FnMut(&PointResult) + Send,
    ) -> Result<Vec<PointResult>, Error> {
        let mut run = self.plan.run.clone();
        run.base_url = target.base_url.trim_end_matches('/').to_owned();
        run.validate()?;
        run.model = self.model(&run).await?;
        let run = Arc::new(run);
        let gpus = self.plan.gpus.or(target.default_gpus).unwrap_or(1.0);
        let cost = self.plan.gpu_cost_per_hour.map(|per_hour| GpuCost { per_hour, gpus });
        let server_info = match (&target.server_info, &self.facts) {
            (Value::Null, Some(facts)) => facts.server_info(),
            (info, _) => info.clone(),
        };
        let settings = self.settings(&run);
        let mut results = Vec::new();
        for point in self.points() {
            let before = server_stats::instance_requests(&run).await;
            let sampler = self.start_sampler(target)?;
            let cpu_before = process_cpu();
            let output =
                runner::run_point(run.clone(), self.dataset.clone(), point, shutdown.clone()).await;
            let resources = match sampler {
                Some(sampler) => Some(sampler.finish().await),
                None => None,
            };
            let output = output?;
            let after = server_stats::instance_requests(&run).await;
            let label = self.label(target, point);
            let info = RunInfo {
                tag: label.clone(),
                backend: run.backend.name.clone(),
                dataset_name: self.dataset.kind.name().to_owned(),
                request_rate: point.request_rate,
                max_concurrency: point.max_concurrency,
                sharegpt_output_len: self.plan.dataset.sharegpt_output_len,
                random_input_len: self.plan.dataset.random_input_len,
                random_output_len: self.plan.dataset.random_output_len,
                random_range_ratio: self.plan.dataset.random_range_ratio,
                server_info: server_info.clone(),
                model: run.model.clone(),
                base_url: run.base_url.clone(),
                topology: target.topology.clone(),
                burstiness: run.burstiness,
                seed: run.seed,
                tokenizer: self.tokenizer.source().to_owned(),
                settings: settings.clone(),
            };
            let (tokenizer, details, save, goodput) = (
                self.tokenizer.clone(),
                self.plan.output_details,
                self.plan.save_outputs,
                run.goodput.clone(),
            );
            let (bound, workers, dataset) =
                (self.hit_rate_bound, target.workers, self.dataset.clone());
            let summary = resources.as_ref().map(ResourceSummary::of);
            let (metrics, line, output) = tokio::task::spawn_blocking({
                let info = info.clone();
                move || -> Result<_, Error> {
                    let mut metrics = RunMetrics::compute(&output, &tokenizer, goodput, cost)?;
                    metrics.prefix_cache_hit_rate_bound = bound;
                    metrics.resources = summary;
                    if let (Some(before), Some(after)) = (before, after) {
                        let spread = server_stats::delta(&before, &after);
                        metrics.instance_requests_max_over_mean =
                            server_stats::max_over_mean(&spread, workers.unwrap_or(after.len()));
                        metrics.instance_requests = Some(spread);
                    }
                    // Everything the process spent on this point, re-tokenizing included.
                    if let (Some(before), Some(after)) = (cpu_before, process_cpu()) {
                        metrics.process_cpu = Some(after.saturating_sub(before));
                    }
                    let mut line = result::result_line(&info, &metrics);
                    if details {
                        result::push_details(&mut line, &output.records, &metrics, &tokenizer)?;
                    }
                    if save {
                        result::push_outputs(&mut line, &output.records, &dataset);
                    }
                    Ok((metrics, line, output))
                }
            })
            .await
            .map_err(|e| Error::Client(format!("computing the results: {e}")))??;
            if let Some(path) = &self.plan.output_file {
                line.append_to(path)?;
            }
            let group = target
                .topology
                .clone()
                .or(self.plan.tag.clone())
                .unwrap_or_else(|| run.base_url.clone());
            let mut report = ReportRun::new(
                label.as_deref().unwrap_or("run"),
                &group,
                &output.records,
                &metrics,
            );
            report.resources = resources;
            let result = PointResult { info, metrics, line, report };
            on_point(&result);
            results.push(result);
        }
        Ok(results)
    }

    fn start_sampler(&self, target: &Target) -> Result<Option<Sampler>, Error> {
        let Some(interval) = self.plan.sample_interval else { return Ok(None) };
        let mut processes = vec![Watched::new("bench client", std::process::id())];
        processes.extend(target.processes.iter().cloned());
        Sampler::start(SamplerConfig {
            processes,
            interval,
            prometheus: self.plan.prometheus.clone(),
            gpu: self.gpu.clone(),
        })
        .map(Some)
    }

    /// The comparison table of several results (empty for one), and the report when asked.
    pub fn finish(&self, results: &[PointResult]) -> Result<String, Error> {
        let labeled: Vec<Labeled> = results
            .iter()
            .enumerate()
            .map(|(i, r)| Labeled {
                label: compare::label_of(&r.line, &format!("run {}", i + 1)),
                line: r.line.clone(),
            })
            .collect();
        if let Some(path) = &self.plan.report {
            let runs: Vec<ReportRun> = results.iter().map(|r| r.report.clone()).collect();
            let page = report::html(&runs, &labeled)?;
            std::fs::write(path, page).map_err(|e| Error::io(path, e))?;
        }
        Ok(if results.len() > 1 { compare::table(&labeled) } else { String::new() })
    }
}

/// CPU time (user + system) of the whole process, every thread.
pub fn process_cpu() -> Option<Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    cpu_of(getrusage(UsageWho::RUSAGE_SELF).ok()?)
}

/// CPU time (user + system) of the calling thread.
pub fn thread_cpu() -> Option<Duration> {
    use nix::sys::resource::{UsageWho, getrusage};
    cpu_of(getrusage(UsageWho::RUSAGE_THREAD).ok()?)
}

fn cpu_of(usage: nix::sys::resource::Usage) -> Option<Duration> {
    let time = |t: nix::sys::time::TimeVal| {
        let micros =
            u64::try_from(t.tv_sec()).ok()? * 1_000_000 + u64::try_from(t.tv_usec()).ok()?;
        Some(Duration::from_micros(micros))
    };
    Some(time(usage.user_time())? + time(usage.system_time())?)
}
