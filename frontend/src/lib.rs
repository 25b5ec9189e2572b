//! Switchyard's OpenAI-compatible HTTP edge: parses and validates requests, renders chat
//! templates and tokenizes (once-loaded, shared per model), picks a live instance from
//! discovery with the configured policy, streams the worker's tokens back as OpenAI chunks,
//! and exports Prometheus metrics.
//!
//! Routes: `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/responses`,
//! `POST /v1/embeddings`, `GET /v1/models`, `GET /v1/models/{id}`, `GET /openapi.json`,
//! `GET /health`, `GET /live`, `GET /metrics`.

mod admission;
mod auth;
mod bpe;
mod breaker;
mod chat_output;
mod config;
mod conversation;
mod detokenize;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod generation;
mod handlers;
mod health;
mod http_server;
mod https;
mod kv_router;
mod literal;
mod logprobs;
pub mod metrics;
mod migration;
mod models;
mod openai;
mod openapi;
mod parsers;
mod preprocess;
mod responses_output;
mod routing;
mod stop;
mod stream;
mod template;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use switchyard_runtime::RequestClient;
use switchyard_runtime::discovery::Discovery;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use admission::AdmissionConfig;
pub use auth::ApiKeys;
pub use config::FrontendConfig;
pub use error::Error;
pub use http_server::HttpLimits;
pub use https::HttpTls;
pub use parsers::{ReasoningParserKind, ToolParserKind};
use switchyard_router::RoutingConfig;
pub use switchyard_router::{DisaggConfig, PolicyKind};
/// The fast byte-level BPE encoder and the chat template renderer, shared with the load
/// generator (it measures prompts and outputs as this frontend tokenizes them).
pub use {bpe::FastBpe, template::ChatTemplate};

use crate::handlers::AppState;
use crate::kv_router::KvRouter;
use crate::models::ModelRegistry;

/// Compiles the chat template of `files` as frontends will, so a worker can refuse at start
/// a model whose template does not compile (with the reason) rather than register it.
pub fn check_chat_template(files: &switchyard_model::ModelFiles) -> Result<(), Error> {
    match files.tokenizer_config.chat_template.as_deref() {
        Some(source) => {
            template::ChatTemplate::compile(source).map(|_| ()).map_err(|e| Error::ModelLoad {
                source_name: files.source.clone(),
                reason: format!("chat template: {e:#}"),
            })
        }
        None => Ok(()),
    }
}

/// Bound on waiting for the frontend's own background tasks after the server stopped.
const TASKS_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves the API on `listener` until `shutdown`, then drains open requests.
///
/// Follows `discovery` for the live instances and reaches them through `client`; with
/// `config.events`, follows the workers' KV events and load reports too. Returns once the
/// server has stopped; an error only when discovery cannot be read at start, the event plane
/// cannot be subscribed to, or the policy settings are invalid (a failed accept is logged and
/// the next one tried).
pub async fn serve(
    listener: TcpListener,
    config: FrontendConfig,
    discovery: Discovery,
    client: Arc<dyn RequestClient>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    // Background tasks stop with `shutdown`, or when the server stops for any other reason.
    let stop = shutdown.child_token();
    let tasks = TaskTracker::new();
    let instances = discovery.watch_instances(stop.clone()).await.map_err(Error::Discovery)?;
    let registry = ModelRegistry::start(instances, &tasks, stop.clone());
    let _ = metrics::prometheus_handle();
    tasks.spawn(metrics_upkeep(stop.clone()));

    let policy = config
        .router_mode
        .build_with(&config.policy)
        .map_err(|e| Error::Internal(format!("invalid router settings: {e}")))?;
    let events = match &config.events {
        Some(subscriber) => Some(subscriber.subscribe().await.map_err(Error::Events)?),
        None => None,
    };
    config
        .disagg
        .validate()
        .map_err(|e| Error::Internal(format!("invalid disaggregation settings: {e}")))?;
    let routing = RoutingConfig { decision_ttl: config.kv_decision_ttl, disagg: config.disagg };
    let kv = Arc::new(KvRouter::new(routing));
    tasks.spawn(kv.clone().run(registry.changes(), config.events.clone(), events, stop.clone()));

    let policy = Arc::from(policy);
    // Open requests may finish within their own limit.
    let limits = HttpLimits { drain_timeout: config.request_timeout, ..config.http };
    let breakers = Arc::default();
    let queue = admission::Queue::default();
    let state = Arc::new(AppState { policy, kv, registry, client, config, breakers, queue });
    let tls = state.config.tls.clone();
    let app = router(state);
    tracing::info!(address = ?listener.local_addr().ok(), https = tls.is_some(), "frontend listening");
    http_server::serve(listener, app, limits, tls, shutdown.clone()).await;
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(TASKS_DRAIN_TIMEOUT, tasks.wait()).await.is_err() {
        tracing::warn!("background tasks still running after shutdown");
    }
    Ok(())
}

fn router(state: Arc<AppState>) -> Router {
    let body_limit = state.config.max_body_bytes;
    let keys = state.config.api_keys.clone();
    Router::new()
        .route("/v1/chat/completions", post(handlers::chat::chat_completions))
        .route("/v1/completions", post(handlers::completions::completions))
        .route("/v1/responses", post(handlers::responses::responses))
        .route("/v1/embeddings", post(handlers::embeddings::embeddings))
        .route("/v1/models", get(health::models))
        .route("/v1/models/{id}", get(health::model))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/health", get(health::health))
        .route("/live", get(health::live))
        .route("/metrics", get(health::metrics))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(keys, auth::require_key))
        .with_state(state)
}

async fn metrics_upkeep(stop: CancellationToken) {
    let mut tick = tokio::time::interval(metrics::UPKEEP_INTERVAL);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => metrics::run_upkeep(),
        }
    }
}
