//! End-to-end: `switchyard bench --topology agg:1` with the real binary starts a local topology
//! of mocker workers, runs the workload on it, prints bench_serving's summary, appends its
//! JSONL line, and `switchyard bench compare` reads that line back.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Proc, bin};
use switchyard_bench::output::line::{Field, ResultLine};

/// Worker start-up, the run and the shutdown of a debug build on a busy 2-core machine.
const LIMIT: Duration = Duration::from_secs(180);

fn run_to_end(name: &str, args: &[&str], dir: &std::path::Path) -> String {
    let out = dir.join(format!("{name}.out"));
    let child = Command::new(bin())
        .args(args)
        .env("SWITCHYARD_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .unwrap();
    let mut proc = Proc { name: name.to_owned(), child };
    let status = proc.wait_exit(LIMIT);
    let stdout = std::fs::read_to_string(&out).unwrap();
    assert!(status.success(), "{name} failed ({status}):\n{stdout}");
    stdout
}

#[test]
fn bench_runs_a_topology_and_compare_reads_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let results_arg = results.to_str().unwrap();
    let stdout = run_to_end(
        "bench",
        &[
            "bench",
            "--topology",
            "agg:1",
            "--num-prompts",
            "20",
            "--random-input-len",
            "64",
            "--random-output-len",
            "16",
            "--random-range-ratio",
            "1",
            "--max-concurrency",
            "4",
            "--speedup-ratio",
            "50",
            "--output-file",
            results_arg,
            "--gpu-cost-per-hour",
            "2",
        ],
        dir.path(),
    );
    assert!(stdout.contains(" Serving Benchmark Result "), "{stdout}");
    let line = stdout.lines().find(|l| l.starts_with("Successful requests:")).unwrap();
    assert_eq!(line.split_whitespace().last(), Some("20"), "{stdout}");

    // The bench's own reader: the line has a bare `Infinity`, as bench_serving writes it.
    let text = std::fs::read_to_string(&results).unwrap();
    assert!(text.contains(r#""request_rate": Infinity"#), "{text}");
    let line = ResultLine::parse(text.trim()).unwrap();
    let record: Value = line
        .fields
        .into_iter()
        .map(|(key, field)| match field {
            Field::Json(v) => (key, v),
            Field::Float(f) => (key, Value::from(f)),
        })
        .collect::<serde_json::Map<_, _>>()
        .into();
    assert_eq!(record["completed"], 20);
    assert_eq!(record["failed"], 0);
    assert_eq!(record["topology"], "agg:1");
    assert_eq!(record["model"], "switchyard-tiny");
    assert_eq!(record["total_output_tokens"], 20 * 16);
    assert_eq!(record["total_input_tokens"], 20 * 64);
    assert_eq!(record["server_info"]["workers"], 1);
    assert!(record["cost_per_1m_output_tokens"].as_f64().unwrap() > 0.0);
    assert!(record["median_ttft_ms"].as_f64().unwrap() > 0.0);
    // The frontend counts the same prompt tokens as the bench (completions: text as is).
    assert_eq!(record["total_input_tokens_server"], 20 * 64);

    let table = run_to_end("compare", &["bench", "compare", results_arg], dir.path());
    assert!(table.lines().next().unwrap().contains("agg:1"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("completed") && l.ends_with("20")), "{table}");
    let csv = run_to_end("csv", &["bench", "compare", "--csv", results_arg], dir.path());
    assert!(csv.starts_with("label,tag,backend,dataset_name,request_rate,"), "{csv}");
}
