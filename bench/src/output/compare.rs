//! `switchyard bench compare`: result lines side by side — a table with one column per run
//! (the headline figures), or CSV with one row per run (every scalar key).

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::line::{Field, ResultLine};
use crate::Error;

/// Rows of the table, in order; a row is shown when any run has its key.
const TABLE_KEYS: &[(&str, &str)] = &[
    ("backend", "backend"),
    ("topology", "topology"),
    ("dataset_name", "dataset"),
    ("request_rate", "request rate (req/s)"),
    ("max_concurrency", "max concurrency"),
    ("completed", "completed"),
    ("failed", "failed"),
    ("duration", "duration (s)"),
    ("request_throughput", "requests/s"),
    ("request_goodput", "goodput (req/s)"),
    ("output_throughput", "output tok/s"),
    ("total_throughput", "total tok/s"),
    ("max_output_tokens_per_s", "peak output tok/s"),
    ("median_ttft_ms", "TTFT median (ms)"),
    ("p99_ttft_ms", "TTFT p99 (ms)"),
    ("median_tpot_ms", "TPOT median (ms)"),
    ("p99_tpot_ms", "TPOT p99 (ms)"),
    ("median_itl_ms", "ITL median (ms)"),
    ("p99_itl_ms", "ITL p99 (ms)"),
    ("median_e2e_latency_ms", "E2E median (ms)"),
    ("p99_e2e_latency_ms", "E2E p99 (ms)"),
    ("p99_ttft_from_scheduled_ms", "TTFT p99 from schedule (ms)"),
    ("p99_e2e_latency_from_scheduled_ms", "E2E p99 from schedule (ms)"),
    ("concurrency", "mean concurrency"),
    ("prefix_cache_hit_rate", "prefix cache hit rate"),
    ("prefix_cache_hit_rate_bound", "hit rate bound"),
    ("instance_requests_max_over_mean", "busiest worker / mean"),
    ("cost_per_1m_output_tokens", "cost / 1M output tokens"),
    ("cost_per_request", "cost / request"),
    ("failure_rate", "failure rate"),
    ("client_cpu_ms_per_request", "client thread CPU / request (ms)"),
    ("client_process_cpu_ms_per_request", "client process CPU / request (ms)"),
];

/// Rows where one run wins, and whether lower is better: the winner's cell is starred and
/// named under the table.
const WINNER_KEYS: &[(&str, &str, bool)] = &[
    ("median_ttft_ms", "TTFT median", true),
    ("p99_ttft_ms", "TTFT p99", true),
    ("median_itl_ms", "ITL median", true),
    ("p99_itl_ms", "ITL p99", true),
    ("output_throughput", "output tok/s", false),
];

/// The run that wins row `key` (`lower`: lower is better), when more than one run has it.
fn winner(runs: &[Labeled], key: &str, lower: bool) -> Option<usize> {
    let values: Vec<(usize, f64)> = runs
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.line.get(key) {
            Some(Field::Float(v)) if v.is_finite() => Some((i, *v)),
            Some(Field::Json(Value::Number(n))) => n.as_f64().map(|v| (i, v)),
            _ => None,
        })
        .collect();
    if values.len() < 2 {
        return None;
    }
    let better = |a: f64, b: f64| if lower { a < b } else { a > b };
    values
        .into_iter()
        .reduce(|best, next| if better(next.1, best.1) { next } else { best })
        .map(|(i, _)| i)
}

/// A run to compare: its label (column header or CSV first cell) and its line.
#[derive(Debug, Clone)]
pub struct Labeled {
    pub label: String,
    pub line: ResultLine,
}

/// Reads result files; each line is labelled by its `tag`, else `FILE:LINE`.
pub fn read_files(paths: &[impl AsRef<Path>]) -> Result<Vec<Labeled>, Error> {
    let mut out = Vec::new();
    for path in paths {
        let path = path.as_ref();
        for (i, line) in ResultLine::read_file(path)?.into_iter().enumerate() {
            out.push(Labeled {
                label: label_of(&line, &format!("{}:{}", path.display(), i + 1)),
                line,
            });
        }
    }
    Ok(out)
}

/// The `tag` of a line when it has one, else `fallback`.
pub fn label_of(line: &ResultLine, fallback: &str) -> String {
    match line.get("tag") {
        Some(Field::Json(Value::String(tag))) if !tag.is_empty() => tag.clone(),
        _ => fallback.to_owned(),
    }
}

/// A value as a table cell: integers as integers, other numbers with 2 decimals, `inf` for
/// infinity, `-` for null.
pub fn cell(field: Option<&Field>) -> String {
    match field {
        None | Some(Field::Json(Value::Null)) => "-".into(),
        Some(Field::Float(v)) if v.is_infinite() => if *v > 0.0 { "inf" } else { "-inf" }.into(),
        Some(Field::Float(v)) if v.fract() == 0.0 && v.abs() < 1e15 => format!("{v:.0}"),
        Some(Field::Float(v)) => decimal(*v),
        Some(Field::Json(Value::String(s))) => s.clone(),
        Some(Field::Json(v @ Value::Number(n))) => match n.as_f64() {
            Some(f) if !n.is_i64() && !n.is_u64() => decimal(f),
            _ => v.to_string(),
        },
        Some(Field::Json(v)) => v.to_string(),
    }
}

/// Two decimals, or three significant digits for values below 1 (costs per request are
/// fractions of a cent).
fn decimal(v: f64) -> String {
    if v == 0.0 || v.abs() >= 1.0 || !v.is_finite() {
        return format!("{v:.2}");
    }
    // |v| < 1: -log10 is positive and small.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let decimals = (2.0 - v.abs().log10().floor()) as usize;
    format!("{v:.decimals$}")
}

/// The side-by-side table (metrics as rows, runs as columns).
pub fn table(runs: &[Labeled]) -> String {
    let mut rows: Vec<Vec<String>> = vec![
        std::iter::once("metric".to_owned()).chain(runs.iter().map(|r| r.label.clone())).collect(),
    ];
    for (key, name) in TABLE_KEYS {
        let fields: Vec<Option<&Field>> = runs.iter().map(|r| r.line.get(key)).collect();
        if fields.iter().all(|f| matches!(f, None | Some(Field::Json(Value::Null)))) {
            continue;
        }
        let mut row: Vec<String> =
            std::iter::once((*name).to_owned()).chain(fields.into_iter().map(cell)).collect();
        if let Some(&(_, _, lower)) = WINNER_KEYS.iter().find(|(k, _, _)| k == key)
            && let Some(best) = winner(runs, key, lower)
        {
            row[best + 1].push_str(" *");
        }
        rows.push(row);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        for (c, value) in row.iter().enumerate() {
            let sep = if c == 0 { "" } else { "  " };
            if c == 0 {
                let _ = write!(out, "{sep}{value:<w$}", w = widths[c]);
            } else {
                let _ = write!(out, "{sep}{value:>w$}", w = widths[c]);
            }
        }
        out.push('\n');
        if i == 0 {
            out.push_str(&"-".repeat(widths.iter().sum::<usize>() + 2 * (columns - 1)));
            out.push('\n');
        }
    }
    let wins: Vec<String> = WINNER_KEYS
        .iter()
        .filter_map(|&(key, name, lower)| {
            winner(runs, key, lower).map(|best| format!("{name}: {}", runs[best].label))
        })
        .collect();
    if !wins.is_empty() {
        let _ = writeln!(out, "best (*) — {}", wins.join("; "));
    }
    out
}

/// The headline rows as an HTML table (the report's first table).
pub fn table_html(runs: &[Labeled]) -> String {
    let esc = super::chart::escape;
    let mut out = String::from("<table>\n<tr><th>metric</th>");
    for r in runs {
        out.push_str(&format!("<th>{}</th>", esc(&r.label)));
    }
    out.push_str("</tr>\n");
    for (key, name) in TABLE_KEYS {
        let fields: Vec<Option<&Field>> = runs.iter().map(|r| r.line.get(key)).collect();
        if fields.iter().all(|f| matches!(f, None | Some(Field::Json(Value::Null)))) {
            continue;
        }
        out.push_str(&format!("<tr><td>{}</td>", esc(name)));
        for f in fields {
            out.push_str(&format!("<td>{}</td>", esc(&cell(f))));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// CSV: a `label` column, then every key any run has (first-seen order), one value per cell.
/// Objects are flattened into `key.sub` columns; lists (the per-request lists of
/// `--output-details`, saved outputs) are left out, so every cell stays small enough for
/// spreadsheet and Python `csv` readers.
pub fn csv(runs: &[Labeled]) -> String {
    let flat: Vec<Vec<(String, String)>> = runs.iter().map(|r| flatten_line(&r.line)).collect();
    let mut keys: Vec<&str> = Vec::new();
    for row in &flat {
        for (key, _) in row {
            if !keys.contains(&key.as_str()) {
                keys.push(key);
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> =
        std::iter::once("label").chain(keys.iter().copied()).map(quote).collect();
    out.push_str(&header.join(","));
    out.push('\n');
    for (run, row) in runs.iter().zip(&flat) {
        let mut cells = vec![quote(&run.label)];
        for key in &keys {
            let text = row.iter().find(|(k, _)| k == key).map_or("", |(_, v)| v.as_str());
            cells.push(quote(text));
        }
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// The keys a CSV of `runs` leaves out (lists), to say so.
pub fn csv_left_out(runs: &[Labeled]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for run in runs {
        for (key, field) in &run.line.fields {
            if matches!(field, Field::Json(Value::Array(_))) && !out.contains(key) {
                out.push(key.clone());
            }
        }
    }
    out
}

fn flatten_line(line: &ResultLine) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (key, field) in &line.fields {
        match field {
            Field::Float(v) if v.is_infinite() => {
                out.push((key.clone(), if *v > 0.0 { "inf" } else { "-inf" }.to_owned()));
            }
            Field::Float(v) => out.push((key.clone(), v.to_string())),
            Field::Json(v) => flatten(key, v, &mut out),
        }
    }
    out
}

fn flatten(key: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                flatten(&format!("{key}.{k}"), v, out);
            }
        }
        Value::Array(_) => {}
        Value::Null => out.push((key.to_owned(), String::new())),
        Value::String(s) => out.push((key.to_owned(), s.clone())),
        v => out.push((key.to_owned(), v.to_string())),
    }
}

fn quote(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_csv_of_two_runs() {
        let a = ResultLine::parse(r#"{"tag": "a", "backend": "vllm", "request_rate": Infinity, "completed": 10, "median_ttft_ms": 12.345, "server_info": {"x": 1}}"#).unwrap();
        let b = ResultLine::parse(r#"{"tag": null, "backend": "sglang-oai", "request_rate": 4.0, "completed": 9, "median_ttft_ms": 20.0}"#).unwrap();
        let runs = vec![
            Labeled { label: label_of(&a, "x"), line: a },
            Labeled { label: label_of(&b, "f:2"), line: b },
        ];
        let t = table(&runs);
        assert!(t.lines().next().unwrap().contains("f:2"), "{t}");
        let rate = t.lines().find(|l| l.starts_with("request rate")).unwrap();
        assert!(rate.contains("inf") && rate.ends_with(" 4"), "{rate}");
        assert!(t.contains("12.35 *") && t.contains("20"), "{t}");
        assert!(t.contains("best (*) — TTFT median: a"), "{t}");
        assert_eq!(decimal(0.000_002_346), "0.00000235");
        assert_eq!(decimal(0.5), "0.500");
        let c = csv(&runs);
        let lines: Vec<&str> = c.lines().collect();
        assert_eq!(
            lines[0],
            "label,tag,backend,request_rate,completed,median_ttft_ms,server_info.x"
        );
        assert_eq!(lines[1], "a,a,vllm,inf,10,12.345,1");
        assert_eq!(lines[2], "f:2,,sglang-oai,4,9,20,");
    }
}
