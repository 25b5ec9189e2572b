//! The `--output-file` line of a run: exactly sglang.bench_serving's keys in its order, then
//! the goodput key, then Switchyard's own figures, then (with `--output-details`) per-request
//! lists.

use serde_json::{Value, json};

use super::line::ResultLine;
use crate::config::RequestRate;
use crate::dataset::{Dataset, DatasetRequest, Prompt};
use crate::metrics::RunMetrics;
use crate::record::RequestRecord;
use crate::stats::Distribution;
use crate::{Error, TokenCounter};

/// bench_serving's keys, in its order.
pub const BENCH_SERVING_KEYS: &[&str] = &[
    "tag",
    "backend",
    "dataset_name",
    "request_rate",
    "max_concurrency",
    "sharegpt_output_len",
    "random_input_len",
    "random_output_len",
    "random_range_ratio",
    "server_info",
    "duration",
    "completed",
    "total_input_tokens",
    "total_input_text_tokens",
    "total_input_vision_tokens",
    "total_output_tokens",
    "total_output_tokens_retokenized",
    "request_throughput",
    "input_throughput",
    "output_throughput",
    "total_throughput",
    "mean_e2e_latency_ms",
    "median_e2e_latency_ms",
    "std_e2e_latency_ms",
    "p90_e2e_latency_ms",
    "p95_e2e_latency_ms",
    "p99_e2e_latency_ms",
    "mean_ttft_ms",
    "median_ttft_ms",
    "std_ttft_ms",
    "p90_ttft_ms",
    "p95_ttft_ms",
    "p99_ttft_ms",
    "mean_tpot_ms",
    "median_tpot_ms",
    "std_tpot_ms",
    "p90_tpot_ms",
    "p95_tpot_ms",
    "p99_tpot_ms",
    "mean_itl_ms",
    "median_itl_ms",
    "std_itl_ms",
    "p90_itl_ms",
    "p95_itl_ms",
    "p99_itl_ms",
    "concurrency",
    "accept_length",
    "max_output_tokens_per_s",
    "max_concurrent_requests",
];

/// What a run was asked to do (the argument half of the line).
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub tag: Option<String>,
    pub backend: String,
    pub dataset_name: String,
    pub request_rate: RequestRate,
    pub max_concurrency: Option<usize>,
    pub sharegpt_output_len: Option<u32>,
    pub random_input_len: u32,
    pub random_output_len: u32,
    pub random_range_ratio: f64,
    pub server_info: Value,
    pub model: String,
    pub base_url: String,
    /// The topology this ran against (`--topology`), if any.
    pub topology: Option<String>,
    pub burstiness: f64,
    pub seed: u64,
    /// What prompts were measured with (`--tokenizer`, or what the server pointed to).
    pub tokenizer: String,
    /// The sampling and request settings every request was sent with (the `settings` key),
    /// compared across runs by `bench outputs` and `bench compare`.
    pub settings: Value,
}

fn push_dist(line: &mut ResultLine, name: &str, d: &Distribution) {
    for (stat, v) in [
        ("mean", d.mean),
        ("median", d.median),
        ("std", d.std),
        ("p90", d.p90),
        ("p95", d.p95),
        ("p99", d.p99),
    ] {
        line.push(&format!("{stat}_{name}"), v);
    }
}

fn opt<T: Into<Value>>(v: Option<T>) -> Value {
    v.map_or(Value::Null, Into::into)
}

/// The line of one run.
pub fn result_line(info: &RunInfo, m: &RunMetrics) -> ResultLine {
    let mut l = ResultLine::default();
    l.push("tag", opt(info.tag.clone()));
    l.push("backend", json!(info.backend));
    l.push("dataset_name", json!(info.dataset_name));
    l.push("request_rate", info.request_rate.0);
    l.push("max_concurrency", opt(info.max_concurrency));
    l.push("sharegpt_output_len", opt(info.sharegpt_output_len));
    l.push("random_input_len", json!(info.random_input_len));
    l.push("random_output_len", json!(info.random_output_len));
    l.push("random_range_ratio", info.random_range_ratio);
    l.push("server_info", info.server_info.clone());
    l.push("duration", m.duration_s);
    l.push("completed", json!(m.completed));
    l.push("total_input_tokens", json!(m.total_input));
    l.push("total_input_text_tokens", json!(m.total_input));
    l.push("total_input_vision_tokens", json!(0));
    l.push("total_output_tokens", json!(m.total_output));
    l.push("total_output_tokens_retokenized", json!(m.total_output_retokenized));
    l.push("request_throughput", m.request_throughput);
    l.push("input_throughput", m.input_throughput);
    l.push("output_throughput", m.output_throughput);
    l.push("total_throughput", m.total_throughput);
    push_dist(&mut l, "e2e_latency_ms", &m.e2e);
    push_dist(&mut l, "ttft_ms", &m.ttft);
    push_dist(&mut l, "tpot_ms", &m.tpot);
    push_dist(&mut l, "itl_ms", &m.itl);
    l.push("concurrency", m.concurrency);
    l.push("accept_length", Value::Null);
    l.push("max_output_tokens_per_s", m.max_output_tokens_per_s);
    l.push("max_concurrent_requests", json!(m.max_concurrent_requests));
    if let Some(g) = &m.goodput {
        // bench_serving's GoodputMetrics fields, in its order.
        let slos: serde_json::Map<String, Value> =
            g.slos.slos.iter().map(|(k, v)| (k.name().to_owned(), json!(v))).collect();
        l.push("goodput_slos_ms", Value::Object(slos));
        l.push("request_goodput", g.request_goodput);
        l.push("slo_attainment", g.slo_attainment);
        let by: serde_json::Map<String, Value> =
            g.by_metric.iter().map(|(k, v)| (k.name().to_owned(), json!(v))).collect();
        l.push("slo_attainment_by_metric", Value::Object(by));
    }
    // Switchyard's own figures.
    l.push("model", json!(info.model));
    l.push("base_url", json!(info.base_url));
    l.push("topology", opt(info.topology.clone()));
    l.push("num_requests", json!(m.num_requests));
    l.push("failed", json!(m.failed));
    l.push("error_counts", json!(m.error_counts));
    l.push("burstiness", info.burstiness);
    l.push("seed", json!(info.seed));
    l.push("tokenizer", json!(info.tokenizer));
    l.push("settings", info.settings.clone());
    l.push("total_input_tokens_server", opt(m.total_input_server));
    l.push("max_itl_ms", m.itl.max);
    for (name, d) in [
        ("ttft_from_scheduled_ms", &m.ttft_from_scheduled),
        ("e2e_latency_from_scheduled_ms", &m.e2e_from_scheduled),
        ("send_lag_ms", &m.send_lag),
    ] {
        l.push(&format!("mean_{name}"), d.mean);
        l.push(&format!("median_{name}"), d.median);
        l.push(&format!("p99_{name}"), d.p99);
    }
    l.push("cached_tokens_server", opt(m.total_cached_server));
    l.push("prefix_cache_hit_rate", opt(m.prefix_cache_hit_rate));
    l.push("prefix_cache_hit_rate_bound", opt(m.prefix_cache_hit_rate_bound));
    l.push("requests_per_instance", json!(m.instance_requests));
    l.push("instance_requests_max_over_mean", opt(m.instance_requests_max_over_mean));
    l.push("client_cpu_ms", opt(m.client_cpu.map(|c| c.as_secs_f64() * 1000.0)));
    l.push("client_cpu_ms_per_request", opt(m.client_cpu_ms_per_request()));
    l.push("client_process_cpu_ms", opt(m.process_cpu.map(|c| c.as_secs_f64() * 1000.0)));
    l.push("client_process_cpu_ms_per_request", opt(m.process_cpu_ms_per_request()));
    if let Some(c) = &m.cost {
        l.push("gpus", c.gpus);
        l.push("gpu_cost_per_hour", c.gpu_cost_per_hour);
        l.push("cost_per_1m_output_tokens", opt(c.per_1m_output_tokens));
        l.push("cost_per_request", opt(c.per_request));
    }
    l.push("failure_rate", json!(m.failed as f64 / m.num_requests.max(1) as f64));
    if let Some(r) = &m.resources {
        l.push("resources", r.json.clone());
    }
    l
}

/// `--save-outputs`: every request's prompt (its own turn, for conversations) and output, with
/// what it asked for and how long it took, in workload order.
pub fn push_outputs(line: &mut ResultLine, records: &[RequestRecord], dataset: &Dataset) {
    let turns: Vec<&DatasetRequest> = dataset.sessions.iter().flat_map(|s| &s.turns).collect();
    let outputs: Vec<Value> = records
        .iter()
        .map(|r| {
            let prompt = match turns.get(r.index).map(|t| &t.prompt) {
                Some(Prompt::Text(text)) => json!(text),
                Some(Prompt::Messages(messages)) => json!(messages),
                None => Value::Null,
            };
            let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
            json!({
                "prompt": prompt,
                "max_tokens": r.output_len_requested,
                "output": r.text,
                "output_tokens": if r.succeeded() { r.output_tokens() } else { 0 },
                "ttft_ms": r.ttft().map(ms),
                "e2e_ms": ms(r.e2e()),
                "error": r.failure.as_ref().map(|f| f.message.clone()),
            })
        })
        .collect();
    line.push("outputs", Value::Array(outputs));
}

/// `--output-details`: bench_serving's per-request lists (seconds, as it writes them), then the
/// scheduled and actual send times and the tokens of every chunk.
pub fn push_details(
    line: &mut ResultLine,
    records: &[RequestRecord],
    m: &RunMetrics,
    tokenizer: &TokenCounter,
) -> Result<(), Error> {
    let secs = |d: std::time::Duration| d.as_secs_f64();
    line.push("input_lens", json!(records.iter().map(|r| r.prompt_len).collect::<Vec<_>>()));
    let outputs: Vec<usize> =
        records.iter().map(|r| if r.succeeded() { r.output_tokens() } else { 0 }).collect();
    line.push("output_lens", json!(outputs));
    line.push(
        "ttfts",
        json!(records.iter().map(|r| r.ttft().map_or(0.0, secs)).collect::<Vec<_>>()),
    );
    let itls: Vec<Vec<f64>> = records.iter().map(|r| r.itls().map(secs).collect()).collect();
    line.push("itls", json!(itls));
    line.push(
        "generated_texts",
        json!(records.iter().map(|r| r.text.as_str()).collect::<Vec<_>>()),
    );
    let errors: Vec<String> = records
        .iter()
        .map(|r| r.failure.as_ref().map(|f| f.message.clone()).unwrap_or_default())
        .collect();
    line.push("errors", json!(errors));
    line.push("retokenized_output_lens", json!(m.retokenized));
    line.push(
        "scheduled_times",
        json!(records.iter().map(|r| secs(r.scheduled)).collect::<Vec<_>>()),
    );
    line.push("send_times", json!(records.iter().map(|r| secs(r.sent)).collect::<Vec<_>>()));
    let mut chunk_tokens = Vec::with_capacity(records.len());
    for r in records {
        chunk_tokens.push(tokenizer.count_batch(r.chunk_texts().collect())?);
    }
    line.push("chunk_tokens", json!(chunk_tokens));
    Ok(())
}
