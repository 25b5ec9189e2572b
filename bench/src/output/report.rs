//! `--report out.html`: one self-contained page — the comparison table under readable names,
//! latency CDFs (TTFT and E2E over requests, ITL over token gaps), throughput against latency
//! (a line through a sweep's points, dots for runs that are no sweep), output tokens/s and
//! requests in flight over time, and per run the resource time series (CPU and memory of each
//! process, the host, GPUs, scraped series).

use std::fmt::Write as _;

use serde_json::Value;

use super::chart::{self, Series, Style, escape, figure};
use super::compare::{Labeled, cell};
use super::labels::label;
use super::line::Field;
use crate::Error;
use crate::metrics::RunMetrics;
use crate::record::RequestRecord;
use crate::resources::ResourceRun;

/// CDFs are drawn through this many quantiles, however many requests a run had.
const CDF_POINTS: usize = 400;

/// What the report draws of one run.
#[derive(Debug, Clone)]
pub struct ReportRun {
    pub label: String,
    /// Runs of one group (a topology, or one target) are joined by a line in the
    /// throughput–latency charts.
    pub group: String,
    pub ttft_ms: Vec<f64>,
    pub itl_ms: Vec<f64>,
    pub e2e_ms: Vec<f64>,
    pub output_throughput: f64,
    pub median_e2e_ms: f64,
    pub p99_ttft_ms: f64,
    /// Per whole second of the run: (second, output tokens received, requests in flight).
    pub timeline: Vec<(f64, f64, f64)>,
    pub resources: Option<ResourceRun>,
}

impl ReportRun {
    pub fn new(label: &str, group: &str, records: &[RequestRecord], m: &RunMetrics) -> ReportRun {
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
        let ok = || records.iter().filter(|r| r.succeeded());
        let sorted = |mut v: Vec<f64>| {
            v.sort_unstable_by(f64::total_cmp);
            v
        };
        ReportRun {
            label: label.to_owned(),
            group: group.to_owned(),
            ttft_ms: sorted(ok().filter_map(RequestRecord::ttft).map(ms).collect()),
            itl_ms: sorted(ok().flat_map(RequestRecord::itls).map(ms).collect()),
            e2e_ms: sorted(ok().map(|r| ms(r.e2e())).collect()),
            output_throughput: m.output_throughput,
            median_e2e_ms: m.e2e.median,
            p99_ttft_ms: m.ttft.p99,
            timeline: timeline(records),
            resources: None,
        }
    }
}

/// Output tokens (text chunks) received and requests in flight, per whole second.
pub fn timeline(records: &[RequestRecord]) -> Vec<(f64, f64, f64)> {
    let end = records.iter().map(|r| r.end.as_secs()).max().unwrap_or(0);
    let len = usize::try_from(end).unwrap_or(0) + 1;
    let (mut tokens, mut in_flight) = (vec![0.0; len], vec![0.0; len]);
    for r in records {
        for t in &r.chunk_times {
            if let Some(slot) = tokens.get_mut(usize::try_from(t.as_secs()).unwrap_or(usize::MAX)) {
                *slot += 1.0;
            }
        }
        let (from, to) = (r.sent.as_secs(), r.end.as_secs());
        for s in from..=to {
            if let Some(slot) = in_flight.get_mut(usize::try_from(s).unwrap_or(usize::MAX)) {
                *slot += 1.0;
            }
        }
    }
    (0..len).map(|s| (s as f64, tokens[s], in_flight[s])).collect()
}

fn cdf_points(sorted: &[f64]) -> Vec<(f64, f64)> {
    if sorted.is_empty() {
        return Vec::new();
    }
    let last = sorted.len() - 1;
    (0..=CDF_POINTS)
        .map(|q| {
            let at = q * last / CDF_POINTS;
            (sorted[at], (at + 1) as f64 / sorted.len() as f64)
        })
        .collect()
}

/// Keys whose values are objects or lists: shown elsewhere, not in the table.
fn is_scalar(field: Option<&Field>) -> bool {
    !matches!(field, Some(Field::Json(Value::Object(_) | Value::Array(_))))
}

/// The comparison table: one row per scalar key, under its readable name.
pub fn table_html(table: &[Labeled]) -> String {
    let mut out = String::from("<table>\n<tr><th>figure</th>");
    for run in table {
        let _ = write!(out, "<th>{}</th>", escape(&run.label));
    }
    out.push_str("</tr>\n");
    let keys: Vec<&str> = table.first().map(|r| r.line.keys().collect()).unwrap_or_default();
    for key in keys {
        if !table.iter().all(|r| is_scalar(r.line.get(key))) || key == "tag" {
            continue;
        }
        let _ = write!(out, "<tr><td title=\"{}\">{}</td>", escape(key), escape(&label(key)));
        for run in table {
            let _ = write!(out, "<td>{}</td>", escape(&cell(run.line.get(key))));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// The page.
pub fn html(runs: &[ReportRun], table: &[Labeled]) -> Result<String, Error> {
    let mut out = chart::page_head("switchyard bench report");
    out.push_str("<h1>switchyard bench</h1>\n");
    out.push_str(&super::compare::table_html(table));
    out.push_str("<details><summary>Every figure of the runs</summary>\n");
    out.push_str(&table_html(table));
    out.push_str("</details>\n<h2>Latency</h2>\n<div class=\"plots\">\n");
    type Pick = fn(&ReportRun) -> &Vec<f64>;
    let cdfs: [(&str, &str, Pick); 3] = [
        ("Time to first token (CDF)", "fraction of requests", |r| &r.ttft_ms),
        ("Inter-token latency (CDF)", "fraction of token gaps", |r| &r.itl_ms),
        ("End-to-end latency (CDF)", "fraction of requests", |r| &r.e2e_ms),
    ];
    for (title, y_desc, pick) in cdfs {
        let series: Vec<Series> = runs
            .iter()
            .map(|r| Series { label: r.label.clone(), points: cdf_points(pick(r)) })
            .collect();
        out.push_str(&figure(title, &chart::xy(title, "ms", y_desc, &series, Style::Lines)?));
    }
    out.push_str(&throughput_charts(runs)?);
    out.push_str("</div>\n<h2>Over time</h2>\n<div class=\"plots\">\n");
    for (title, y_desc, pick) in [
        ("Output tokens per second", "tokens/s", 1),
        ("Requests in flight", "requests (per second, at most)", 2),
    ] {
        let series: Vec<Series> = runs
            .iter()
            .map(|r| Series {
                label: r.label.clone(),
                points: r
                    .timeline
                    .iter()
                    .map(|p| (p.0, if pick == 1 { p.1 } else { p.2 }))
                    .collect(),
            })
            .collect();
        // A run shorter than a few seconds has too few points for a line alone.
        let style = if runs.iter().all(|r| r.timeline.len() < 3) {
            Style::LinesAndPoints
        } else {
            Style::Lines
        };
        out.push_str(&figure(title, &chart::xy(title, "s", y_desc, &series, style)?));
    }
    out.push_str("</div>\n");
    for run in runs {
        if let Some(resources) = &run.resources {
            out.push_str(&resource_charts(&run.label, resources)?);
        }
    }
    out.push_str(chart::PAGE_TAIL);
    Ok(out)
}

/// Output throughput against median E2E and P99 TTFT: a line through each group's sweep,
/// dots alone when no group has more than one point.
fn throughput_charts(runs: &[ReportRun]) -> Result<String, Error> {
    let mut groups: Vec<&str> = Vec::new();
    for r in runs {
        if !groups.contains(&r.group.as_str()) {
            groups.push(&r.group);
        }
    }
    let sweep = groups.iter().any(|g| runs.iter().filter(|r| r.group == *g).count() > 1);
    let (style, by) = if sweep { (Style::LinesAndPoints, true) } else { (Style::Points, false) };
    let mut out = String::new();
    type Y = fn(&ReportRun) -> f64;
    let charts: [(&str, &str, Y); 2] = [
        ("Output throughput vs median E2E latency", "median E2E (ms)", |r| r.median_e2e_ms),
        ("Output throughput vs P99 TTFT", "P99 TTFT (ms)", |r| r.p99_ttft_ms),
    ];
    for (title, y_desc, y) in charts {
        // A sweep joins its points per group; otherwise each run is its own dot.
        let series: Vec<Series> = if by {
            groups
                .iter()
                .map(|g| {
                    let mut points: Vec<(f64, f64)> = runs
                        .iter()
                        .filter(|r| r.group == *g)
                        .map(|r| (r.output_throughput, y(r)))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    Series { label: (*g).to_owned(), points }
                })
                .collect()
        } else {
            runs.iter()
                .map(|r| Series {
                    label: r.label.clone(),
                    points: vec![(r.output_throughput, y(r))],
                })
                .collect()
        };
        let svg = chart::xy(title, "output tokens/s", y_desc, &series, style)?;
        out.push_str(&figure(title, &svg));
    }
    Ok(out)
}

/// The time series of one run's resource use.
fn resource_charts(run: &str, r: &ResourceRun) -> Result<String, Error> {
    let mut out = format!("<h2>Resources: {}</h2>\n", escape(run));
    if let Some(note) = &r.gpu_note {
        let _ = writeln!(out, "<p class=\"note\">GPUs: {}</p>", escape(note));
    }
    out.push_str("<div class=\"plots\">\n");
    let mut charts: Vec<(String, &str, Vec<Series>)> = vec![
        (
            "CPU by process".into(),
            "% of one core",
            r.processes
                .iter()
                .map(|p| Series { label: p.label.clone(), points: p.cpu_pct.clone() })
                .collect(),
        ),
        (
            "Memory by process (RSS)".into(),
            "MB",
            r.processes
                .iter()
                .map(|p| Series { label: p.label.clone(), points: p.rss_mb.clone() })
                .collect(),
        ),
        (
            format!("Host CPU ({} cores)", r.host_cpus),
            "% of all cores",
            vec![Series { label: "host".into(), points: r.host_cpu_pct.clone() }],
        ),
        (
            format!("Host memory used (of {:.0} MB)", r.host_mem_total_mb),
            "MB",
            vec![Series { label: "host".into(), points: r.host_mem_used_mb.clone() }],
        ),
    ];
    if !r.gpus.is_empty() {
        let per_gpu = |pick: fn(&crate::resources::GpuSeries) -> &Vec<(f64, f64)>| {
            r.gpus
                .iter()
                .map(|g| Series {
                    label: format!("GPU {} {}", g.index, g.name),
                    points: pick(g).clone(),
                })
                .collect::<Vec<_>>()
        };
        charts.push(("GPU utilization".into(), "%", per_gpu(|g| &g.util_pct)));
        charts.push(("GPU memory used".into(), "MB", per_gpu(|g| &g.mem_used_mb)));
        charts.push(("GPU power".into(), "W", per_gpu(|g| &g.power_w)));
    }
    for (name, points) in &r.prometheus {
        charts.push((
            name.clone(),
            "value",
            vec![Series { label: name.clone(), points: points.clone() }],
        ));
    }
    for (title, y_desc, series) in charts {
        let name = format!("{run}: {title}");
        out.push_str(&figure(&name, &chart::xy(&title, "s", y_desc, &series, Style::Lines)?));
    }
    out.push_str("</div>\n");
    Ok(out)
}
