//! Prometheus metrics of one worker, on a recorder of its own rather than the process-global
//! one, so that a worker and a frontend sharing a process (`switchyard up`) keep their pages
//! apart. Values that the engine already counts are read at scrape time; counters of the
//! worker's own events belong here too, as handles made in [`WorkerMetrics::new`].

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusRecorder};
use switchyard_proto::{GpuInfo, LoadReport};

use crate::kv_transfer::{TRANSFER_BYTES_TOTAL, TRANSFER_FAILURES_TOTAL, TRANSFER_SECONDS};

/// Buckets of [`TRANSFER_SECONDS`]: from a same-host pull (~1 ms) to a slow link's
/// gigabytes, up to the default pull timeout.
const TRANSFER_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// 1 while the instance record is in the store (lease kept alive), else 0.
pub const REGISTERED: &str = "switchyard_worker_registered";
/// 1 from shutdown until exit: new requests are turned away, in-flight ones finish.
pub const DRAINING: &str = "switchyard_worker_draining";
/// Response streams the worker is serving now.
pub const INFLIGHT_REQUESTS: &str = "switchyard_worker_inflight_requests";
/// Requests the engine is running (prefill or decode).
pub const ENGINE_ACTIVE_REQUESTS: &str = "switchyard_worker_engine_active_requests";
/// Requests the engine has admitted but not started.
pub const ENGINE_WAITING_REQUESTS: &str = "switchyard_worker_engine_waiting_requests";
/// KV cache blocks in use.
pub const KV_ACTIVE_BLOCKS: &str = "switchyard_worker_kv_active_blocks";
/// KV cache size in blocks.
pub const KV_TOTAL_BLOCKS: &str = "switchyard_worker_kv_total_blocks";
/// Prompt blocks found in the prefix cache, since start.
pub const PREFIX_CACHE_HIT_BLOCKS: &str = "switchyard_worker_prefix_cache_hit_blocks_total";
/// Prompt blocks looked up in the prefix cache, since start.
pub const PREFIX_CACHE_LOOKUP_BLOCKS: &str = "switchyard_worker_prefix_cache_lookup_blocks_total";
/// Memory of each GPU the worker sees, labelled with its CUDA ordinal, name and UUID.
pub const GPU_MEMORY_TOTAL: &str = "switchyard_worker_gpu_memory_total_bytes";
/// Free memory of each GPU when the worker started (engines take most of it afterwards).
pub const GPU_MEMORY_FREE_AT_START: &str = "switchyard_worker_gpu_memory_free_at_start_bytes";

/// What a scrape reads from the worker besides the engine's load.
#[derive(Debug, Clone, Copy)]
pub struct ServiceState {
    pub registered: bool,
    pub draining: bool,
    pub in_flight: usize,
}

/// One worker's metrics, labelled with its `instance` and `model`.
pub struct WorkerMetrics {
    recorder: PrometheusRecorder,
    handles: Handles,
}

/// Handles registered once, so a scrape touches atomics, not the registry.
struct Handles {
    registered: Gauge,
    draining: Gauge,
    in_flight: Gauge,
    active: Gauge,
    waiting: Gauge,
    kv_active: Gauge,
    kv_total: Gauge,
    cache_hits: Counter,
    cache_lookups: Counter,
    transfer_seconds: Histogram,
    transfer_bytes: Counter,
    pull_failures: Counter,
    import_failures: Counter,
}

/// Where a KV hand-off failed on the decode worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferFailure {
    /// Pulling the blocks from the prefill worker.
    Pull,
    /// Importing them into the engine.
    Import,
}

impl TransferFailure {
    pub fn name(self) -> &'static str {
        match self {
            TransferFailure::Pull => "pull",
            TransferFailure::Import => "import",
        }
    }
}

impl WorkerMetrics {
    #[allow(clippy::cast_precision_loss)]
    pub fn new(instance_id: &str, model: &str, gpus: &[GpuInfo]) -> WorkerMetrics {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Full(TRANSFER_SECONDS.into()), TRANSFER_BUCKETS)
            // Fails only for an empty bucket list, which this one is not.
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .build_recorder();
        let labels = [("instance", instance_id.to_owned()), ("model", model.to_owned())];
        let handles = metrics::with_local_recorder(&recorder, || {
            describe();
            let failures = |cause: TransferFailure| {
                let mut labels = labels.to_vec();
                labels.push(("cause", cause.name().to_owned()));
                metrics::counter!(TRANSFER_FAILURES_TOTAL, &labels)
            };
            // The inventory is taken once, at start: set once, never touched again.
            for gpu in gpus {
                let mut labels = labels.to_vec();
                labels.push(("gpu", gpu.index.to_string()));
                labels.push(("name", gpu.name.clone()));
                labels.push(("uuid", gpu.uuid.clone()));
                metrics::gauge!(GPU_MEMORY_TOTAL, &labels).set(gpu.memory_total_bytes as f64);
                metrics::gauge!(GPU_MEMORY_FREE_AT_START, &labels)
                    .set(gpu.memory_free_bytes as f64);
            }
            Handles {
                registered: metrics::gauge!(REGISTERED, &labels),
                draining: metrics::gauge!(DRAINING, &labels),
                in_flight: metrics::gauge!(INFLIGHT_REQUESTS, &labels),
                active: metrics::gauge!(ENGINE_ACTIVE_REQUESTS, &labels),
                waiting: metrics::gauge!(ENGINE_WAITING_REQUESTS, &labels),
                kv_active: metrics::gauge!(KV_ACTIVE_BLOCKS, &labels),
                kv_total: metrics::gauge!(KV_TOTAL_BLOCKS, &labels),
                cache_hits: metrics::counter!(PREFIX_CACHE_HIT_BLOCKS, &labels),
                cache_lookups: metrics::counter!(PREFIX_CACHE_LOOKUP_BLOCKS, &labels),
                transfer_seconds: metrics::histogram!(TRANSFER_SECONDS, &labels),
                transfer_bytes: metrics::counter!(TRANSFER_BYTES_TOTAL, &labels),
                pull_failures: failures(TransferFailure::Pull),
                import_failures: failures(TransferFailure::Import),
            }
        });
        WorkerMetrics { recorder, handles }
    }

    /// A KV hand-off pulled and imported `bytes` in `took` (decode side).
    pub fn transfer_done(&self, bytes: u64, took: Duration) {
        self.handles.transfer_bytes.increment(bytes);
        self.handles.transfer_seconds.record(took.as_secs_f64());
    }

    /// A KV hand-off failed; the request is prefilled locally instead.
    pub fn transfer_failed(&self, cause: TransferFailure) {
        match cause {
            TransferFailure::Pull => self.handles.pull_failures.increment(1),
            TransferFailure::Import => self.handles.import_failures.increment(1),
        }
    }

    /// The Prometheus text page, with the gauges set from `state` and `load` first.
    #[allow(clippy::cast_precision_loss)]
    pub fn render(&self, state: ServiceState, load: Option<&LoadReport>) -> String {
        let h = &self.handles;
        h.registered.set(f64::from(u8::from(state.registered)));
        h.draining.set(f64::from(u8::from(state.draining)));
        h.in_flight.set(state.in_flight as f64);
        if let Some(load) = load {
            h.active.set(f64::from(load.active_requests));
            h.waiting.set(f64::from(load.waiting_requests));
            h.kv_active.set(load.active_kv_blocks as f64);
            h.kv_total.set(load.total_kv_blocks as f64);
            h.cache_hits.absolute(load.cache_hit_blocks);
            h.cache_lookups.absolute(load.cache_lookup_blocks);
        }
        self.recorder.handle().render()
    }
}

fn describe() {
    metrics::describe_gauge!(REGISTERED, "1 while the instance record is in the store");
    metrics::describe_gauge!(DRAINING, "1 from shutdown until exit");
    metrics::describe_gauge!(INFLIGHT_REQUESTS, "Response streams being served");
    metrics::describe_gauge!(ENGINE_ACTIVE_REQUESTS, "Requests the engine is running");
    metrics::describe_gauge!(ENGINE_WAITING_REQUESTS, "Requests admitted, not started");
    metrics::describe_gauge!(KV_ACTIVE_BLOCKS, Unit::Count, "KV cache blocks in use");
    metrics::describe_gauge!(KV_TOTAL_BLOCKS, Unit::Count, "KV cache size in blocks");
    metrics::describe_counter!(PREFIX_CACHE_HIT_BLOCKS, "Prompt blocks found in the prefix cache");
    metrics::describe_counter!(PREFIX_CACHE_LOOKUP_BLOCKS, "Prompt blocks looked up");
    metrics::describe_gauge!(GPU_MEMORY_TOTAL, Unit::Bytes, "Memory of each GPU the worker sees");
    metrics::describe_histogram!(
        TRANSFER_SECONDS,
        Unit::Seconds,
        "KV hand-offs pulled and imported"
    );
    metrics::describe_counter!(
        TRANSFER_BYTES_TOTAL,
        Unit::Bytes,
        "KV bytes pulled from prefill workers"
    );
    metrics::describe_counter!(TRANSFER_FAILURES_TOTAL, "KV hand-offs that failed, by cause");
    metrics::describe_gauge!(
        GPU_MEMORY_FREE_AT_START,
        Unit::Bytes,
        "Free memory of each GPU when the worker started"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_gpu_is_a_labelled_series_and_none_leaves_no_series() {
        let gpu = GpuInfo {
            index: 1,
            name: "NVIDIA H100 80GB HBM3".into(),
            uuid: "GPU-1234".into(),
            memory_total_bytes: 85_520_809_984,
            memory_free_bytes: 84_000_000_000,
        };
        let state = ServiceState { registered: true, draining: false, in_flight: 0 };
        let page = WorkerMetrics::new("w-1", "m", &[gpu]).render(state, None);
        let series = format!(
            "{GPU_MEMORY_TOTAL}{{instance=\"w-1\",model=\"m\",gpu=\"1\",name=\"NVIDIA H100 80GB \
             HBM3\",uuid=\"GPU-1234\"}} 85520809984"
        );
        assert!(page.contains(&series), "{page}");
        assert!(page.contains(&format!("{GPU_MEMORY_FREE_AT_START}{{")), "{page}");
        let page = WorkerMetrics::new("w-1", "m", &[]).render(state, None);
        assert!(!page.contains(&format!("{GPU_MEMORY_TOTAL}{{")), "{page}");
    }

    #[test]
    fn hand_offs_show_as_bytes_a_time_histogram_and_failures_by_cause() {
        let metrics = WorkerMetrics::new("w-1", "m", &[]);
        metrics.transfer_done(4096, Duration::from_millis(3));
        metrics.transfer_done(1024, Duration::from_millis(30));
        metrics.transfer_failed(TransferFailure::Pull);
        let state = ServiceState { registered: true, draining: false, in_flight: 0 };
        let page = metrics.render(state, None);
        let labels = "instance=\"w-1\",model=\"m\"";
        for line in [
            format!("{TRANSFER_BYTES_TOTAL}{{{labels}}} 5120"),
            format!("{TRANSFER_SECONDS}_bucket{{{labels},le=\"0.005\"}} 1"),
            format!("{TRANSFER_SECONDS}_count{{{labels}}} 2"),
            format!("{TRANSFER_FAILURES_TOTAL}{{{labels},cause=\"pull\"}} 1"),
            format!("{TRANSFER_FAILURES_TOTAL}{{{labels},cause=\"import\"}} 0"),
        ] {
            assert!(page.contains(&line), "{line} missing from\n{page}");
        }
    }
}
