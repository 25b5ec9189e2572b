//! `switchyard bench compare --summary page.html` (and `--markdown page.md`): the one-page
//! comparison of runs — per run p50/p95 TTFT, ITL and E2E, throughput, failure rate, cost per
//! 1M output tokens, peak resource use and the rubric score where outputs were saved, the best
//! run of each row marked, and a bar chart per headline figure.

use std::fmt::Write as _;

use serde_json::Value;

use super::chart::{self, PAGE_TAIL, escape, figure, page_head};
use super::compare::Labeled;
use super::line::Field;
use crate::Error;
use crate::outputs::{self, rubric::Rubric};
use crate::resources::summary::peak_of;

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Better {
    Lower,
    Higher,
}

/// One row of the page: its name, unit, which way is better, whether it gets a chart.
struct Row {
    name: &'static str,
    better: Better,
    chart: bool,
    value: fn(&Labeled, Option<&Rubric>) -> Option<f64>,
}

fn key(run: &Labeled, key: &str) -> Option<f64> {
    run.line.get(key).and_then(Field::as_f64).filter(|v| v.is_finite())
}

fn resources(run: &Labeled) -> Option<&Value> {
    match run.line.get("resources") {
        Some(Field::Json(v)) => Some(v),
        _ => None,
    }
}

/// The failure rate: failed over sent (bench_serving's lines have neither; then none).
fn failure_rate(run: &Labeled) -> Option<f64> {
    if let Some(rate) = key(run, "failure_rate") {
        return Some(rate);
    }
    let (done, failed) = (key(run, "completed")?, key(run, "failed")?);
    (done + failed > 0.0).then(|| failed / (done + failed))
}

fn rubric_score(run: &Labeled, rubric: Option<&Rubric>) -> Option<f64> {
    rubric?.run_score(&outputs::of_line(run)?.outputs)
}

const ROWS: &[Row] = &[
    Row {
        name: "TTFT p50 (ms)",
        better: Better::Lower,
        chart: true,
        value: |r, _| key(r, "median_ttft_ms"),
    },
    Row {
        name: "TTFT p95 (ms)",
        better: Better::Lower,
        chart: true,
        value: |r, _| key(r, "p95_ttft_ms"),
    },
    Row {
        name: "ITL p50 (ms)",
        better: Better::Lower,
        chart: false,
        value: |r, _| key(r, "median_itl_ms"),
    },
    Row {
        name: "ITL p95 (ms)",
        better: Better::Lower,
        chart: true,
        value: |r, _| key(r, "p95_itl_ms"),
    },
    Row {
        name: "E2E p50 (ms)",
        better: Better::Lower,
        chart: false,
        value: |r, _| key(r, "median_e2e_latency_ms"),
    },
    Row {
        name: "E2E p95 (ms)",
        better: Better::Lower,
        chart: true,
        value: |r, _| key(r, "p95_e2e_latency_ms"),
    },
    Row {
        name: "output tokens/s",
        better: Better::Higher,
        chart: true,
        value: |r, _| key(r, "output_throughput"),
    },
    Row {
        name: "requests/s",
        better: Better::Higher,
        chart: false,
        value: |r, _| key(r, "request_throughput"),
    },
    Row {
        name: "failure rate",
        better: Better::Lower,
        chart: false,
        value: |r, _| failure_rate(r),
    },
    Row {
        name: "cost / 1M output tokens",
        better: Better::Lower,
        chart: true,
        value: |r, _| key(r, "cost_per_1m_output_tokens"),
    },
    Row {
        name: "peak process CPU (% of a core)",
        better: Better::Lower,
        chart: true,
        value: |r, _| peak_of(resources(r)?, "processes", "cpu_pct_peak"),
    },
    Row {
        name: "peak process RSS (MB)",
        better: Better::Lower,
        chart: false,
        value: |r, _| peak_of(resources(r)?, "processes", "rss_mb_peak"),
    },
    Row {
        name: "peak host CPU (%)",
        better: Better::Lower,
        chart: false,
        value: |r, _| peak_of(resources(r)?, "host", "cpu_pct_peak"),
    },
    Row {
        name: "peak GPU utilization (%)",
        better: Better::Lower,
        chart: false,
        value: |r, _| peak_of(resources(r)?, "gpus", "util_pct_peak"),
    },
    Row {
        name: "peak GPU memory (MB)",
        better: Better::Lower,
        chart: false,
        value: |r, _| peak_of(resources(r)?, "gpus", "mem_used_mb_peak"),
    },
    Row { name: "rubric score", better: Better::Higher, chart: true, value: rubric_score },
];

/// The index of the best value (ties: the first), when at least two runs have one.
fn best(values: &[Option<f64>], better: Better) -> Option<usize> {
    let present: Vec<(usize, f64)> =
        values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (i, v))).collect();
    if present.len() < 2 {
        return None;
    }
    let pick = |a: &(usize, f64), b: &(usize, f64)| match better {
        Better::Lower => a.1.total_cmp(&b.1),
        Better::Higher => b.1.total_cmp(&a.1),
    };
    let (i, v) = *present.iter().min_by(|a, b| pick(a, b))?;
    // A tie has no winner.
    (present.iter().filter(|(_, w)| *w == v).count() == 1).then_some(i)
}

/// A row of the page with every run's value and the best run.
type Filled = (&'static Row, Vec<Option<f64>>, Option<usize>);

/// The rows that at least one run has, each with its values and best run.
fn table(runs: &[Labeled], rubric: Option<&Rubric>) -> Vec<Filled> {
    ROWS.iter()
        .filter_map(|row| {
            let values: Vec<Option<f64>> = runs.iter().map(|r| (row.value)(r, rubric)).collect();
            values.iter().any(Option::is_some).then(|| {
                let winner = best(&values, row.better);
                (row, values, winner)
            })
        })
        .collect()
}

fn show(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), chart::short)
}

/// Sampling settings the runs disagree on, as a warning line.
fn settings_warning(runs: &[Labeled]) -> Option<String> {
    let with: Vec<outputs::RunOutputs> = runs
        .iter()
        .map(|r| outputs::RunOutputs {
            label: r.label.clone(),
            settings: match r.line.get("settings") {
                Some(Field::Json(v)) => v.clone(),
                _ => Value::Null,
            },
            outputs: Vec::new(),
        })
        .collect();
    let diffs = outputs::settings_differences(&with);
    (!diffs.is_empty()).then(|| {
        let keys: Vec<&str> = diffs.iter().map(|(k, _)| k.as_str()).collect();
        format!("These runs were sent with different settings: {}.", keys.join(", "))
    })
}

/// The HTML page.
pub fn html(runs: &[Labeled], rubric: Option<&Rubric>) -> Result<String, Error> {
    let rows = table(runs, rubric);
    let mut o = page_head("switchyard bench summary");
    o.push_str("<h1>Benchmark summary</h1>\n");
    if let Some(warning) = settings_warning(runs) {
        let _ = writeln!(o, "<p class=\"warn\">{}</p>", escape(&warning));
    }
    o.push_str("<table><tr><th>metric</th>");
    for r in runs {
        let _ = write!(o, "<th>{}</th>", escape(&r.label));
    }
    o.push_str("<th>best</th></tr>\n");
    for (row, values, winner) in &rows {
        let _ = write!(o, "<tr><td>{}</td>", escape(row.name));
        for (i, v) in values.iter().enumerate() {
            if *winner == Some(i) {
                let _ = write!(o, "<td class=\"best\">★ {}</td>", show(*v));
            } else {
                let _ = write!(o, "<td>{}</td>", show(*v));
            }
        }
        let name = winner.map_or("-".to_owned(), |i| runs[i].label.clone());
        let _ = writeln!(o, "<td>{}</td></tr>", escape(&name));
    }
    o.push_str(
        "</table>\n<p class=\"note\">★ marks the best run of each row (lower latency, \
                failure rate, cost and resource use; higher throughput and score).</p>\n\
                <div class=\"plots\">\n",
    );
    for (row, values, winner) in rows.iter().filter(|(row, _, _)| row.chart) {
        let bars: Vec<(String, f64)> =
            runs.iter().zip(values).filter_map(|(r, v)| v.map(|v| (r.label.clone(), v))).collect();
        // The winner's position among the bars drawn (runs without a value have none).
        let best_bar = winner.and_then(|w| {
            let label = &runs[w].label;
            bars.iter().position(|(l, _)| l == label)
        });
        let svg = chart::bars(row.name, row.name, &bars, best_bar)?;
        o.push_str(&figure(row.name, &svg));
    }
    o.push_str("</div>\n");
    o.push_str(PAGE_TAIL);
    Ok(o)
}

/// The same table as Markdown.
pub fn markdown(runs: &[Labeled], rubric: Option<&Rubric>) -> String {
    let rows = table(runs, rubric);
    let mut o = String::from("# Benchmark summary\n\n");
    if let Some(warning) = settings_warning(runs) {
        let _ = writeln!(o, "> **Warning:** {warning}\n");
    }
    o.push_str("| metric |");
    for r in runs {
        let _ = write!(o, " {} |", r.label.replace('|', "\\|"));
    }
    let _ = writeln!(o, " best |\n|---|{}---|", "---|".repeat(runs.len()));
    for (row, values, winner) in &rows {
        let _ = write!(o, "| {} |", row.name);
        for (i, v) in values.iter().enumerate() {
            if *winner == Some(i) {
                let _ = write!(o, " **★ {}** |", show(*v));
            } else {
                let _ = write!(o, " {} |", show(*v));
            }
        }
        let name = winner.map_or("-".to_owned(), |i| runs[i].label.replace('|', "\\|"));
        let _ = writeln!(o, " {name} |");
    }
    o.push_str("\n★ marks the best run of each row.\n");
    o
}

#[cfg(test)]
mod tests {
    use super::super::line::ResultLine;
    use super::*;

    fn run(label: &str, json: &str) -> Labeled {
        Labeled { label: label.into(), line: ResultLine::parse(json).unwrap() }
    }

    #[test]
    fn winners_are_marked_per_row() {
        let runs = [
            run(
                "a",
                r#"{"median_ttft_ms": 10.0, "output_throughput": 100.0, "completed": 9, "failed": 1}"#,
            ),
            run(
                "b",
                r#"{"median_ttft_ms": 20.0, "output_throughput": 300.0, "completed": 10, "failed": 0}"#,
            ),
        ];
        let rows = table(&runs, None);
        let find = |name: &str| rows.iter().find(|(r, _, _)| r.name == name).unwrap();
        assert_eq!(find("TTFT p50 (ms)").2, Some(0));
        assert_eq!(find("output tokens/s").2, Some(1));
        assert_eq!(find("failure rate").1, [Some(0.1), Some(0.0)]);
        assert_eq!(find("failure rate").2, Some(1));
        let md = markdown(&runs, None);
        assert!(md.contains("| TTFT p50 (ms) | **★ 10.0** | 20.0 | a |"), "{md}");
        let page = html(&runs, None).unwrap();
        assert_eq!(page.matches("<figure class=\"plot\"").count(), 2, "TTFT p50 and tokens/s");
    }
}
