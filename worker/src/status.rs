//! The worker's status port (`--metrics-port`): `/live` (the process answers), `/health`
//! (200 while registered and serving, else 503 with the reason; the GPUs the worker sees) and
//! `/metrics` (Prometheus text), for container health checks, orchestrator probes and scrapers.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use switchyard_proto::GpuInfo;
use switchyard_runtime::LeaseHealth;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Engine;
use crate::metrics::{ServiceState, WorkerMetrics};

const STARTING: u8 = 0;
const SERVING: u8 = 1;
const DRAINING: u8 = 2;

/// What the status port reports, updated by the worker service as it starts and stops.
pub struct WorkerStatus {
    phase: AtomicU8,
    serving: OnceLock<Serving>,
}

impl std::fmt::Debug for WorkerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerStatus").field("phase", &self.phase).finish_non_exhaustive()
    }
}

/// Known once the worker has registered.
struct Serving {
    instance_id: String,
    lease: Arc<LeaseHealth>,
    engine: Arc<dyn Engine>,
    in_flight: TaskTracker,
    metrics: Arc<WorkerMetrics>,
    gpus: Vec<GpuInfo>,
}

impl WorkerStatus {
    pub fn new() -> Arc<WorkerStatus> {
        Arc::new(WorkerStatus { phase: AtomicU8::new(STARTING), serving: OnceLock::new() })
    }

    /// The worker has registered and takes requests.
    pub(crate) fn serving(
        &self,
        instance_id: &str,
        lease: Arc<LeaseHealth>,
        engine: Arc<dyn Engine>,
        in_flight: TaskTracker,
        metrics: Arc<WorkerMetrics>,
        gpus: &[GpuInfo],
    ) {
        let instance_id = instance_id.to_owned();
        let gpus = gpus.to_vec();
        let serving = Serving { instance_id, lease, engine, in_flight, metrics, gpus };
        // A worker registers once; a second call would be a bug, and the first state stands.
        let _ = self.serving.set(serving);
        self.phase.store(SERVING, Ordering::Relaxed);
    }

    /// Shutdown began: deregistered, draining.
    pub(crate) fn draining(&self) {
        self.phase.store(DRAINING, Ordering::Relaxed);
    }

    /// `(healthy, status word)` as `/health` reports it.
    fn health(&self) -> (bool, &'static str) {
        match (self.phase.load(Ordering::Relaxed), self.serving.get()) {
            (SERVING, Some(s)) if s.lease.held() => (true, "serving"),
            (SERVING, Some(_)) => (false, "store_unreachable"),
            (DRAINING, _) => (false, "draining"),
            _ => (false, "starting"),
        }
    }
}

/// Serves the status endpoints on `listener` until `shutdown`.
pub async fn serve_status(
    listener: TcpListener,
    status: Arc<WorkerStatus>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/live", get(live))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .with_state(status);
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn live() -> Response {
    json(StatusCode::OK, serde_json::json!({"status": "live"}))
}

async fn health(State(status): State<Arc<WorkerStatus>>) -> Response {
    let (healthy, word) = status.health();
    let serving = status.serving.get();
    let instance = serving.map(|s| s.instance_id.as_str());
    let gpus = serving.map_or(&[][..], |s| &s.gpus);
    let code = if healthy { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    json(code, serde_json::json!({"status": word, "instance": instance, "gpus": gpus}))
}

async fn metrics(State(status): State<Arc<WorkerStatus>>) -> Response {
    let page = match status.serving.get() {
        Some(s) => {
            let state = ServiceState {
                registered: s.lease.held() && status.phase.load(Ordering::Relaxed) == SERVING,
                draining: status.phase.load(Ordering::Relaxed) == DRAINING,
                in_flight: s.in_flight.len(),
            };
            s.metrics.render(state, s.engine.load().as_ref())
        }
        // Nothing to label the series with before registration.
        None => String::new(),
    };
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], page).into_response()
}

fn json(code: StatusCode, body: serde_json::Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
