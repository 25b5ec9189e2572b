//! The terminal summary of a run: first exactly sglang.bench_serving's block (its labels, its
//! order, its number formats), so scripts that grep it keep working; then Switchyard's own
//! sections, whose labels never repeat one of bench_serving's.

use std::fmt::Write as _;

use super::result::RunInfo;
use crate::metrics::RunMetrics;
use crate::stats::Distribution;

fn row(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{label:<40} {value:<10}");
}

fn row2(out: &mut String, label: &str, value: f64) {
    let _ = writeln!(out, "{label:<40} {value:<10.2}");
}

fn section(out: &mut String, title: &str) {
    let _ = writeln!(out, "{title:-^50}");
}

/// Mean, median, P90, P95, P99 rows of one distribution (`Mean TTFT (ms):` …).
fn dist_rows(out: &mut String, name: &str, d: &Distribution) {
    for (stat, v) in
        [("Mean", d.mean), ("Median", d.median), ("P90", d.p90), ("P95", d.p95), ("P99", d.p99)]
    {
        row2(out, &format!("{stat} {name} (ms):"), v);
    }
}

/// The summary text (ends with a newline).
pub fn summary(info: &RunInfo, m: &RunMetrics) -> String {
    let mut o = String::with_capacity(4096);
    bench_serving_block(&mut o, info, m);
    switchyard_sections(&mut o, info, m);
    let _ = writeln!(o, "{}", "=".repeat(50));
    o
}

/// bench_serving's rows, as `sglang.benchmark.serving` prints them for a text dataset.
fn bench_serving_block(o: &mut String, info: &RunInfo, m: &RunMetrics) {
    let _ = writeln!(o, "\n{:=^50}", " Serving Benchmark Result ");
    row(o, "Backend:", &info.backend);
    row(o, "Traffic request rate:", info.request_rate);
    let concurrency = info.max_concurrency.map_or("not set".to_owned(), |c| c.to_string());
    row(o, "Max request concurrency:", concurrency);
    row(o, "Successful requests:", m.completed);
    row2(o, "Benchmark duration (s):", m.duration_s);
    row(o, "Total input tokens:", m.total_input);
    row(o, "Total input text tokens:", m.total_input);
    row(o, "Total generated tokens:", m.total_output);
    row(o, "Total generated tokens (retokenized):", m.total_output_retokenized);
    row2(o, "Request throughput (req/s):", m.request_throughput);
    row2(o, "Input token throughput (tok/s):", m.input_throughput);
    row2(o, "Output token throughput (tok/s):", m.output_throughput);
    row2(o, "Peak output token throughput (tok/s):", m.max_output_tokens_per_s);
    row(o, "Peak concurrent requests:", m.max_concurrent_requests);
    row2(o, "Total token throughput (tok/s):", m.total_throughput);
    row2(o, "Concurrency:", m.concurrency);
    if let Some(g) = &m.goodput {
        section(o, "Goodput");
        let slos: Vec<String> =
            g.slos.slos.iter().map(|(k, v)| format!("{}:{v}", k.name())).collect();
        row(o, "SLOs (ms):", slos.join(" "));
        row2(o, "Request goodput (req/s):", g.request_goodput);
        row2(o, "SLO attainment (%):", g.slo_attainment * 100.0);
        for (metric, attainment) in &g.by_metric {
            let label = format!("{} SLO attainment (%):", metric.name().to_uppercase());
            row2(o, &label, attainment * 100.0);
        }
    }
    section(o, "End-to-End Latency");
    dist_rows(o, "E2E Latency", &m.e2e);
    section(o, "Time to First Token");
    dist_rows(o, "TTFT", &m.ttft);
    section(o, "Time per Output Token (excl. 1st token)");
    dist_rows(o, "TPOT", &m.tpot);
    section(o, "Inter-Token Latency");
    dist_rows(o, "ITL", &m.itl);
    row2(o, "Max ITL (ms):", m.itl.max);
}

/// Switchyard's own figures, each section under a title of its own.
fn switchyard_sections(o: &mut String, info: &RunInfo, m: &RunMetrics) {
    section(o, "Switchyard");
    if let Some(topology) = &info.topology {
        row(o, "Topology:", topology);
    }
    row(o, "Model:", &info.model);
    row(o, "Tokenizer:", &info.tokenizer);
    row(o, "Requests sent:", m.num_requests);
    if let Some(cpu) = m.client_cpu_ms_per_request() {
        row(o, "Client thread CPU per request (ms):", format!("{cpu:.4}"));
    }
    if let Some(cpu) = m.process_cpu_ms_per_request() {
        row(o, "Client process CPU per request (ms):", format!("{cpu:.4}"));
    }
    section(o, "From Scheduled Send Time");
    row2(o, "Median TTFT from schedule (ms):", m.ttft_from_scheduled.median);
    row2(o, "P99 TTFT from schedule (ms):", m.ttft_from_scheduled.p99);
    row2(o, "Median E2E from schedule (ms):", m.e2e_from_scheduled.median);
    row2(o, "P99 E2E from schedule (ms):", m.e2e_from_scheduled.p99);
    row2(o, "Mean send lag (ms):", m.send_lag.mean);
    if m.prefix_cache_hit_rate.is_some() || m.instance_requests.is_some() {
        section(o, "Prefix Cache and Routing");
        if let Some(rate) = m.prefix_cache_hit_rate {
            row(o, "Prefix cache hit rate:", format!("{rate:.4}"));
        }
        if let Some(bound) = m.prefix_cache_hit_rate_bound {
            row(o, "Hit rate bound of the workload:", format!("{bound:.4}"));
        }
        if let Some(spread) = m.instance_requests_max_over_mean {
            row(o, "Busiest worker / mean requests:", format!("{spread:.2}"));
        }
    }
    if m.failed > 0 {
        section(o, "Errors");
        row(o, "Failed requests:", m.failed);
        for (kind, n) in &m.error_counts {
            row(o, &format!("  {kind}:"), n);
        }
        if let Some(first) = &m.first_error {
            let first: String = first.chars().take(200).collect();
            let _ = writeln!(o, "First error: {first}");
        }
    }
    if let Some(cost) = &m.cost {
        section(o, "Cost");
        row(o, "GPUs x cost per GPU-hour:", format!("{} x {}", cost.gpus, cost.gpu_cost_per_hour));
        if let Some(v) = cost.per_1m_output_tokens {
            row(o, "Cost per 1M output tokens:", format!("{v:.4}"));
        }
        if let Some(v) = cost.per_request {
            row(o, "Cost per request:", format!("{v:.6}"));
        }
    }
    if let Some(resources) = &m.resources {
        section(o, "Resources (mean / peak)");
        for line in resources.summary_rows() {
            row(o, &line.0, line.1);
        }
    }
}
