//! What the machine spent during a run: CPU% and RSS of the processes the bench knows (its own,
//! and with `--topology` the frontend and every worker it started), the host's CPU and memory,
//! GPU utilization, memory and power through NVML where a GPU is present, and chosen series of
//! Prometheus endpoints (`--sample-url`, e.g. a DCGM exporter). Sampled on a thread of its own
//! at a fixed interval; summarized per run (mean and peak) and kept as time series for the
//! report.

mod gpu;
mod process;
pub mod prometheus;
pub mod summary;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

pub use gpu::GpuProbe;
pub use process::Watched;
pub use summary::ResourceSummary;

use crate::Error;

/// One time series: seconds since the run's start, and the value then.
pub type Points = Vec<(f64, f64)>;

/// What to sample, besides the host (always) and the GPUs (when NVML finds any).
#[derive(Debug, Clone)]
pub struct SamplerConfig {
    /// Processes to follow, by PID, each with the label it is shown under.
    pub processes: Vec<Watched>,
    pub interval: Duration,
    /// Prometheus endpoints and the metric names to keep from them.
    pub prometheus: Vec<prometheus::Source>,
    /// NVML, opened once per invocation.
    pub gpu: Arc<GpuProbe>,
}

/// The series of one followed process.
#[derive(Debug, Clone, Default)]
pub struct ProcessSeries {
    pub label: String,
    pub pid: u32,
    /// CPU time over wall time, in percent of one core (two busy cores read 200).
    pub cpu_pct: Points,
    pub rss_mb: Points,
    /// Why sampling stopped early (the process exited), if it did.
    pub gone: Option<String>,
}

/// The series of one GPU.
#[derive(Debug, Clone, Default)]
pub struct GpuSeries {
    pub index: u32,
    pub name: String,
    pub util_pct: Points,
    pub mem_used_mb: Points,
    pub power_w: Points,
}

/// Everything sampled during one run.
#[derive(Debug, Clone, Default)]
pub struct ResourceRun {
    pub interval: Duration,
    pub samples: usize,
    pub processes: Vec<ProcessSeries>,
    pub host_cpu_pct: Points,
    pub host_mem_used_mb: Points,
    pub host_cpus: usize,
    pub host_mem_total_mb: f64,
    pub gpus: Vec<GpuSeries>,
    /// Why there are no GPU series, when there are none.
    pub gpu_note: Option<String>,
    /// Prometheus series by name (`metric{labels} @ host:port`).
    pub prometheus: Vec<(String, Points)>,
    /// Scrapes that failed, with the first reason each.
    pub prometheus_errors: Vec<String>,
}

/// A running sampler; [`Sampler::finish`] stops it and returns what it sampled.
pub struct Sampler {
    stop: CancellationToken,
    thread: std::thread::JoinHandle<ResourceRun>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler").finish_non_exhaustive()
    }
}

impl Sampler {
    /// Starts sampling now, on a thread of its own (its reads never wait on the client's or a
    /// server's scheduler).
    pub fn start(config: SamplerConfig) -> Result<Sampler, Error> {
        if config.interval.is_zero() {
            return Err(Error::Config("--sample-interval-ms must be at least 1".into()));
        }
        let stop = CancellationToken::new();
        let token = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bench-sampler".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(runtime) => runtime.block_on(sample(config, token)),
                    Err(e) => ResourceRun {
                        gpu_note: Some(format!("the sampler could not start: {e}")),
                        ..ResourceRun::default()
                    },
                }
            })
            .map_err(|e| Error::Client(format!("starting the resource sampler: {e}")))?;
        Ok(Sampler { stop, thread })
    }

    /// Takes a last sample, stops, and returns the series.
    pub async fn finish(self) -> ResourceRun {
        self.stop.cancel();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().unwrap_or_default())
            .await
            .unwrap_or_default()
    }
}

async fn sample(config: SamplerConfig, stop: CancellationToken) -> ResourceRun {
    let t0 = Instant::now();
    let mut run = ResourceRun { interval: config.interval, ..ResourceRun::default() };
    let mut procs = process::ProcessSampler::new(&config.processes);
    let mut host = process::HostSampler::new();
    run.host_cpus = host.cpus();
    run.host_mem_total_mb = host.mem_total_mb();
    let mut gpus = config.gpu.sampler();
    run.gpu_note = config.gpu.note();
    let mut scraper = prometheus::Scraper::new(&config.prometheus).await;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let last = tokio::select! {
            _ = ticker.tick() => false,
            () = stop.cancelled() => true,
        };
        let t = t0.elapsed().as_secs_f64();
        procs.sample(t);
        host.sample(t, &mut run.host_cpu_pct, &mut run.host_mem_used_mb);
        if let Some(gpus) = &mut gpus {
            gpus.sample(t);
        }
        scraper.scrape(t).await;
        run.samples += 1;
        if last {
            break;
        }
    }
    run.processes = procs.into_series();
    run.gpus = gpus.map(gpu::GpuSampler::into_series).unwrap_or_default();
    (run.prometheus, run.prometheus_errors) = scraper.into_series();
    run
}

/// Mean and peak of a series' values (`None` when empty).
pub fn mean_peak(points: &Points) -> Option<(f64, f64)> {
    if points.is_empty() {
        return None;
    }
    let sum: f64 = points.iter().map(|p| p.1).sum();
    let peak = points.iter().map(|p| p.1).fold(f64::MIN, f64::max);
    Some((sum / points.len() as f64, peak))
}
