//! What is made of result files after the runs: the outputs side by side with rubric scores and
//! the settings check, the one-page summary with the best run of each row marked, and CSV that
//! Python's `csv` module reads however large the line's per-request lists are.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use switchyard_bench::output::compare::{self, Labeled};
use switchyard_bench::output::line::ResultLine;
use switchyard_bench::output::summary_page;
use switchyard_bench::outputs::{self, rubric::Rubric, view};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

fn runs() -> Vec<Labeled> {
    compare::read_files(&[data("run_a.jsonl"), data("run_b.jsonl")]).unwrap()
}

#[test]
fn outputs_are_laid_side_by_side_and_scored_with_the_rubric() {
    let runs = runs();
    let saved = outputs::of_lines(&runs).unwrap();
    let rubric = Rubric::load(&data("rubric.yaml")).unwrap();
    // Weights 2 (JSON) + 1 + 1 + 1 are automatic; "helpful" is left to a person.
    let a: Vec<f64> = saved[0].outputs.iter().map(|o| rubric.score(o).unwrap()).collect();
    assert_eq!(a, [0.8, 0.6, 1.0]);
    let b: Vec<f64> = saved[1].outputs.iter().map(|o| rubric.score(o).unwrap()).collect();
    assert_eq!(b, [0.0, 0.4, 0.4]);
    assert!((rubric.run_score(&saved[0].outputs).unwrap() - 0.8).abs() < 1e-12);

    // Run b was sampled at temperature 0.7, run a greedily: flagged.
    let diffs = outputs::settings_differences(&saved);
    assert_eq!(diffs.len(), 1, "{diffs:?}");
    assert_eq!(diffs[0].0, "temperature");
    assert_eq!(diffs[0].1, ["0.0", "0.7"]);

    let md = view::markdown(&saved, Some(&rubric));
    assert!(md.contains("| temperature ⚠ | 0.0 | 0.7 |"), "{md}");
    assert!(md.contains("| **automatic score** | | **80%** | **27%** |"), "{md}");
    assert!(md.contains("### Prompt 3"), "{md}");
    // Each prompt's table has both runs, the checks, the score, and the judgment column empty.
    let row = md.lines().find(|l| l.starts_with("| model-b | [failed: timeout]")).unwrap();
    assert!(row.ends_with("| ✗ | ✓ | ✓ | ✗ |  | 40% |"), "{row}");
    let html = view::html(&saved, Some(&rubric));
    assert!(html.contains("class=\"warn\"") && html.contains("helpful (judgment"), "{html}");
    assert_eq!(html.matches("<h3>Prompt").count(), 3);

    // A line without saved outputs says how to get them.
    let bare = Labeled { label: "x".into(), line: ResultLine::parse(r#"{"tag": "x"}"#).unwrap() };
    let err = outputs::of_lines(&[bare]).unwrap_err().to_string();
    assert!(err.contains("--save-outputs"), "{err}");
}

#[test]
fn the_summary_page_marks_the_best_run_of_each_row() {
    let runs = runs();
    let rubric = Rubric::load(&data("rubric.yaml")).unwrap();
    let md = summary_page::markdown(&runs, Some(&rubric));
    let row = |name: &str| md.lines().find(|l| l.starts_with(&format!("| {name} |"))).unwrap();
    assert_eq!(row("TTFT p50 (ms)"), "| TTFT p50 (ms) | **★ 40.0** | 55.0 | model-a |");
    assert_eq!(row("output tokens/s"), "| output tokens/s | 310.0 | **★ 420.0** | model-b |");
    assert_eq!(
        row("cost / 1M output tokens"),
        "| cost / 1M output tokens | 1.250 | **★ 0.950** | model-b |"
    );
    assert_eq!(row("failure rate"), "| failure rate | **★ 0.000** | 0.333 | model-a |");
    assert_eq!(
        row("peak process CPU (% of a core)"),
        "| peak process CPU (% of a core) | **★ 80.0** | 120.0 | model-a |"
    );
    assert_eq!(row("rubric score"), "| rubric score | **★ 0.800** | 0.267 | model-a |");
    assert!(md.contains("different settings: temperature"), "{md}");
    let page = summary_page::html(&runs, Some(&rubric)).unwrap();
    // TTFT p50 and p95, ITL p95, E2E p95, throughput, cost, peak CPU, rubric score.
    assert_eq!(page.matches("<figure class=\"plot\"").count(), 8);
}

#[test]
fn csv_of_a_line_with_large_lists_opens_with_pythons_csv_module() {
    // A line as --output-details writes it, its per-request lists far over the 128 KiB a
    // Python csv field may hold.
    let texts: Vec<String> = (0..400).map(|i| format!("output {i} ").repeat(100)).collect();
    let itls: Vec<Vec<f64>> = (0..400).map(|_| vec![0.0125; 200]).collect();
    let text = serde_json::json!({
        "tag": "details", "backend": "vllm", "completed": 400, "median_ttft_ms": 12.5,
        "error_counts": {"http_503": 2}, "server_info": {"models": [{"id": "m"}], "version": "1"},
        "generated_texts": texts, "itls": itls, "outputs": [{"prompt": "p", "output": "o"}],
    })
    .to_string();
    let run = Labeled { label: "details".into(), line: ResultLine::parse(&text).unwrap() };
    let csv = compare::csv(std::slice::from_ref(&run));
    assert!(csv.len() < 4096, "{} bytes", csv.len());
    assert_eq!(compare::csv_left_out(&[run]), ["generated_texts", "itls", "outputs"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("runs.csv");
    std::fs::write(&path, &csv).unwrap();
    let script = "import csv, sys\n\
        rows = list(csv.DictReader(open(sys.argv[1], newline='')))\n\
        assert len(rows) == 1, rows\n\
        r = rows[0]\n\
        assert r['label'] == 'details' and r['completed'] == '400', r\n\
        assert r['error_counts.http_503'] == '2' and r['server_info.version'] == '1', r\n\
        assert 'itls' not in r and 'generated_texts' not in r, list(r)\n\
        print(len(r))\n";
    let out = std::process::Command::new("python3").arg("-c").arg(script).arg(&path).output();
    let out = out.expect("python3 runs (Debian's python3 package)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "7");
}
