//! `switchyard bench outputs A.jsonl B.jsonl … [--rubric rubric.yaml]`: the outputs runs saved
//! (`--save-outputs`) laid side by side, prompt by prompt, with the settings each run used —
//! runs whose sampling settings differ are flagged — and, with a rubric, each output scored.

pub mod rubric;
pub mod view;

use serde_json::Value;

use crate::Error;
use crate::output::compare::Labeled;
use crate::output::line::Field;

/// One saved prompt and output.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedOutput {
    /// The prompt as text (chat messages as `role: content` lines).
    pub prompt: String,
    pub output: String,
    pub output_tokens: usize,
    pub max_tokens: u64,
    pub ttft_ms: Option<f64>,
    pub e2e_ms: f64,
    pub error: Option<String>,
}

/// A run's saved outputs and settings.
#[derive(Debug, Clone)]
pub struct RunOutputs {
    pub label: String,
    pub settings: Value,
    pub outputs: Vec<SavedOutput>,
}

/// The settings that change what a model writes: runs compared side by side should agree on
/// these (the model and tokenizer may differ on purpose).
pub const SAMPLING_SETTINGS: &[&str] = &[
    "temperature",
    "top_p",
    "ignore_eos",
    "max_tokens_min",
    "max_tokens_max",
    "extra_request_body",
    "apply_chat_template",
    "prompt_suffix",
];

fn prompt_text(prompt: &Value) -> String {
    match prompt {
        Value::String(s) => s.clone(),
        Value::Array(messages) => messages
            .iter()
            .map(|m| {
                format!(
                    "{}: {}",
                    m["role"].as_str().unwrap_or("?"),
                    m["content"].as_str().unwrap_or("")
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
        other => other.to_string(),
    }
}

/// The saved outputs of one result line, `None` when it has none.
pub fn of_line(run: &Labeled) -> Option<RunOutputs> {
    let Some(Field::Json(Value::Array(items))) = run.line.get("outputs") else {
        return None;
    };
    let outputs = items
        .iter()
        .map(|o| SavedOutput {
            prompt: prompt_text(&o["prompt"]),
            output: o["output"].as_str().unwrap_or("").to_owned(),
            output_tokens: o["output_tokens"]
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .unwrap_or(0),
            max_tokens: o["max_tokens"].as_u64().unwrap_or(0),
            ttft_ms: o["ttft_ms"].as_f64(),
            e2e_ms: o["e2e_ms"].as_f64().unwrap_or(0.0),
            error: o["error"].as_str().map(str::to_owned),
        })
        .collect();
    let settings = match run.line.get("settings") {
        Some(Field::Json(v)) => v.clone(),
        _ => Value::Null,
    };
    Some(RunOutputs { label: run.label.clone(), settings, outputs })
}

/// Every line's outputs; a line without any is an error that says how to get them.
pub fn of_lines(runs: &[Labeled]) -> Result<Vec<RunOutputs>, Error> {
    runs.iter()
        .map(|r| {
            of_line(r).ok_or_else(|| {
                Error::Config(format!(
                    "{}: the line has no saved outputs; run the bench with --save-outputs",
                    r.label
                ))
            })
        })
        .collect()
}

/// The sampling settings on which `runs` disagree, each with every run's value.
pub fn settings_differences(runs: &[RunOutputs]) -> Vec<(String, Vec<String>)> {
    let mut out = Vec::new();
    for key in SAMPLING_SETTINGS {
        let values: Vec<String> = runs
            .iter()
            .map(|r| match r.settings.get(*key) {
                None | Some(Value::Null) => "-".to_owned(),
                Some(v) => v.to_string(),
            })
            .collect();
        if values.iter().any(|v| *v != values[0]) {
            out.push(((*key).to_owned(), values));
        }
    }
    out
}

/// The prompts of all runs in first-seen order; each run's output for each (by prompt text).
pub fn align(runs: &[RunOutputs]) -> Vec<(String, Vec<Option<&SavedOutput>>)> {
    let mut prompts: Vec<&str> = Vec::new();
    for run in runs {
        for o in &run.outputs {
            if !prompts.contains(&o.prompt.as_str()) {
                prompts.push(&o.prompt);
            }
        }
    }
    prompts
        .into_iter()
        .map(|p| {
            let row = runs.iter().map(|r| r.outputs.iter().find(|o| o.prompt == p)).collect();
            (p.to_owned(), row)
        })
        .collect()
}
