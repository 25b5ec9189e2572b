//! `switchyard health`: probes a Switchyard server on this host and exits 0 when it is
//! healthy, so images with no HTTP client in them can still have a health check.

use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;

use crate::env_names as env;

#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// URL to probe [default: the frontend's `/live` on --http-port, else the worker's
    /// `/health` on --metrics-port; the first that accepts a connection decides].
    #[arg(long, env = env::HEALTH_URL)]
    pub url: Option<String>,

    /// The frontend's port on this host.
    #[arg(long, env = env::HTTP_PORT, default_value_t = 8000)]
    pub http_port: u16,

    /// The worker's status port on this host (0: none).
    #[arg(long, env = env::METRICS_PORT, default_value_t = 0)]
    pub metrics_port: u16,

    /// Longest wait for an answer, in seconds.
    #[arg(long, env = env::HEALTH_TIMEOUT_SECS, default_value_t = 3.0)]
    pub timeout_secs: f64,
}

pub async fn run(args: HealthArgs) -> anyhow::Result<()> {
    let timeout = Duration::try_from_secs_f64(args.timeout_secs)
        .with_context(|| format!("--timeout-secs {} is not a duration", args.timeout_secs))?;
    let client = reqwest::Client::builder().timeout(timeout).build()?;
    let urls = match args.url {
        Some(url) => vec![url],
        None => {
            let mut urls = vec![format!("http://127.0.0.1:{}/live", args.http_port)];
            if args.metrics_port != 0 {
                urls.push(format!("http://127.0.0.1:{}/health", args.metrics_port));
            }
            urls
        }
    };
    let last = urls.len() - 1;
    for (i, url) in urls.iter().enumerate() {
        match client.get(url).send().await {
            // Nothing listens there: this host runs the other role.
            Err(e) if e.is_connect() && i < last => {}
            Err(e) => bail!("{url}: {e}"),
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                if status.is_success() {
                    println!("{url}: {status} {body}");
                    return Ok(());
                }
                bail!("{url}: {status} {body}");
            }
        }
    }
    bail!("nothing to probe")
}
