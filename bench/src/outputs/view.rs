//! The outputs side by side, as an HTML page and as Markdown: the runs' settings (differences
//! in sampling flagged), the rubric's scores per run and per criterion, then each prompt with
//! every run's output, its automatic checks, its score, and empty judgment columns to fill.

use std::fmt::Write as _;

use super::rubric::Rubric;
use super::{RunOutputs, SAMPLING_SETTINGS, SavedOutput, align, settings_differences};
use crate::output::chart::{PAGE_TAIL, escape, page_head};

/// Keys of `settings` shown in the settings table.
const SHOWN_SETTINGS: &[&str] = &["model", "tokenizer", "backend", "dataset_name", "seed"];

fn setting(run: &RunOutputs, key: &str) -> String {
    match run.settings.get(key) {
        None | Some(serde_json::Value::Null) => "-".into(),
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

fn mark(ok: Option<bool>) -> &'static str {
    match ok {
        Some(true) => "✓",
        Some(false) => "✗",
        None => "",
    }
}

/// Per run, per criterion: the share of outputs that met it.
fn pass_rates(rubric: &Rubric, run: &RunOutputs) -> Vec<Option<f64>> {
    rubric
        .criteria
        .iter()
        .map(|c| {
            let checks: Vec<bool> = run.outputs.iter().filter_map(|o| c.check(o)).collect();
            (!checks.is_empty())
                .then(|| checks.iter().filter(|ok| **ok).count() as f64 / checks.len() as f64)
        })
        .collect()
}

fn pct(v: Option<f64>) -> String {
    v.map_or(String::new(), |v| format!("{:.0}%", v * 100.0))
}

/// The HTML page.
pub fn html(runs: &[RunOutputs], rubric: Option<&Rubric>) -> String {
    let mut o = page_head("switchyard bench outputs");
    o.push_str("<h1>Outputs side by side</h1>\n<h2>Settings</h2>\n<table><tr><th>setting</th>");
    for r in runs {
        let _ = write!(o, "<th>{}</th>", escape(&r.label));
    }
    o.push_str("</tr>\n");
    let diffs = settings_differences(runs);
    for key in SHOWN_SETTINGS.iter().chain(SAMPLING_SETTINGS) {
        let differs = diffs.iter().any(|(k, _)| k == key);
        let _ = write!(o, "<tr><td>{}{}</td>", escape(key), if differs { " ⚠" } else { "" });
        for r in runs {
            let _ = write!(o, "<td class=\"text\">{}</td>", escape(&setting(r, key)));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table>\n");
    if !diffs.is_empty() {
        let keys: Vec<&str> = diffs.iter().map(|(k, _)| k.as_str()).collect();
        let _ = writeln!(
            o,
            "<p class=\"warn\">These runs were sent with different sampling settings ({}): \
             their outputs differ for that reason too.</p>",
            escape(&keys.join(", "))
        );
    }
    if let Some(rubric) = rubric {
        o.push_str("<h2>Rubric</h2>\n<table><tr><th>criterion</th><th>weight</th>");
        for r in runs {
            let _ = write!(o, "<th>{}</th>", escape(&r.label));
        }
        o.push_str("</tr>\n");
        let rates: Vec<Vec<Option<f64>>> = runs.iter().map(|r| pass_rates(rubric, r)).collect();
        for (i, c) in rubric.criteria.iter().enumerate() {
            let kind = if c.is_judgment() { " (judgment: fill in below)" } else { "" };
            let _ = write!(o, "<tr><td>{}{kind}</td><td>{}</td>", escape(&c.name), c.weight);
            for r in &rates {
                let _ = write!(o, "<td>{}</td>", pct(r[i]));
            }
            o.push_str("</tr>\n");
        }
        o.push_str("<tr><th>automatic score</th><th></th>");
        for r in runs {
            let _ = write!(o, "<th>{}</th>", pct(rubric.run_score(&r.outputs)));
        }
        o.push_str("</tr></table>\n");
    }
    o.push_str("<h2>Prompts</h2>\n");
    for (i, (prompt, row)) in align(runs).iter().enumerate() {
        let head: String = prompt.chars().take(160).collect();
        let _ = writeln!(
            o,
            "<h3>Prompt {}</h3>\n<details><summary>{}{}</summary><pre>{}</pre></details>",
            i + 1,
            escape(&head),
            if head.len() < prompt.len() { "…" } else { "" },
            escape(prompt)
        );
        o.push_str("<table><tr><th>run</th><th>output</th><th>tokens</th><th>E2E (ms)</th>");
        if let Some(rubric) = rubric {
            for c in &rubric.criteria {
                let _ = write!(o, "<th>{}</th>", escape(&c.name));
            }
            o.push_str("<th>score</th>");
        }
        o.push_str("</tr>\n");
        for (run, out) in runs.iter().zip(row) {
            let _ = write!(o, "<tr><td>{}</td>", escape(&run.label));
            match out {
                None => o.push_str("<td class=\"text\">(not in this run)</td><td></td><td></td>"),
                Some(out) => {
                    let text = match &out.error {
                        Some(e) => format!("[failed: {e}]"),
                        None => out.output.clone(),
                    };
                    let _ = write!(
                        o,
                        "<td class=\"text\">{}</td><td>{}</td><td>{:.1}</td>",
                        escape(&text),
                        out.output_tokens,
                        out.e2e_ms
                    );
                }
            }
            if let Some(rubric) = rubric {
                for c in &rubric.criteria {
                    let _ = write!(o, "<td>{}</td>", mark(out.and_then(|x| c.check(x))));
                }
                let _ = write!(o, "<td>{}</td>", pct(out.and_then(|x| rubric.score(x))));
            }
            o.push_str("</tr>\n");
        }
        o.push_str("</table>\n");
    }
    o.push_str(PAGE_TAIL);
    o
}

fn md(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', "<br>")
}

/// The same as Markdown (GitHub tables).
pub fn markdown(runs: &[RunOutputs], rubric: Option<&Rubric>) -> String {
    let mut o = String::from("# Outputs side by side\n\n## Settings\n\n| setting |");
    for r in runs {
        let _ = write!(o, " {} |", md(&r.label));
    }
    let _ = writeln!(o, "\n|---|{}", "---|".repeat(runs.len()));
    let diffs = settings_differences(runs);
    for key in SHOWN_SETTINGS.iter().chain(SAMPLING_SETTINGS) {
        let differs = diffs.iter().any(|(k, _)| k == key);
        let _ = write!(o, "| {key}{} |", if differs { " ⚠" } else { "" });
        for r in runs {
            let _ = write!(o, " {} |", md(&setting(r, key)));
        }
        o.push('\n');
    }
    if !diffs.is_empty() {
        let keys: Vec<&str> = diffs.iter().map(|(k, _)| k.as_str()).collect();
        let _ = writeln!(
            o,
            "\n> **Warning:** these runs were sent with different sampling settings ({}).",
            keys.join(", ")
        );
    }
    if let Some(rubric) = rubric {
        o.push_str("\n## Rubric\n\n| criterion | weight |");
        for r in runs {
            let _ = write!(o, " {} |", md(&r.label));
        }
        let _ = writeln!(o, "\n|---|---|{}", "---|".repeat(runs.len()));
        let rates: Vec<Vec<Option<f64>>> = runs.iter().map(|r| pass_rates(rubric, r)).collect();
        for (i, c) in rubric.criteria.iter().enumerate() {
            let kind = if c.is_judgment() { " (judgment)" } else { "" };
            let _ = write!(o, "| {}{kind} | {} |", md(&c.name), c.weight);
            for r in &rates {
                let _ = write!(o, " {} |", pct(r[i]));
            }
            o.push('\n');
        }
        o.push_str("| **automatic score** | |");
        for r in runs {
            let _ = write!(o, " **{}** |", pct(rubric.run_score(&r.outputs)));
        }
        o.push('\n');
    }
    o.push_str("\n## Prompts\n");
    for (i, (prompt, row)) in align(runs).iter().enumerate() {
        let _ = writeln!(o, "\n### Prompt {}\n\n> {}\n", i + 1, md(prompt));
        o.push_str("| run | output | tokens | E2E (ms) |");
        let columns = rubric.map_or(0, |r| r.criteria.len() + 1);
        if let Some(rubric) = rubric {
            for c in &rubric.criteria {
                let _ = write!(o, " {} |", md(&c.name));
            }
            o.push_str(" score |");
        }
        let _ = writeln!(o, "\n|---|---|---|---|{}", "---|".repeat(columns));
        for (run, out) in runs.iter().zip(row) {
            let cell = |out: &SavedOutput| match &out.error {
                Some(e) => format!("[failed: {e}]"),
                None => out.output.clone(),
            };
            match out {
                None => {
                    let _ = write!(o, "| {} | (not in this run) | | |", md(&run.label));
                }
                Some(x) => {
                    let _ = write!(
                        o,
                        "| {} | {} | {} | {:.1} |",
                        md(&run.label),
                        md(&cell(x)),
                        x.output_tokens,
                        x.e2e_ms
                    );
                }
            }
            if let Some(rubric) = rubric {
                for c in &rubric.criteria {
                    let _ = write!(o, " {} |", mark(out.and_then(|x| c.check(x))));
                }
                let _ = write!(o, " {} |", pct(out.and_then(|x| rubric.score(x))));
            }
            o.push('\n');
        }
    }
    o
}
