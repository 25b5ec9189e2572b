//! End-to-end: `switchyard bench --topology agg:2` with the real binary starts a local topology
//! (the frontend and each mocker worker a process of its own, their logs in files), runs the
//! workload on it while sampling every process, prints bench_serving's summary, appends its
//! JSONL line, and `switchyard bench compare` reads that line back. Against a server whose
//! tokenizer cannot be found, the bench says so before it runs.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use support::{Proc, bin, spawn, url_in, wait_for_line};
use switchyard_bench::output::line::{Field, ResultLine};

/// Worker start-up, the run and the shutdown of a debug build on a busy 2-core machine.
const LIMIT: Duration = Duration::from_secs(180);

/// Runs `switchyard ARGS` to its end; its stdout and stderr.
fn run_to_end(name: &str, args: &[&str], dir: &std::path::Path) -> (String, String) {
    let (out, err) = (dir.join(format!("{name}.out")), dir.join(format!("{name}.err")));
    let child = Command::new(bin())
        .args(args)
        .env("SWITCHYARD_LOG", "info")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let mut proc = Proc { name: name.to_owned(), child };
    let status = proc.wait_exit(LIMIT);
    let stdout = std::fs::read_to_string(&out).unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(status.success(), "{name} failed ({status}):\n{stdout}\n{stderr}");
    (stdout, stderr)
}

#[test]
fn bench_runs_a_topology_and_compare_reads_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let results = dir.path().join("results.jsonl");
    let results_arg = results.to_str().unwrap();
    let logs = dir.path().join("logs");
    let (stdout, _) = run_to_end(
        "bench",
        &[
            "bench",
            "--topology",
            "agg:2",
            "--log-dir",
            logs.to_str().unwrap(),
            "--sample-interval-ms",
            "100",
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
    // The children log at INFO, into files: nothing of theirs reaches the summary.
    assert!(!stdout.contains("INFO"), "{stdout}");
    for name in ["frontend", "worker-0", "worker-1"] {
        let log = std::fs::read_to_string(logs.join("agg-2").join(format!("{name}.log"))).unwrap();
        assert!(log.contains("INFO"), "{name}: {log}");
    }
    assert!(stdout.contains(&format!("logs in {}", logs.join("agg-2").display())), "{stdout}");

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
    assert_eq!(record["topology"], "agg:2");
    assert_eq!(record["model"], "switchyard-tiny");
    assert_eq!(record["total_output_tokens"], 20 * 16);
    assert_eq!(record["total_input_tokens"], 20 * 64);
    assert_eq!(record["server_info"]["workers"], 2);
    // Every process of the topology, and the client, was sampled.
    let processes = record["resources"]["processes"].as_object().unwrap();
    let mut names: Vec<&str> = processes.keys().map(String::as_str).collect();
    names.sort_unstable();
    assert_eq!(names, ["bench client", "frontend", "worker-0", "worker-1"], "{processes:?}");
    for (name, p) in processes {
        assert!(p["rss_mb_peak"].as_f64().unwrap() > 1.0, "{name}: {p}");
        assert!(p["cpu_pct_mean"].as_f64().is_some(), "{name}: {p}");
        assert!(p.get("note").is_none(), "{name}: {p}");
    }
    assert!(record["resources"]["host"]["cpu_pct_peak"].as_f64().is_some());
    assert!(record["client_process_cpu_ms_per_request"].as_f64().unwrap() > 0.0);
    assert!(record["cost_per_1m_output_tokens"].as_f64().unwrap() > 0.0);
    assert!(record["median_ttft_ms"].as_f64().unwrap() > 0.0);
    // The frontend counts the same prompt tokens as the bench (completions: text as is).
    assert_eq!(record["total_input_tokens_server"], 20 * 64);

    let (table, _) = run_to_end("compare", &["bench", "compare", results_arg], dir.path());
    assert!(table.lines().next().unwrap().contains("agg:2"), "{table}");
    assert!(table.lines().any(|l| l.starts_with("completed") && l.ends_with("20")), "{table}");
    let (csv, _) = run_to_end("csv", &["bench", "compare", "--csv", results_arg], dir.path());
    assert!(csv.starts_with("label,tag,backend,dataset_name,request_rate,"), "{csv}");
    assert!(csv.contains(",resources.processes.worker-1.rss_mb_peak,"), "{csv}");
}

#[test]
fn a_server_tokenizer_that_cannot_be_found_is_warned_about_before_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = spawn(
        "up",
        &[
            "up",
            "--workers",
            "1",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            "0",
            "--speedup-ratio",
            "50",
        ],
    );
    let url = url_in(&wait_for_line(&mut up, "switchyard is up"));
    // --model names a tokenizer nowhere on this machine; requests go to the served model.
    let args = [
        "bench",
        "--base-url",
        &url,
        "--model",
        "org/not-cached",
        "--served-model-name",
        "switchyard-tiny",
        "--num-prompts",
        "4",
        "--random-input-len",
        "16",
        "--random-output-len",
        "4",
        "--random-range-ratio",
        "1",
    ];
    let (stdout, stderr) = run_to_end("bench", &args, dir.path());
    assert!(stderr.contains("WARNING: the server's tokenizer could not be loaded"), "{stderr}");
    assert!(stderr.contains("\"org/not-cached\" (the model id)"), "{stderr}");
    assert!(stdout.lines().any(|l| l.starts_with("Tokenizer:") && l.contains("builtin:tiny")));
    // Without --model the frontend's /v1/models names the tokenizer: no warning.
    let args = [
        "bench",
        "--base-url",
        &url,
        "--num-prompts",
        "4",
        "--random-input-len",
        "16",
        "--random-output-len",
        "4",
    ];
    let (_, stderr) = run_to_end("bench2", &args, dir.path());
    assert!(!stderr.contains("WARNING"), "{stderr}");
    // Stopped the way a user stops it, so its workers leave with it.
    up.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(up.wait_exit(LIMIT).success());
}
