//! `--report out.html`: one self-contained page — the comparison table, latency CDFs (TTFT,
//! ITL, E2E) of every run, and for several runs throughput against latency — drawn as inline
//! SVG with plotters.

use std::fmt::Write as _;

use plotters::prelude::*;

use super::compare::{Labeled, cell};
use crate::Error;
use crate::metrics::RunMetrics;
use crate::record::RequestRecord;

/// CDFs are drawn through this many quantiles, however many requests a run had.
const CDF_POINTS: usize = 400;

const SIZE: (u32, u32) = (720, 420);

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
        }
    }
}

fn report_error(e: impl std::fmt::Display) -> Error {
    Error::Report(e.to_string())
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

/// One chart of lines: `series` of (label, points); `markers` also dots each point (for the
/// few points of a sweep, not the hundreds of a CDF).
fn chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
    markers: bool,
) -> Result<String, Error> {
    let max = |f: fn(&(f64, f64)) -> f64| {
        series.iter().flat_map(|(_, p)| p.iter().map(f)).fold(0.0_f64, f64::max)
    };
    let (x_max, y_max) = (max(|p| p.0).max(1e-3) * 1.05, max(|p| p.1).max(1e-3) * 1.05);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(report_error)?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(report_error)?;
        c.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw().map_err(report_error)?;
        for (i, (label, points)) in series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            c.draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
                .map_err(report_error)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            if markers {
                c.draw_series(points.iter().map(|p| Circle::new(*p, 3, color.filled())))
                    .map_err(report_error)?;
            }
        }
        c.configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(report_error)?;
        root.present().map_err(report_error)?;
    }
    Ok(svg)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// The page.
pub fn html(runs: &[ReportRun], table: &[Labeled]) -> Result<String, Error> {
    let mut out = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>switchyard bench report</title>\n\
         <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}\
         td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}\
         svg{display:block;margin:1em 0}</style></head><body>\n<h1>switchyard bench</h1>\n<table>\n<tr><th>metric</th>",
    );
    for run in table {
        let _ = write!(out, "<th>{}</th>", escape(&run.label));
    }
    out.push_str("</tr>\n");
    let keys: Vec<&str> = table.first().map(|r| r.line.keys().collect()).unwrap_or_default();
    for key in keys.into_iter().filter(|k| !matches!(*k, "server_info" | "error_counts")) {
        let cells: Vec<String> = table.iter().map(|r| cell(r.line.get(key))).collect();
        if cells.iter().any(|c| c.len() > 40) {
            continue;
        }
        let _ = write!(out, "<tr><td>{}</td>", escape(key));
        for c in cells {
            let _ = write!(out, "<td>{}</td>", escape(&c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    type Pick = fn(&ReportRun) -> &Vec<f64>;
    let cdfs: [(&str, Pick); 3] = [
        ("Time to first token", |r| &r.ttft_ms),
        ("Inter-token latency", |r| &r.itl_ms),
        ("End-to-end latency", |r| &r.e2e_ms),
    ];
    for (title, pick) in cdfs {
        let series: Vec<(String, Vec<(f64, f64)>)> =
            runs.iter().map(|r| (r.label.clone(), cdf_points(pick(r)))).collect();
        out.push_str(&chart(
            &format!("{title} (CDF)"),
            "ms",
            "fraction of requests",
            &series,
            false,
        )?);
    }
    if runs.len() > 1 {
        let mut groups: Vec<&str> = Vec::new();
        for r in runs {
            if !groups.contains(&r.group.as_str()) {
                groups.push(&r.group);
            }
        }
        type Y = fn(&ReportRun) -> f64;
        let charts: [(&str, &str, Y); 2] = [
            ("Output throughput vs median E2E latency", "median E2E (ms)", |r| r.median_e2e_ms),
            ("Output throughput vs P99 TTFT", "P99 TTFT (ms)", |r| r.p99_ttft_ms),
        ];
        for (title, y_desc, y) in charts {
            let series: Vec<(String, Vec<(f64, f64)>)> = groups
                .iter()
                .map(|g| {
                    let mut points: Vec<(f64, f64)> = runs
                        .iter()
                        .filter(|r| r.group == *g)
                        .map(|r| (r.output_throughput, y(r)))
                        .collect();
                    points.sort_by(|a, b| a.0.total_cmp(&b.0));
                    ((*g).to_owned(), points)
                })
                .collect();
            out.push_str(&chart(title, "output tokens/s", y_desc, &series, true)?);
        }
    }
    out.push_str("</body></html>\n");
    Ok(out)
}
