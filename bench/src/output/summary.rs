//! The terminal summary of a run, laid out as sglang.bench_serving prints it, followed by
//! Switchyard's own sections (latency from the scheduled time, errors, cost, client CPU).

use std::fmt::Write as _;

use super::result::RunInfo;
use crate::metrics::RunMetrics;

fn row(out: &mut String, label: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{label:<40} {value:<10}");
}

fn row2(out: &mut String, label: &str, value: f64) {
    let _ = writeln!(out, "{label:<40} {value:<10.2}");
}

fn section(out: &mut String, title: &str) {
    let _ = writeln!(out, "{title:-^50}");
}

/// The summary text (ends with a newline).
pub fn summary(info: &RunInfo, m: &RunMetrics) -> String {
    let mut o = String::with_capacity(2048);
    let _ = writeln!(o, "\n{:=^50}", " Serving Benchmark Result ");
    row(&mut o, "Backend:", &info.backend);
    if let Some(topology) = &info.topology {
        row(&mut o, "Topology:", topology);
    }
    row(&mut o, "Traffic request rate:", info.request_rate);
    let concurrency = info.max_concurrency.map_or("not set".to_owned(), |c| c.to_string());
    row(&mut o, "Max request concurrency:", concurrency);
    row(&mut o, "Successful requests:", m.completed);
    row2(&mut o, "Benchmark duration (s):", m.duration_s);
    row(&mut o, "Total input tokens:", m.total_input);
    row(&mut o, "Total input text tokens:", m.total_input);
    row(&mut o, "Total input vision tokens:", 0);
    row(&mut o, "Total generated tokens:", m.total_output);
    row(&mut o, "Total generated tokens (retokenized):", m.total_output_retokenized);
    row2(&mut o, "Request throughput (req/s):", m.request_throughput);
    row2(&mut o, "Input token throughput (tok/s):", m.input_throughput);
    row2(&mut o, "Output token throughput (tok/s):", m.output_throughput);
    row2(&mut o, "Peak output token throughput (tok/s):", m.max_output_tokens_per_s);
    row(&mut o, "Peak concurrent requests:", m.max_concurrent_requests);
    row2(&mut o, "Total token throughput (tok/s):", m.total_throughput);
    row2(&mut o, "Concurrency:", m.concurrency);
    if let Some(goodput) = m.request_goodput {
        row2(&mut o, "Request goodput (req/s):", goodput);
    }
    section(&mut o, "End-to-End Latency");
    row2(&mut o, "Mean E2E Latency (ms):", m.e2e.mean);
    row2(&mut o, "Median E2E Latency (ms):", m.e2e.median);
    row2(&mut o, "P90 E2E Latency (ms):", m.e2e.p90);
    row2(&mut o, "P99 E2E Latency (ms):", m.e2e.p99);
    section(&mut o, "Time to First Token");
    row2(&mut o, "Mean TTFT (ms):", m.ttft.mean);
    row2(&mut o, "Median TTFT (ms):", m.ttft.median);
    row2(&mut o, "P99 TTFT (ms):", m.ttft.p99);
    section(&mut o, "Time per Output Token (excl. 1st token)");
    row2(&mut o, "Mean TPOT (ms):", m.tpot.mean);
    row2(&mut o, "Median TPOT (ms):", m.tpot.median);
    row2(&mut o, "P99 TPOT (ms):", m.tpot.p99);
    section(&mut o, "Inter-Token Latency");
    row2(&mut o, "Mean ITL (ms):", m.itl.mean);
    row2(&mut o, "Median ITL (ms):", m.itl.median);
    row2(&mut o, "P95 ITL (ms):", m.itl.p95);
    row2(&mut o, "P99 ITL (ms):", m.itl.p99);
    row2(&mut o, "Max ITL (ms):", m.itl.max);
    section(&mut o, "From Scheduled Send Time");
    row2(&mut o, "Median TTFT (ms):", m.ttft_from_scheduled.median);
    row2(&mut o, "P99 TTFT (ms):", m.ttft_from_scheduled.p99);
    row2(&mut o, "Median E2E Latency (ms):", m.e2e_from_scheduled.median);
    row2(&mut o, "P99 E2E Latency (ms):", m.e2e_from_scheduled.p99);
    row2(&mut o, "Mean send lag (ms):", m.send_lag.mean);
    if m.prefix_cache_hit_rate.is_some() || m.instance_requests.is_some() {
        section(&mut o, "Prefix Cache and Routing");
        if let Some(rate) = m.prefix_cache_hit_rate {
            row(&mut o, "Prefix cache hit rate:", format!("{rate:.4}"));
        }
        if let Some(bound) = m.prefix_cache_hit_rate_bound {
            row(&mut o, "Hit rate bound of the workload:", format!("{bound:.4}"));
        }
        if let Some(spread) = m.instance_requests_max_over_mean {
            row(&mut o, "Busiest worker / mean requests:", format!("{spread:.2}"));
        }
    }
    if m.failed > 0 {
        section(&mut o, "Errors");
        row(&mut o, "Failed requests:", m.failed);
        for (kind, n) in &m.error_counts {
            row(&mut o, &format!("  {kind}:"), n);
        }
        if let Some(first) = &m.first_error {
            let first: String = first.chars().take(200).collect();
            let _ = writeln!(o, "First error: {first}");
        }
    }
    if let Some(cost) = &m.cost {
        section(&mut o, "Cost");
        row(
            &mut o,
            "GPUs x cost per GPU-hour:",
            format!("{} x {}", cost.gpus, cost.gpu_cost_per_hour),
        );
        if let Some(v) = cost.per_1m_output_tokens {
            row(&mut o, "Cost per 1M output tokens:", format!("{v:.4}"));
        }
        if let Some(v) = cost.per_request {
            row(&mut o, "Cost per request:", format!("{v:.6}"));
        }
    }
    if let Some(cpu) = m.client_cpu_ms_per_request() {
        row(&mut o, "Client CPU per request (ms):", format!("{cpu:.4}"));
    }
    let _ = writeln!(o, "{}", "=".repeat(50));
    o
}
