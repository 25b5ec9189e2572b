//! `switchyard frontend`: the OpenAI-compatible HTTP frontend.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use switchyard_frontend::FrontendConfig;
use switchyard_router::PolicyKind;
use switchyard_runtime::Discovery;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::plane::PlaneArgs;
use super::store::StoreArgs;
use crate::env_names as env;

#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address the HTTP server binds.
    #[arg(long, env = env::HTTP_HOST, default_value = "0.0.0.0")]
    pub http_host: String,

    /// Port of the HTTP server.
    #[arg(long, env = env::HTTP_PORT, default_value_t = 8000)]
    pub http_port: u16,

    /// How the frontend picks a worker: round-robin or random.
    #[arg(long, env = env::ROUTER_MODE, default_value = "round-robin")]
    pub router_mode: PolicyKind,

    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = env::MAX_BODY_BYTES, default_value_t = 16 * 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Longest a request may take end to end, in seconds.
    #[arg(long, env = env::REQUEST_TIMEOUT_SECS, default_value_t = 600)]
    pub request_timeout_secs: u64,
}

impl HttpArgs {
    pub fn config(&self) -> FrontendConfig {
        FrontendConfig {
            router_mode: self.router_mode,
            max_body_bytes: self.max_body_bytes,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            ..FrontendConfig::default()
        }
    }

    pub async fn bind(&self) -> anyhow::Result<TcpListener> {
        let addr = (self.http_host.as_str(), self.http_port);
        TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP server to {}:{}", addr.0, addr.1))
    }
}

#[derive(Debug, Clone, Args)]
pub struct FrontendArgs {
    #[command(flatten)]
    pub http: HttpArgs,

    #[command(flatten)]
    pub store: StoreArgs,

    #[command(flatten)]
    pub plane: PlaneArgs,
}

pub async fn run(args: FrontendArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    let discovery = args.store.open().await?;
    let listener = args.http.bind().await?;
    println!("switchyard frontend listening on http://{}", listener.local_addr()?);
    serve(listener, &args.http, &args.plane, discovery, shutdown).await
}

/// Serves the frontend on an already-bound listener (shared with `switchyard up`).
pub async fn serve(
    listener: TcpListener,
    http: &HttpArgs,
    plane: &PlaneArgs,
    discovery: Discovery,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let client = plane.client().await?;
    switchyard_frontend::serve(listener, http.config(), discovery, client, shutdown)
        .await
        .context("frontend failed")
}
