//! The pages render in a real browser: headless Chromium (Debian's `chromium`, installed by
//! `scripts/setup.sh`) loads the report of a sweep, the one-page summary and the outputs page,
//! logs nothing to its console, and draws every plot the page holds (each page's own check
//! counts them). Set `SWITCHYARD_SCREENSHOT_DIR` to keep screenshots of them.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::{Script, ScriptedServer, WAIT};
use switchyard_bench::config::{RequestRate, RunConfig};
use switchyard_bench::dataset::DatasetConfig;
use switchyard_bench::output::{compare, summary_page};
use switchyard_bench::outputs::{self, rubric::Rubric, view};
use switchyard_bench::sweep::{Bench, BenchPlan, Target};
use tokio_util::sync::CancellationToken;

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// What Chromium made of a page: its DOM after scripts ran, and its console lines.
struct Rendered {
    dom: String,
    console: Vec<String>,
}

fn chromium(page: &Path, screenshot: &Path) -> Rendered {
    let url = format!("file://{}", page.display());
    let common = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"];
    let run = |extra: &[String]| {
        Command::new("chromium")
            .args(common)
            .args(["--enable-logging=stderr", "--v=0", "--window-size=1400,2400"])
            .args(extra)
            .arg(&url)
            .output()
            .expect("chromium runs (Debian package `chromium`; scripts/setup.sh installs it)")
    };
    let out = run(&["--dump-dom".to_owned()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let console = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_owned)
        .collect();
    let shot = run(&[format!("--screenshot={}", screenshot.display())]);
    assert!(shot.status.success() && screenshot.exists(), "no screenshot of {url}");
    if let Some(dir) = std::env::var_os("SWITCHYARD_SCREENSHOT_DIR") {
        let name = screenshot.file_name().unwrap();
        std::fs::copy(screenshot, Path::new(&dir).join(name)).unwrap();
    }
    Rendered { dom: String::from_utf8_lossy(&out.stdout).into_owned(), console }
}

fn attribute(dom: &str, name: &str) -> usize {
    let at = dom.find(&format!("{name}=\"")).unwrap_or_else(|| panic!("no {name} in the page"));
    let rest = &dom[at + name.len() + 2..];
    rest[..rest.find('"').unwrap()].parse().unwrap()
}

/// Every plot of the page drawn, nothing on the console.
fn check(page: &Path, expect_plots: usize) {
    let rendered = chromium(page, &page.with_extension("png"));
    assert!(rendered.console.is_empty(), "{}: {:?}", page.display(), rendered.console);
    assert_eq!(attribute(&rendered.dom, "data-plots"), expect_plots, "{}", page.display());
    assert_eq!(attribute(&rendered.dom, "data-plots-drawn"), expect_plots, "{}", page.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_summary_and_outputs_pages_render_in_chromium() {
    let script = Script {
        ttft: Duration::from_millis(5),
        per_token: Duration::from_millis(2),
        fail_every: None,
    };
    let server = ScriptedServer::start(script).await;
    let dir = tempfile::tempdir().unwrap();
    let run = RunConfig::new(&server.url, "vllm".parse().unwrap());
    let dataset = DatasetConfig {
        num_prompts: 24,
        random_input_len: 32,
        random_output_len: 20,
        random_range_ratio: 0.5,
        ..DatasetConfig::default()
    };
    let mut plan = BenchPlan::new(run, dataset);
    plan.request_rates = vec![RequestRate(200.0), RequestRate::INFINITE];
    plan.max_concurrencies = vec![Some(8)];
    plan.sample_interval = Some(Duration::from_millis(50));
    plan.report = Some(dir.path().join("report.html"));
    plan.tag = Some("scripted".into());
    let bench = Bench::prepare(plan, None).unwrap();
    let (target, stop) = (Target::url(&server.url), CancellationToken::new());
    let results = tokio::time::timeout(WAIT, bench.run_target(&target, &stop, |_| {}))
        .await
        .unwrap()
        .unwrap();
    bench.finish(&results).unwrap();
    // 3 CDFs, 2 throughput charts, 2 over time; per run CPU, RSS, host CPU, host memory.
    check(&dir.path().join("report.html"), 7 + 2 * 4);

    let runs = compare::read_files(&[data("run_a.jsonl"), data("run_b.jsonl")]).unwrap();
    let rubric = Rubric::load(&data("rubric.yaml")).unwrap();
    let summary = dir.path().join("summary.html");
    std::fs::write(&summary, summary_page::html(&runs, Some(&rubric)).unwrap()).unwrap();
    check(&summary, 8);
    let page = dir.path().join("outputs.html");
    std::fs::write(&page, view::html(&outputs::of_lines(&runs).unwrap(), Some(&rubric))).unwrap();
    check(&page, 0);
}
