//! Prometheus metrics of the frontend, on the `metrics` facade.
//!
//! The `metrics` crate has one global recorder per process, so the Prometheus recorder is
//! installed once (a `OnceLock`) and shared by every frontend the process runs, tests included;
//! label values keep their series apart. Per-model handles are registered once per model, so
//! the request path touches atomics, not the registry.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, SharedString};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Requests answered, by `model`, `endpoint` and `status` (HTTP status; 499 when the client
/// went away first).
pub const REQUESTS_TOTAL: &str = "switchyard_frontend_requests_total";
/// Seconds from the request's arrival to its first token, by `model`.
pub const TIME_TO_FIRST_TOKEN: &str = "switchyard_frontend_time_to_first_token_seconds";
/// Seconds between consecutive tokens of a response, by `model`.
pub const INTER_TOKEN_LATENCY: &str = "switchyard_frontend_inter_token_latency_seconds";
/// Seconds from the request's arrival to its last byte, by `model`.
pub const REQUEST_DURATION: &str = "switchyard_frontend_request_duration_seconds";
/// Requests being served now, by `model`.
pub const INFLIGHT_REQUESTS: &str = "switchyard_frontend_inflight_requests";
/// Requests each instance accepted, by `model` and `instance` (its id).
pub const INSTANCE_REQUESTS_TOTAL: &str = "switchyard_frontend_instance_requests_total";
/// Prompt tokens sent to workers, by `model`.
pub const INPUT_TOKENS_TOTAL: &str = "switchyard_frontend_input_tokens_total";
/// Tokens received from workers, by `model`.
pub const OUTPUT_TOKENS_TOTAL: &str = "switchyard_frontend_output_tokens_total";

/// Leading prompt blocks the chosen instance already held, per routing decision.
pub const ROUTER_OVERLAP_BLOCKS: &str = "switchyard_frontend_router_overlap_blocks";
/// Seconds one routing decision took (index lookup, load, policy).
pub const ROUTER_DECISION_TIME: &str = "switchyard_frontend_router_decision_seconds";
/// KV blocks this frontend predicts its in-flight requests occupy, by `instance`.
pub const ROUTER_PREDICTED_BLOCKS: &str = "switchyard_frontend_router_predicted_blocks";
/// Instances the KV index tracks, by `model`.
pub const ROUTER_INDEXED_INSTANCES: &str = "switchyard_frontend_router_indexed_instances";
/// KV events after which an instance's index entry needed a resync (events were lost).
pub const ROUTER_RESYNC_NEEDED: &str = "switchyard_frontend_router_resync_needed_total";
/// Routing decisions by where the prompt is computed: `place` `remote` (a prefill instance)
/// or `local`, and `reason` (`split`, `no_prefill_instance`, `short_prompt`,
/// `prefill_queues_full`, `fallback`).
pub const PREFILLS_TOTAL: &str = "switchyard_frontend_prefills_total";
/// Prefill instances whose work was not used, by `cause` (`unreachable`, `timeout`, `error`,
/// `stream_error`, `no_token`, `gone`, `no_handle`): the decode instance prefilled instead.
pub const PREFILL_FALLBACKS_TOTAL: &str = "switchyard_frontend_prefill_fallbacks_total";
/// Bytes of KV a prefill instance handed off, per request (the engine's full size).
pub const KV_HANDOFF_BYTES: &str = "switchyard_frontend_kv_handoff_bytes";
/// Seconds from a prefill instance's handle to the decode instance's first chunk (the KV
/// pull, the import and one decode step).
pub const KV_HANDOFF_SECONDS: &str = "switchyard_frontend_kv_handoff_seconds";
/// Requests an instance failed (its circuit breaker opened), by `instance` and `cause`:
/// `unreachable` (a request could not be sent), `broken` (a stream ended without its end),
/// `stall` (a stream went silent), `shutting_down`.
pub const INSTANCE_FAILURES_TOTAL: &str = "switchyard_frontend_instance_failures_total";
/// Requests let through to a failed instance once its back-off passed (at most one per
/// back-off), by `instance`: after its first failure, no other request reaches it.
pub const INSTANCE_PROBES_TOTAL: &str = "switchyard_frontend_instance_probes_total";
/// Requests answered 429 by admission control, by `reason` (`queue_full`, `queue_timeout`).
pub const ADMISSION_REJECTED_TOTAL: &str = "switchyard_frontend_admission_rejected_total";
/// Requests waiting for a place (admission control's queue).
pub const QUEUED_REQUESTS: &str = "switchyard_frontend_queued_requests";
/// Connections closed unanswered because the frontend had its most open already.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "switchyard_frontend_connections_refused_total";
/// Responses carried on by another instance after theirs failed mid-way, by `cause`.
pub const MIGRATIONS_TOTAL: &str = "switchyard_frontend_migrations_total";
pub const ROUTER_SNAPSHOT_REQUESTS: &str = "switchyard_frontend_router_snapshot_requests_total";
pub const ROUTER_SNAPSHOTS_APPLIED: &str = "switchyard_frontend_router_snapshots_applied_total";

/// Label value for requests whose model is not (yet) known: client-given names never become
/// label values, so a scan of bogus names cannot grow the series without bound.
const UNKNOWN_MODEL: &str = "unknown";

const TTFT_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const ITL_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.035, 0.05, 0.1, 0.25, 0.5, 1.0];
const OVERLAP_BUCKETS: &[f64] =
    &[0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0];
const DECISION_BUCKETS: &[f64] =
    &[1e-6, 2.5e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3];
const DURATION_BUCKETS: &[f64] =
    &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

const BYTES_BUCKETS: &[f64] = &[1e5, 1e6, 1e7, 3e7, 1e8, 3e8, 1e9, 3e9, 1e10];
const HANDOFF_BUCKETS: &[f64] = &[0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's Prometheus recorder, installed as the global `metrics` recorder on first use.
/// `None` when some other recorder was installed first (then `/metrics` is empty; a binary
/// that wants both should render this handle instead of installing its own).
pub fn prometheus_handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get_or_init(install).as_ref()
}

fn install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(TIME_TO_FIRST_TOKEN.into()), TTFT_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(INTER_TOKEN_LATENCY.into()), ITL_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(REQUEST_DURATION.into()), DURATION_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(ROUTER_OVERLAP_BLOCKS.into()), OVERLAP_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(ROUTER_DECISION_TIME.into()), DECISION_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(KV_HANDOFF_BYTES.into()), BYTES_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(KV_HANDOFF_SECONDS.into()), HANDOFF_BUCKETS)
        });
    let recorder = match builder {
        Ok(builder) => builder.build_recorder(),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the Prometheus recorder");
            return None;
        }
    };
    let handle = recorder.handle();
    if let Err(e) = metrics::set_global_recorder(recorder) {
        tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics stays empty");
        return None;
    }
    describe();
    Some(handle)
}

fn describe() {
    metrics::describe_counter!(
        REQUESTS_TOTAL,
        "Requests answered, by model, endpoint and HTTP status"
    );
    metrics::describe_histogram!(
        TIME_TO_FIRST_TOKEN,
        metrics::Unit::Seconds,
        "Time to first token"
    );
    metrics::describe_histogram!(
        INTER_TOKEN_LATENCY,
        metrics::Unit::Seconds,
        "Time between tokens"
    );
    metrics::describe_histogram!(REQUEST_DURATION, metrics::Unit::Seconds, "Request duration");
    metrics::describe_gauge!(INFLIGHT_REQUESTS, "Requests being served");
    metrics::describe_counter!(INSTANCE_REQUESTS_TOTAL, "Requests each instance accepted");
    metrics::describe_counter!(INPUT_TOKENS_TOTAL, "Prompt tokens sent to workers");
    metrics::describe_counter!(PREFILLS_TOTAL, "Routing decisions by where the prompt is computed");
    metrics::describe_counter!(
        PREFILL_FALLBACKS_TOTAL,
        "Prefill instances whose work was not used; the decode instance prefilled"
    );
    metrics::describe_histogram!(KV_HANDOFF_BYTES, metrics::Unit::Bytes, "KV bytes handed off");
    metrics::describe_histogram!(
        KV_HANDOFF_SECONDS,
        metrics::Unit::Seconds,
        "Prefill handle to the decode instance's first chunk"
    );
    metrics::describe_counter!(OUTPUT_TOKENS_TOTAL, "Tokens received from workers");
    metrics::describe_histogram!(ROUTER_OVERLAP_BLOCKS, "Cached prompt blocks per decision");
    metrics::describe_histogram!(
        ROUTER_DECISION_TIME,
        metrics::Unit::Seconds,
        "Time per routing decision"
    );
    metrics::describe_gauge!(ROUTER_PREDICTED_BLOCKS, "Predicted KV blocks of in-flight requests");
    metrics::describe_gauge!(ROUTER_INDEXED_INSTANCES, "Instances in the KV index");
    metrics::describe_counter!(ROUTER_RESYNC_NEEDED, "KV index resyncs needed (events lost)");
    metrics::describe_counter!(ROUTER_SNAPSHOT_REQUESTS, "KV snapshots asked of workers");
    metrics::describe_counter!(INSTANCE_FAILURES_TOTAL, "Requests instances failed, by cause");
    metrics::describe_counter!(INSTANCE_PROBES_TOTAL, "Requests let through to a failed instance");
    metrics::describe_counter!(ADMISSION_REJECTED_TOTAL, "Requests refused with 429 by admission");
    metrics::describe_gauge!(QUEUED_REQUESTS, "Requests waiting for a place");
    metrics::describe_counter!(CONNECTIONS_REFUSED_TOTAL, "Connections closed over the cap");
    metrics::describe_counter!(MIGRATIONS_TOTAL, "Responses moved to another instance mid-way");
    metrics::describe_counter!(
        ROUTER_SNAPSHOTS_APPLIED,
        "Workers' KV snapshots applied to the index"
    );
}

/// The Prometheus text exposition of every metric.
pub(crate) fn render() -> String {
    prometheus_handle().map(PrometheusHandle::render).unwrap_or_default()
}

/// Drains histogram samples into their buckets so memory stays bounded between scrapes.
pub(crate) fn run_upkeep() {
    if let Some(handle) = prometheus_handle() {
        handle.run_upkeep();
    }
}

/// How often [`run_upkeep`] runs.
pub(crate) const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// One model's metric handles, registered when the model appears.
#[derive(Debug)]
pub(crate) struct ModelMetrics {
    model: SharedString,
    ttft: Histogram,
    itl: Histogram,
    duration: Histogram,
    inflight: Gauge,
    input_tokens: Counter,
    output_tokens: Counter,
}

impl ModelMetrics {
    pub fn new(model: &str) -> ModelMetrics {
        // Installs the recorder first: handles taken before it would go nowhere.
        let _ = prometheus_handle();
        let model = SharedString::from(model.to_owned());
        ModelMetrics {
            ttft: metrics::histogram!(TIME_TO_FIRST_TOKEN, "model" => model.clone()),
            itl: metrics::histogram!(INTER_TOKEN_LATENCY, "model" => model.clone()),
            duration: metrics::histogram!(REQUEST_DURATION, "model" => model.clone()),
            inflight: metrics::gauge!(INFLIGHT_REQUESTS, "model" => model.clone()),
            input_tokens: metrics::counter!(INPUT_TOKENS_TOTAL, "model" => model.clone()),
            output_tokens: metrics::counter!(OUTPUT_TOKENS_TOTAL, "model" => model.clone()),
            model,
        }
    }
}

/// The request counter of one instance (registered once, when the instance appears).
pub(crate) fn instance_requests_counter(model: &str, instance_id: &str) -> Counter {
    let _ = prometheus_handle();
    metrics::counter!(
        INSTANCE_REQUESTS_TOTAL,
        "model" => model.to_owned(),
        "instance" => instance_id.to_owned(),
    )
}

/// Which API a request came through.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Endpoint {
    Chat,
    Completions,
    Responses,
}

impl Endpoint {
    fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat_completions",
            Endpoint::Completions => "completions",
            Endpoint::Responses => "responses",
        }
    }
}

/// Follows one request and records it when dropped, however it ended.
#[derive(Debug)]
pub(crate) struct RequestTracker {
    start: Instant,
    endpoint: Endpoint,
    model: Option<Arc<ModelMetrics>>,
    status: u16,
    last_token_at: Option<Instant>,
    output_tokens: u64,
}

impl RequestTracker {
    pub fn start(endpoint: Endpoint) -> RequestTracker {
        RequestTracker {
            start: Instant::now(),
            endpoint,
            model: None,
            // Until told otherwise, a request that ends was abandoned by its client.
            status: 499,
            last_token_at: None,
            output_tokens: 0,
        }
    }

    /// When the request arrived.
    pub fn started_at(&self) -> Instant {
        self.start
    }

    /// The request is for a known model: it now counts as in flight for it.
    pub fn set_model(&mut self, metrics: Arc<ModelMetrics>) {
        if self.model.is_none() {
            metrics.inflight.increment(1.0);
            self.model = Some(metrics);
        }
    }

    /// The prompt went to a worker.
    pub fn prompt_sent(&self, tokens: usize) {
        if let Some(m) = &self.model {
            m.input_tokens.increment(tokens as u64);
        }
    }

    /// `count` tokens arrived at `now`.
    pub fn tokens(&mut self, count: usize, now: Instant) {
        if count == 0 {
            return;
        }
        if let Some(m) = &self.model {
            match self.last_token_at {
                None => m.ttft.record(now.duration_since(self.start)),
                Some(last) => {
                    let gap = now.duration_since(last).as_secs_f64() / count as f64;
                    m.itl.record_many(gap, count);
                }
            }
        }
        self.last_token_at = Some(now);
        self.output_tokens += count as u64;
    }

    /// How the request ended, as an HTTP status.
    pub fn finish(&mut self, status: u16) {
        self.status = status;
    }
}

impl Drop for RequestTracker {
    fn drop(&mut self) {
        let model =
            self.model.as_ref().map_or(SharedString::const_str(UNKNOWN_MODEL), |m| m.model.clone());
        metrics::counter!(
            REQUESTS_TOTAL,
            "model" => model,
            "endpoint" => self.endpoint.label(),
            "status" => status_label(self.status),
        )
        .increment(1);
        if let Some(m) = &self.model {
            m.duration.record(self.start.elapsed());
            m.inflight.decrement(1.0);
            m.output_tokens.increment(self.output_tokens);
        }
    }
}

/// Status codes as static label values (no allocation per request).
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        400 => "400",
        404 => "404",
        405 => "405",
        413 => "413",
        499 => "499",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        s if s < 500 => "4xx",
        _ => "5xx",
    }
}
