//! Finding out about the engine server: waiting (bounded) until it is ready, what it serves
//! and under which name, its make and context length; then watching that it stays up.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::Flavour;
use crate::Error;

/// How often a waiting worker asks whether the engine is ready, and how often a serving one
/// checks it is still up.
const POLL: Duration = Duration::from_millis(250);
const HEALTH_EVERY: Duration = Duration::from_secs(1);
const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// Failed health checks in a row before the engine counts as down.
const DOWN_AFTER: u32 = 2;

/// What `/v1/models` says about the served model.
#[derive(Debug, Clone)]
pub(crate) struct ServedModel {
    /// The engine's name for it (`model` of every request).
    pub id: String,
    /// The make, when the engine names one in `owned_by`.
    pub flavour: Option<Flavour>,
    /// Longest prompt + output, when the engine says.
    pub context_length: Option<u32>,
}

#[derive(Deserialize)]
struct ModelList {
    data: Vec<Value>,
}

/// Waits until the engine at `base` answers `/health` and lists a model (`want`, else its
/// first), for at most `timeout`; `stop` ends the wait early (e.g. a launched engine exited).
pub(crate) async fn wait_ready(
    http: &reqwest::Client,
    base: &str,
    want: Option<&str>,
    timeout: Duration,
    stop: &CancellationToken,
) -> Result<ServedModel, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match models(http, base, want).await {
            Ok(model) if healthy(http, base).await => return Ok(model),
            Ok(_) => "/health is not OK yet".to_owned(),
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(Error::Engine(format!(
                "the engine at {base} was not ready within {}s: {last}",
                timeout.as_secs()
            )));
        }
        tokio::select! {
            () = stop.cancelled() => {
                return Err(Error::Engine(format!("stopped waiting for the engine at {base}: {last}")));
            }
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

async fn healthy(http: &reqwest::Client, base: &str) -> bool {
    matches!(
        http.get(format!("{base}/health")).timeout(HEALTH_TIMEOUT).send().await,
        Ok(r) if r.status().is_success()
    )
}

/// The served model from `/v1/models`.
async fn models(
    http: &reqwest::Client,
    base: &str,
    want: Option<&str>,
) -> Result<ServedModel, Error> {
    let response = http
        .get(format!("{base}/v1/models"))
        .timeout(HEALTH_TIMEOUT)
        .send()
        .await
        .map_err(|e| Error::Engine(format!("GET {base}/v1/models: {e}")))?;
    if !response.status().is_success() {
        return Err(Error::Engine(format!("GET {base}/v1/models: {}", response.status())));
    }
    let list: ModelList = response
        .json()
        .await
        .map_err(|e| Error::Engine(format!("GET {base}/v1/models: unexpected body: {e}")))?;
    let id_of = |m: &Value| m.get("id").and_then(Value::as_str).map(str::to_owned);
    let model = match want {
        Some(want) => {
            list.data.iter().find(|m| id_of(m).as_deref() == Some(want)).ok_or_else(|| {
                let ids: Vec<String> = list.data.iter().filter_map(id_of).collect();
                Error::Config(format!(
                    "the engine at {base} does not serve `{want}`; it serves {ids:?}"
                ))
            })?
        }
        None => list
            .data
            .first()
            .ok_or_else(|| Error::Engine(format!("the engine at {base} lists no model")))?,
    };
    let context_length = ["max_model_len", "context_length", "max_seq_len"]
        .iter()
        .find_map(|k| model.get(*k).and_then(Value::as_u64))
        .or_else(|| model.pointer("/meta/n_ctx").and_then(Value::as_u64))
        .and_then(|n| u32::try_from(n).ok());
    Ok(ServedModel {
        id: id_of(model).unwrap_or_default(),
        flavour: model.get("owned_by").and_then(Value::as_str).and_then(Flavour::from_owned_by),
        context_length,
    })
}

/// Checks `/health` every second until `stop`, publishing whether the engine is up; it is
/// down after two failures in a row.
pub(crate) async fn watch_health(
    http: reqwest::Client,
    base: String,
    up: watch::Sender<bool>,
    stop: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(HEALTH_EVERY) => {}
        }
        if healthy(&http, &base).await {
            if failures >= DOWN_AFTER {
                info!(engine = %base, "engine is answering again");
            }
            failures = 0;
            up.send_if_modified(|v| !std::mem::replace(v, true));
        } else {
            failures += 1;
            if failures == DOWN_AFTER {
                warn!(engine = %base, "engine stopped answering /health");
                up.send_if_modified(|v| std::mem::replace(v, false));
            }
        }
    }
}
