//! The engine's load, read from its Prometheus `/metrics` once a second: running and waiting
//! requests, KV cache use, prefix-cache hits — under each engine's own metric names — as the
//! [`LoadReport`] routers read.

use std::collections::HashMap;
use std::time::Duration;

use switchyard_proto::LoadReport;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::Flavour;

const SCRAPE_EVERY: Duration = Duration::from_secs(1);
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// One engine's metric names.
struct Names {
    running: &'static str,
    waiting: &'static str,
    /// KV cache in use, as a fraction of the whole.
    usage: Option<&'static str>,
    /// Prefix-cache hits and lookups, in tokens.
    hits: Option<&'static str>,
    queries: Option<&'static str>,
}

fn names(flavour: Flavour) -> Option<Names> {
    match flavour {
        Flavour::Vllm => Some(Names {
            running: "vllm:num_requests_running",
            waiting: "vllm:num_requests_waiting",
            usage: Some("vllm:kv_cache_usage_perc"),
            hits: Some("vllm:prefix_cache_hits_total"),
            queries: Some("vllm:prefix_cache_queries_total"),
        }),
        Flavour::Sglang => Some(Names {
            running: "sglang:num_running_reqs",
            waiting: "sglang:num_queue_reqs",
            usage: Some("sglang:token_usage"),
            hits: None,
            queries: None,
        }),
        Flavour::Llamacpp => Some(Names {
            running: "llamacpp:requests_processing",
            waiting: "llamacpp:requests_deferred",
            usage: None,
            hits: Some("llamacpp:prompt_tokens_cached_total"),
            queries: None,
        }),
        Flavour::Openai | Flavour::Trtllm => None,
    }
}

/// Whether Switchyard knows where `flavour` reports its load.
pub(crate) fn reports_load(flavour: Flavour) -> bool {
    names(flavour).is_some()
}

/// Sums of every sample of each metric in a Prometheus text page (labels ignored).
pub(crate) fn parse(text: &str) -> HashMap<&str, f64> {
    let mut sums = HashMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => continue,
        };
        let rest = match rest.strip_prefix('{') {
            Some(labels) => labels.rsplit_once('}').map_or("", |(_, after)| after),
            None => rest,
        };
        if let Some(value) = rest.split_whitespace().next().and_then(|v| v.parse::<f64>().ok()) {
            *sums.entry(name).or_insert(0.0) += value;
        }
    }
    sums
}

/// The value of label `label` on the first sample of `metric` (e.g. vLLM's
/// `vllm:cache_config_info{block_size="16",num_gpu_blocks="…"}`).
pub(crate) fn label<'a>(text: &'a str, metric: &str, label: &str) -> Option<&'a str> {
    let line =
        text.lines().find(|l| l.starts_with(metric) && l[metric.len()..].starts_with('{'))?;
    let labels = &line[metric.len() + 1..line.rfind('}')?];
    let key = format!("{label}=\"");
    let start = labels.find(&key)? + key.len();
    let end = labels[start..].find('"')? + start;
    Some(&labels[start..end])
}

/// The load a metrics page shows, with the cache in `block_size`-token blocks of `total_blocks`.
fn report(flavour: Flavour, text: &str, block_size: u32, total_blocks: u64) -> Option<LoadReport> {
    let names = names(flavour)?;
    let m = parse(text);
    let get = |name: &str| m.get(name).copied().unwrap_or(0.0);
    let count = |v: f64| v.max(0.0).round() as u64;
    let usage = names.usage.map_or(0.0, get).clamp(0.0, 1.0);
    let block = f64::from(block_size.max(1));
    Some(LoadReport {
        active_requests: u32::try_from(count(get(names.running))).unwrap_or(u32::MAX),
        waiting_requests: u32::try_from(count(get(names.waiting))).unwrap_or(u32::MAX),
        active_kv_blocks: count(usage * total_blocks as f64),
        total_kv_blocks: total_blocks,
        cache_hit_blocks: count(names.hits.map_or(0.0, get) / block),
        cache_lookup_blocks: count(names.queries.map_or(0.0, get) / block),
    })
}

/// Scrapes `{base}/metrics` every second until `stop`, publishing the load.
pub(crate) async fn poll(
    http: reqwest::Client,
    base: String,
    flavour: Flavour,
    block_size: u32,
    total_blocks: u64,
    load: watch::Sender<Option<LoadReport>>,
    stop: CancellationToken,
) {
    loop {
        match scrape(&http, &base).await {
            Ok(text) => {
                load.send_replace(report(flavour, &text, block_size, total_blocks));
            }
            Err(e) => debug!(engine = %base, error = %e, "metrics scrape failed"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(SCRAPE_EVERY) => {}
        }
    }
}

/// The engine's metrics page.
pub(crate) async fn scrape(http: &reqwest::Client, base: &str) -> Result<String, reqwest::Error> {
    http.get(format!("{base}/metrics"))
        .timeout(SCRAPE_TIMEOUT)
        .send()
        .await?
        .error_for_status()?
        .text()
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const VLLM: &str = r#"# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 3.0
vllm:num_requests_waiting{engine="0",model_name="tiny"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="tiny"} 0.25
vllm:prefix_cache_hits_total{engine="0",model_name="tiny"} 64.0
vllm:prefix_cache_queries_total{engine="0",model_name="tiny"} 160.0
vllm:cache_config_info{block_size="16",cache_dtype="auto",num_gpu_blocks="400"} 1.0
"#;

    #[test]
    fn vllm_metrics_become_a_load_report() {
        assert_eq!(label(VLLM, "vllm:cache_config_info", "block_size"), Some("16"));
        assert_eq!(label(VLLM, "vllm:cache_config_info", "num_gpu_blocks"), Some("400"));
        let r = report(Flavour::Vllm, VLLM, 16, 400).expect("vllm reports load");
        assert_eq!((r.active_requests, r.waiting_requests), (3, 1));
        assert_eq!((r.active_kv_blocks, r.total_kv_blocks), (100, 400));
        assert_eq!((r.cache_hit_blocks, r.cache_lookup_blocks), (4, 10));
    }

    #[test]
    fn llamacpp_metrics_and_samples_with_timestamps() {
        let text = "llamacpp:requests_processing 2\nllamacpp:requests_deferred 5 1700000000\n";
        let r = report(Flavour::Llamacpp, text, 16, 0).expect("llama.cpp reports load");
        assert_eq!((r.active_requests, r.waiting_requests), (2, 5));
        assert!(report(Flavour::Trtllm, text, 16, 0).is_none());
    }
}
