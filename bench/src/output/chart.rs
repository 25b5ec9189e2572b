//! Charts drawn as inline SVG with plotters: lines (CDFs, time series), points (runs that are
//! no sweep), and bars (the summary page). Colours are the Okabe–Ito palette, told apart by
//! readers with colour-vision deficiencies and dark enough on white; each chart sits in a
//! `<figure class="plot">` that the page's check script counts.

use std::fmt::Write as _;

use plotters::prelude::*;
use plotters::style::RGBColor;

use crate::Error;

const SIZE: (u32, u32) = (640, 380);

/// Okabe–Ito, without its yellow (too pale on white).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
];

/// The colour of series `i`.
pub fn color(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// One series of points, with its legend label.
#[derive(Debug, Clone)]
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// How the points of a series are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    /// Joined by a line (CDFs, time series).
    Lines,
    /// Dots only (one point per series, or points that are no curve).
    Points,
    /// A line through dotted points (a sweep).
    LinesAndPoints,
}

fn report_error(e: impl std::fmt::Display) -> Error {
    Error::Report(e.to_string())
}

/// `svg` in a figure the page's check script finds by `name`.
pub fn figure(name: &str, svg: &str) -> String {
    format!("<figure class=\"plot\" data-plot=\"{}\">{svg}</figure>\n", escape(name))
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// An x–y chart of `series` (axes from 0 to a little past the largest value).
pub fn xy(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    style: Style,
) -> Result<String, Error> {
    let max = |f: fn(&(f64, f64)) -> f64| {
        series.iter().flat_map(|s| s.points.iter().map(f)).fold(0.0_f64, f64::max)
    };
    let (x_max, y_max) = (max(|p| p.0).max(1e-3) * 1.05, max(|p| p.1).max(1e-3) * 1.1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(report_error)?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)
            .map_err(report_error)?;
        c.configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(report_error)?;
        for (i, s) in series.iter().enumerate() {
            let colour = color(i);
            let legend = move |(x, y): (i32, i32)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3))
            };
            if style != Style::Points {
                c.draw_series(LineSeries::new(s.points.iter().copied(), colour.stroke_width(2)))
                    .map_err(report_error)?
                    .label(s.label.as_str())
                    .legend(legend);
            }
            if style != Style::Lines {
                let dots = c
                    .draw_series(s.points.iter().map(|p| Circle::new(*p, 5, colour.filled())))
                    .map_err(report_error)?;
                if style == Style::Points {
                    dots.label(s.label.as_str()).legend(legend);
                }
            }
        }
        if !series.is_empty() {
            c.configure_series_labels()
                .position(SeriesLabelPosition::LowerRight)
                .background_style(WHITE.mix(0.9))
                .border_style(RGBColor(120, 120, 120))
                .draw()
                .map_err(report_error)?;
        }
        root.present().map_err(report_error)?;
    }
    Ok(svg)
}

/// A bar per label; `best` (if any) is drawn darker and marked with a star.
pub fn bars(
    title: &str,
    y_desc: &str,
    values: &[(String, f64)],
    best: Option<usize>,
) -> Result<String, Error> {
    let y_max = values.iter().map(|v| v.1).fold(0.0_f64, f64::max).max(1e-9) * 1.2;
    let n = values.len().max(1);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, 300)).into_drawing_area();
        root.fill(&WHITE).map_err(report_error)?;
        let mut c = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(10)
            .x_label_area_size(34)
            .y_label_area_size(64)
            .build_cartesian_2d(0.0..n as f64, 0.0..y_max)
            .map_err(report_error)?;
        // Runs are named above their bars: the x axis carries no labels of its own.
        c.configure_mesh()
            .disable_x_mesh()
            .x_label_formatter(&|_| String::new())
            .y_desc(y_desc)
            .light_line_style(RGBColor(235, 235, 235))
            .draw()
            .map_err(report_error)?;
        for (i, (label, v)) in values.iter().enumerate() {
            let x = i as f64;
            let winner = best == Some(i);
            let colour = if winner { color(0) } else { RGBColor(140, 170, 200) };
            c.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, *v)],
                colour.filled(),
            )))
            .map_err(report_error)?;
            let star = if winner { "★ " } else { "" };
            let text = format!("{star}{label}: {}", short(*v));
            c.draw_series(std::iter::once(Text::new(
                text,
                (x + 0.15, *v + y_max * 0.03),
                ("sans-serif", 13),
            )))
            .map_err(report_error)?;
        }
        root.present().map_err(report_error)?;
    }
    Ok(svg)
}

/// A value in at most 4 significant digits.
pub fn short(v: f64) -> String {
    let mut s = String::new();
    if v != 0.0 && v.abs() < 0.01 {
        let _ = write!(s, "{v:.2e}");
    } else if v.abs() < 10.0 {
        let _ = write!(s, "{v:.3}");
    } else if v.abs() < 1000.0 {
        let _ = write!(s, "{v:.1}");
    } else {
        let _ = write!(s, "{v:.0}");
    }
    s
}

/// The head of a page: styles readable on screen and in print, and the check script that
/// reports (as console errors) any figure without a drawn chart.
pub fn page_head(title: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>{}</title>\n<style>\
         body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1400px}}\
         h1{{font-size:1.5em}}h2{{font-size:1.2em;margin-top:1.6em}}\
         table{{border-collapse:collapse;margin:.5em 0}}\
         td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right;vertical-align:top}}\
         th{{background:#eef2f6}}td:first-child,th:first-child{{text-align:left}}\
         td.best{{background:#d7ecff;font-weight:bold}}td.text{{text-align:left;white-space:pre-wrap;max-width:40em}}\
         .plots{{display:flex;flex-wrap:wrap;gap:8px}}figure{{margin:0}}\
         .warn{{background:#fff3d6;border:1px solid #e6a100;padding:.5em 1em}}\
         .note{{color:#555}}</style></head><body>\n",
        escape(title)
    )
}

/// The end of a page, with the check script.
pub const PAGE_TAIL: &str = "<script>\n\
    (function () {\n\
      var figures = document.querySelectorAll('figure.plot');\n\
      var drawn = 0;\n\
      figures.forEach(function (f) {\n\
        var svg = f.querySelector('svg');\n\
        var box = svg ? svg.getBoundingClientRect() : null;\n\
        if (!box || box.width < 100 || box.height < 100) {\n\
          console.error('plot not drawn: ' + f.getAttribute('data-plot'));\n\
        } else { drawn += 1; }\n\
      });\n\
      document.body.setAttribute('data-plots-drawn', String(drawn));\n\
      document.body.setAttribute('data-plots', String(figures.length));\n\
    })();\n\
    </script>\n</body></html>\n";

/// `--plot-throughput`: output tokens/s and requests in flight per second as a text chart (at
/// most 60 rows; longer runs are shown in equal buckets, averaged).
pub fn text_timeline(timeline: &[(f64, f64, f64)]) -> String {
    const WIDTH: f64 = 40.0;
    let mut out = format!("{:-^50}\n", "Throughput over time");
    if timeline.is_empty() {
        return out;
    }
    let per_row = timeline.len().div_ceil(60);
    let rows: Vec<(f64, f64, f64)> = timeline
        .chunks(per_row)
        .map(|c| {
            let n = c.len() as f64;
            (c[0].0, c.iter().map(|p| p.1).sum::<f64>() / n, c.iter().map(|p| p.2).sum::<f64>() / n)
        })
        .collect();
    let peak = rows.iter().map(|r| r.1).fold(0.0_f64, f64::max).max(1e-9);
    for (t, tokens, in_flight) in rows {
        // Within [0, WIDTH]: the cast cannot truncate anything that matters.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let bar = (tokens / peak * WIDTH).round() as usize;
        let _ = writeln!(
            out,
            "{t:>5.0}s |{:<40}| {tokens:>8.0} tok/s {in_flight:>6.0} in flight",
            "#".repeat(bar)
        );
    }
    out
}
