//! Readable names for the keys of a result line, for tables and pages (the JSONL keeps
//! bench_serving's names).

/// Names of the keys people read most; the rest are spelled out by [`label`].
const LABELS: &[(&str, &str)] = &[
    ("tag", "label"),
    ("backend", "backend"),
    ("dataset_name", "dataset"),
    ("request_rate", "request rate (req/s)"),
    ("max_concurrency", "max concurrency"),
    ("sharegpt_output_len", "ShareGPT output length"),
    ("random_input_len", "random input length"),
    ("random_output_len", "random output length"),
    ("random_range_ratio", "random range ratio"),
    ("duration", "duration (s)"),
    ("completed", "completed requests"),
    ("total_input_tokens", "input tokens"),
    ("total_input_text_tokens", "input text tokens"),
    ("total_input_vision_tokens", "input vision tokens"),
    ("total_output_tokens", "output tokens"),
    ("total_output_tokens_retokenized", "output tokens (re-tokenized)"),
    ("request_throughput", "requests/s"),
    ("input_throughput", "input tokens/s"),
    ("output_throughput", "output tokens/s"),
    ("total_throughput", "total tokens/s"),
    ("concurrency", "mean concurrency"),
    ("accept_length", "accept length"),
    ("max_output_tokens_per_s", "peak output tokens/s"),
    ("max_concurrent_requests", "peak requests in flight"),
    ("request_goodput", "goodput (req/s)"),
    ("slo_attainment", "SLO attainment"),
    ("model", "model"),
    ("base_url", "server"),
    ("topology", "topology"),
    ("num_requests", "requests sent"),
    ("failed", "failed requests"),
    ("failure_rate", "failure rate"),
    ("burstiness", "burstiness"),
    ("seed", "seed"),
    ("tokenizer", "tokenizer"),
    ("total_input_tokens_server", "input tokens (server's count)"),
    ("max_itl_ms", "max ITL (ms)"),
    ("client_cpu_ms", "client thread CPU (ms)"),
    ("client_cpu_ms_per_request", "client thread CPU / request (ms)"),
    ("client_process_cpu_ms", "client process CPU (ms)"),
    ("client_process_cpu_ms_per_request", "client process CPU / request (ms)"),
    ("cached_tokens_server", "cached prompt tokens"),
    ("prefix_cache_hit_rate", "prefix cache hit rate"),
    ("prefix_cache_hit_rate_bound", "hit rate bound"),
    ("instance_requests_max_over_mean", "busiest worker / mean"),
    ("gpus", "GPUs"),
    ("gpu_cost_per_hour", "cost per GPU-hour"),
    ("cost_per_1m_output_tokens", "cost / 1M output tokens"),
    ("cost_per_request", "cost / request"),
];

/// The readable name of `key`: `p99_ttft_ms` reads `TTFT p99 (ms)`.
pub fn label(key: &str) -> String {
    if let Some((_, name)) = LABELS.iter().find(|(k, _)| *k == key) {
        return (*name).to_owned();
    }
    let (body, unit) = match key.strip_suffix("_ms") {
        Some(body) => (body, " (ms)"),
        None => (key, ""),
    };
    let (stat, rest) = match body.split_once('_') {
        Some((stat @ ("mean" | "median" | "std" | "p90" | "p95" | "p99"), rest)) => {
            (Some(stat), rest)
        }
        _ => (None, body),
    };
    let rest = rest
        .replace("e2e_latency", "E2E")
        .replace("ttft", "TTFT")
        .replace("tpot", "TPOT")
        .replace("itl", "ITL")
        .replace("from_scheduled", "from schedule")
        .replace('_', " ");
    match stat {
        Some(stat) => format!("{rest} {stat}{unit}"),
        None => format!("{rest}{unit}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_read_as_words() {
        assert_eq!(label("p99_ttft_ms"), "TTFT p99 (ms)");
        assert_eq!(label("median_e2e_latency_ms"), "E2E median (ms)");
        assert_eq!(label("p99_e2e_latency_from_scheduled_ms"), "E2E from schedule p99 (ms)");
        assert_eq!(label("output_throughput"), "output tokens/s");
        assert_eq!(label("some_new_key"), "some new key");
    }
}
