//! The printed summary against sglang.bench_serving's own: `data/bench_serving_summary.txt` is
//! what `python -m sglang.bench_serving` (sglang 0.5.23) printed for a run with `--goodput
//! ttft:1000 tpot:100`. Our summary opens with the same rows — labels, order, section rules —
//! and none of the rows that follow repeats one of its labels.

#![allow(clippy::unwrap_used)]

use switchyard_bench::config::{Goodput, RequestRate};
use switchyard_bench::metrics::{GoodputMetrics, RunMetrics};
use switchyard_bench::output::result::RunInfo;
use switchyard_bench::output::summary::summary;

/// The labels of a summary's rows (the text left of the 40-column value), section rules as
/// they are, from the result header to the closing rule.
fn labels(text: &str) -> Vec<String> {
    let start = text.lines().position(|l| l.contains(" Serving Benchmark Result ")).unwrap();
    let mut out = Vec::new();
    for line in text.lines().skip(start) {
        if line.starts_with("==========") && !out.is_empty() {
            break;
        }
        if line.starts_with('=') || line.starts_with('-') {
            out.push(line.to_owned());
        } else if !line.trim().is_empty() {
            let label: String = line.chars().take(40).collect();
            out.push(label.trim_end().to_owned());
        }
    }
    out
}

fn ours() -> String {
    let info = RunInfo {
        tag: None,
        backend: "sglang-oai".into(),
        dataset_name: "random".into(),
        request_rate: RequestRate::INFINITE,
        max_concurrency: Some(16),
        sharegpt_output_len: None,
        random_input_len: 128,
        random_output_len: 16,
        random_range_ratio: 1.0,
        server_info: serde_json::Value::Null,
        model: "switchyard-tiny".into(),
        base_url: "http://127.0.0.1:8000".into(),
        topology: Some("agg:2".into()),
        burstiness: 1.0,
        seed: 1,
        tokenizer: "builtin:tiny".into(),
        settings: serde_json::Value::Null,
    };
    let slos = Goodput::parse(&["ttft:1000", "tpot:100"]).unwrap().unwrap();
    let by_metric = slos.slos.iter().map(|(m, _)| (*m, 1.0)).collect();
    let m = RunMetrics {
        num_requests: 10,
        completed: 9,
        failed: 1,
        goodput: Some(GoodputMetrics {
            slos,
            request_goodput: 3.0,
            slo_attainment: 0.9,
            by_metric,
        }),
        error_counts: [("http_503".to_owned(), 1)].into(),
        client_cpu: Some(std::time::Duration::from_millis(3)),
        ..RunMetrics::default()
    };
    summary(&info, &m)
}

#[test]
fn the_summary_opens_with_bench_servings_rows_in_its_order() {
    let theirs = labels(include_str!("data/bench_serving_summary.txt"));
    assert!(theirs.len() > 30, "{theirs:?}");
    let ours = labels(&ours());
    assert_eq!(ours[..theirs.len()], theirs[..], "\nours:   {ours:#?}\ntheirs: {theirs:#?}");
    // Switchyard's own rows follow, each under a label bench_serving does not print.
    let own = &ours[theirs.len()..];
    assert!(own.iter().any(|l| l == "Topology:"), "{own:?}");
    for label in own {
        assert!(!theirs.contains(label), "{label:?} repeats a bench_serving label");
    }
}
