//! A whole `switchyard bench` invocation: the workload built once, then every sweep point
//! (each `--request-rate` × each `--max-concurrency`) run against each target, each point's
//! summary shown and its line appended, and at the end a comparison table and the report.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::{RequestRate, RunConfig};
use crate::dataset::{Dataset, DatasetConfig};
use crate::metrics::{GpuCost, RunMetrics};
use crate::output::compare::{self, Labeled};
use crate::output::line::ResultLine;
use crate::output::report::{self, ReportRun};
use crate::output::result::{self, RunInfo};
use crate::prefix_bound::prefix_cache_bound;
use crate::runner::{self, Point};
use crate::server_stats;
use crate::{Error, TokenCounter};

/// How long the server gets to list its models when `--model` is not given.
const MODELS_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the command line asked for.
#[derive(Debug, Clone)]
pub struct BenchPlan {
    /// Request options; `base_url` and `model` are set per target.
    pub run: RunConfig,
    /// `--model`; when absent, the first model the server lists.
    pub model: Option<String>,
    pub dataset: DatasetConfig,
    /// `--tokenizer`: what prompts are measured with and outputs re-tokenized with.
    pub tokenizer: String,
    pub request_rates: Vec<RequestRate>,
    pub max_concurrencies: Vec<Option<usize>>,
    pub tag: Option<String>,
    pub output_file: Option<PathBuf>,
    pub output_details: bool,
    pub report: Option<PathBuf>,
    pub gpu_cost_per_hour: Option<f64>,
    pub gpus: Option<f64>,
    /// Tokens per KV block of the server, for the workload's prefix-cache hit rate bound.
    pub kv_block_size: usize,
}

impl BenchPlan {
    /// One point (the rate and concurrency of `run`), the builtin tokenizer, nothing written.
    pub fn new(run: RunConfig, dataset: DatasetConfig) -> BenchPlan {
        BenchPlan {
            request_rates: vec![run.request_rate],
            max_concurrencies: vec![run.max_concurrency],
            run,
            model: None,
            dataset,
            tokenizer: switchyard_model::DEFAULT_SOURCE.to_owned(),
            tag: None,
            output_file: None,
            output_details: false,
            report: None,
            gpu_cost_per_hour: None,
            gpus: None,
            kv_block_size: 16,
        }
    }
}

/// Where one set of sweep points runs.
#[derive(Debug, Clone)]
pub struct Target {
    pub base_url: String,
    /// The topology's name when the topology runner started it.
    pub topology: Option<String>,
    /// Written as `server_info`.
    pub server_info: Value,
    /// GPUs behind it when `--gpus` is not given (e.g. one per simulated worker).
    pub default_gpus: Option<f64>,
    /// Workers behind it, when known; otherwise those its frontend's metrics name.
    pub workers: Option<usize>,
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

/// A prepared invocation: the tokenizer loaded and the workload built.
#[derive(Debug)]
pub struct Bench {
    plan: BenchPlan,
    tokenizer: TokenCounter,
    dataset: Arc<Dataset>,
    hit_rate_bound: Option<f64>,
}

impl Bench {
    /// Loads the tokenizer and builds the workload (CPU work: call it off the async threads).
    pub fn prepare(plan: BenchPlan) -> Result<Bench, Error> {
        if plan.request_rates.is_empty() || plan.max_concurrencies.is_empty() {
            return Err(Error::Config("no sweep point: give a request rate".into()));
        }
        let tokenizer = TokenCounter::load(&plan.tokenizer)?;
        let dataset = Arc::new(Dataset::build(&plan.dataset, &tokenizer)?);
        let hit_rate_bound = prefix_cache_bound(&dataset, &tokenizer, plan.kv_block_size)?;
        Ok(Bench { plan, tokenizer, dataset, hit_rate_bound })
    }

    pub fn dataset(&self) -> &Dataset {
        &self.dataset
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

    async fn model(&self, run: &RunConfig) -> Result<String, Error> {
        if let Some(model) = &self.plan.model {
            return Ok(model.clone());
        }
        let client = crate::client::HttpClient::new(&run.base_url, run.api_key.as_deref()).await?;
        let models = client.get_json("/v1/models", MODELS_TIMEOUT).await;
        client.close().await;
        models?["data"][0]["id"].as_str().map(str::to_owned).ok_or_else(|| {
            Error::Server(format!("{}/v1/models lists no model; give --model", run.base_url))
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
        let mut results = Vec::new();
        for point in self.points() {
            let before = server_stats::instance_requests(&run).await;
            let output =
                runner::run_point(run.clone(), self.dataset.clone(), point, shutdown.clone())
                    .await?;
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
                server_info: target.server_info.clone(),
                model: run.model.clone(),
                base_url: run.base_url.clone(),
                topology: target.topology.clone(),
                burstiness: run.burstiness,
                seed: run.seed,
            };
            let (tokenizer, details, goodput) =
                (self.tokenizer.clone(), self.plan.output_details, run.goodput);
            let (bound, workers) = (self.hit_rate_bound, target.workers);
            let (metrics, line, output) = tokio::task::spawn_blocking({
                let info = info.clone();
                move || -> Result<_, Error> {
                    let mut metrics = RunMetrics::compute(&output, &tokenizer, goodput, cost)?;
                    metrics.prefix_cache_hit_rate_bound = bound;
                    if let (Some(before), Some(after)) = (before, after) {
                        let spread = server_stats::delta(&before, &after);
                        metrics.instance_requests_max_over_mean =
                            server_stats::max_over_mean(&spread, workers.unwrap_or(after.len()));
                        metrics.instance_requests = Some(spread);
                    }
                    let mut line = result::result_line(&info, &metrics);
                    if details {
                        result::push_details(&mut line, &output.records, &metrics, &tokenizer)?;
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
            let report = ReportRun::new(
                label.as_deref().unwrap_or("run"),
                &group,
                &output.records,
                &metrics,
            );
            let result = PointResult { info, metrics, line, report };
            on_point(&result);
            results.push(result);
        }
        Ok(results)
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
