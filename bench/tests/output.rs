//! What a run leaves behind: the JSONL line has exactly bench_serving's keys in its order (and
//! writes an infinite rate as `Infinity`), `compare` reads bench_serving's own lines, sweeps
//! give one line per point, and the report is one page with its charts.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use support::{Script, ScriptedServer, WAIT};
use switchyard_bench::config::{Goodput, RequestRate, RunConfig};
use switchyard_bench::dataset::DatasetConfig;
use switchyard_bench::output::compare;
use switchyard_bench::output::line::{Field, ResultLine};
use switchyard_bench::output::result::BENCH_SERVING_KEYS;
use switchyard_bench::sweep::{Bench, BenchPlan, Target};
use tokio_util::sync::CancellationToken;

/// A line as sglang.bench_serving writes it with `--request-rate inf` (Python's json.dumps).
const BENCH_SERVING_LINE: &str = r#"{"tag": null, "backend": "sglang-oai", "dataset_name": "random", "request_rate": Infinity, "max_concurrency": 512, "sharegpt_output_len": null, "random_input_len": 1024, "random_output_len": 1024, "random_range_ratio": 0.0, "server_info": null, "duration": 61.87, "completed": 1000, "total_input_tokens": 512345, "total_input_text_tokens": 512345, "total_input_vision_tokens": 0, "total_output_tokens": 510000, "total_output_tokens_retokenized": 509876, "request_throughput": 16.16, "input_throughput": 8280.1, "output_throughput": 8242.9, "total_throughput": 16523.0, "mean_e2e_latency_ms": 30123.4, "median_e2e_latency_ms": 29876.5, "std_e2e_latency_ms": 1234.5, "p90_e2e_latency_ms": 31000.0, "p95_e2e_latency_ms": 32000.0, "p99_e2e_latency_ms": 33000.0, "mean_ttft_ms": 1500.25, "median_ttft_ms": 1400.5, "std_ttft_ms": 300.0, "p90_ttft_ms": 1900.0, "p95_ttft_ms": 2000.0, "p99_ttft_ms": 2100.0, "mean_tpot_ms": 28.1, "median_tpot_ms": 28.0, "std_tpot_ms": 1.2, "p90_tpot_ms": 29.5, "p95_tpot_ms": 30.0, "p99_tpot_ms": 31.0, "mean_itl_ms": 28.1, "median_itl_ms": 27.0, "std_itl_ms": 5.0, "p90_itl_ms": 33.0, "p95_itl_ms": 35.0, "p99_itl_ms": 60.0, "concurrency": 487.2, "accept_length": null, "max_output_tokens_per_s": 9500.0, "max_concurrent_requests": 512}"#;

fn plan(url: &str, dir: &std::path::Path) -> BenchPlan {
    let mut run = RunConfig::new(url, "vllm".parse().unwrap());
    run.goodput = Goodput::parse(&["ttft:1000", "e2el:60000"]).unwrap();
    let dataset = DatasetConfig {
        num_prompts: 6,
        random_input_len: 16,
        random_output_len: 5,
        random_range_ratio: 1.0,
        ..DatasetConfig::default()
    };
    let mut plan = BenchPlan::new(run, dataset);
    plan.output_file = Some(dir.join("out.jsonl"));
    plan.report = Some(dir.join("report.html"));
    plan.gpu_cost_per_hour = Some(2.0);
    plan
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_jsonl_line_has_bench_servings_keys_in_order_and_infinity() {
    let script = Script {
        ttft: Duration::from_millis(2),
        per_token: Duration::from_millis(1),
        fail_every: None,
    };
    let server = ScriptedServer::start(script).await;
    let dir = tempfile::tempdir().unwrap();
    let mut plan = plan(&server.url, dir.path());
    plan.output_details = true;
    let bench = Bench::prepare(plan, None).unwrap();
    let (target, stop, mut seen) = (Target::url(&server.url), CancellationToken::new(), 0);
    let run = bench.run_target(&target, &stop, |_| seen += 1);
    let results = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!((results.len(), seen), (1, 1));

    let text = std::fs::read_to_string(dir.path().join("out.jsonl")).unwrap();
    assert_eq!(text.lines().count(), 1);
    assert!(text.contains(r#""request_rate": Infinity, "#), "{text}");
    let line = ResultLine::parse(text.trim()).unwrap();
    let keys: Vec<&str> = line.keys().collect();
    assert_eq!(keys[..BENCH_SERVING_KEYS.len()], *BENCH_SERVING_KEYS);
    // The goodput keys follow bench_serving's, in its GoodputMetrics order, then Switchyard's.
    let n = BENCH_SERVING_KEYS.len();
    assert_eq!(
        keys[n..n + 4],
        ["goodput_slos_ms", "request_goodput", "slo_attainment", "slo_attainment_by_metric"]
    );
    assert_eq!(
        line.get("goodput_slos_ms").unwrap(),
        &Field::Json(serde_json::json!({"ttft": 1000.0, "e2el": 60000.0}))
    );
    assert_eq!(line.get("slo_attainment").and_then(Field::as_f64), Some(1.0));
    let Some(Field::Json(by)) = line.get("slo_attainment_by_metric") else { panic!() };
    assert_eq!((by["ttft"].as_f64(), by["e2el"].as_f64()), (Some(1.0), Some(1.0)));
    for own in [
        "error_counts",
        "p99_ttft_from_scheduled_ms",
        "client_cpu_ms_per_request",
        "cost_per_1m_output_tokens",
        "itls",
        "chunk_tokens",
    ] {
        assert!(keys.contains(&own), "{own} missing from {keys:?}");
    }
    let f = |k: &str| line.get(k).and_then(Field::as_f64).unwrap();
    assert_eq!(f("completed"), 6.0);
    assert_eq!(f("total_output_tokens"), 30.0);
    assert_eq!(f("total_input_tokens"), 6.0 * 16.0);
    assert!(f("request_rate").is_infinite());
    assert_eq!(line.get("model"), Some(&Field::Json("scripted".into())));
    // One point: no comparison table, but the report.
    assert_eq!(bench.finish(&results).unwrap(), "");
    assert!(dir.path().join("report.html").exists());
}

#[test]
fn compare_reads_bench_servings_line_beside_ours() {
    let dir = tempfile::tempdir().unwrap();
    let theirs = dir.path().join("sglang.jsonl");
    std::fs::write(&theirs, format!("{BENCH_SERVING_LINE}\n\n")).unwrap();
    let runs = compare::read_files(&[&theirs]).unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0].label.ends_with("sglang.jsonl:1"), "{}", runs[0].label);
    let keys: Vec<&str> = runs[0].line.keys().collect();
    assert_eq!(keys, BENCH_SERVING_KEYS);
    assert!(runs[0].line.get("request_rate").unwrap().as_f64().unwrap().is_infinite());
    let table = compare::table(&runs);
    let rate = table.lines().find(|l| l.starts_with("request rate")).unwrap();
    assert!(rate.trim_end().ends_with("inf"), "{table}");
    assert!(table.contains("1400.50"), "{table}");
    let csv = compare::csv(&runs);
    assert!(csv.lines().nth(1).unwrap().contains(",inf,512,"), "{csv}");
    // Written back, the line is what bench_serving wrote.
    assert_eq!(runs[0].line.to_json(), BENCH_SERVING_LINE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_writes_one_line_per_point_and_a_report_with_its_charts() {
    let script = Script {
        ttft: Duration::from_millis(2),
        per_token: Duration::from_millis(1),
        fail_every: None,
    };
    let server = ScriptedServer::start(script).await;
    let dir = tempfile::tempdir().unwrap();
    let mut plan = plan(&server.url, dir.path());
    plan.request_rates = vec![RequestRate(400.0), RequestRate::INFINITE];
    plan.max_concurrencies = vec![Some(1), Some(4)];
    plan.tag = Some("sweep".into());
    let bench = Bench::prepare(plan, None).unwrap();
    let (target, stop) = (Target::url(&server.url), CancellationToken::new());
    let run = bench.run_target(&target, &stop, |_| {});
    let results = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    assert_eq!(results.len(), 4);
    let table = bench.finish(&results).unwrap();
    assert!(table.lines().next().unwrap().contains("sweep rate=inf conc=4"), "{table}");

    let runs = compare::read_files(&[dir.path().join("out.jsonl")]).unwrap();
    let labels: Vec<&str> = runs.iter().map(|r| r.label.as_str()).collect();
    assert_eq!(
        labels,
        [
            "sweep rate=400 conc=1",
            "sweep rate=400 conc=4",
            "sweep rate=inf conc=1",
            "sweep rate=inf conc=4"
        ]
    );
    let page = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    // 3 CDFs, 2 throughput charts, 2 over time, and per run 4 resource charts.
    assert_eq!(page.matches("<svg").count(), 7 + 4 * 4, "{page}");
    assert!(page.contains("fraction of token gaps"));
    assert!(page.contains("sweep rate=inf conc=4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_tokenizer_cannot_be_found_gets_the_fallback_warning() {
    let server = ScriptedServer::start(Script::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut plan = plan(&server.url, dir.path());
    // No --tokenizer: the server is asked; it names no root, and "scripted" is no model here.
    plan.tokenizer = None;
    let facts =
        tokio::time::timeout(WAIT, switchyard_bench::sweep::probe_server(&plan, &server.url))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(facts.first_model().as_deref(), Some("scripted"));
    let bench = Bench::prepare(plan, Some(facts)).unwrap();
    let warning = bench.tokenizer_warning().unwrap();
    assert!(warning.starts_with("WARNING:"), "{warning}");
    assert!(warning.contains("\"scripted\" (the model id)"), "{warning}");
    assert!(warning.contains("--tokenizer"), "{warning}");
}
