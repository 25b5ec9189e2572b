//! The corpus test: real models' chat templates (llama.cpp's collection, from the
//! llama-cpp-python source distribution, fetched by `scripts/llama_cpp_sdist.sh`) rendered here
//! and by Python Jinja2 configured as `transformers` configures it
//! (`scripts/render_chat_templates.py`), over the cases in `tests/data/chat_template_cases.json`.
//! Every case Jinja2 renders must render here to the same text.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use minijinja::Value;
use serde::Deserialize;

use super::ChatTemplate;
use crate::conversation::{ChatInput, SpecialTokens, render};
use crate::literal::SpecialTexts;

/// Cases where this renderer knowingly differs from Jinja2, with why.
const KNOWN_DIFFERENCES: &[(&str, &str, &str)] = &[
    // `"…"|safe + tool | tojson`: MarkupSafe HTML-escapes a plain string added to a `Markup`,
    // so transformers prompts this model with `&#34;`-escaped tool JSON; minijinja's `+` does
    // not escape (and the model is better off without it).
    ("meetkai-functionary-medium-v3.1.jinja", "tools_offered", "Markup + str escaping"),
    ("meetkai-functionary-medium-v3.1.jinja", "tool_call_round_trip", "Markup + str escaping"),
    ("meetkai-functionary-medium-v3.1.jinja", "tool_call_null_content", "Markup + str escaping"),
];

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<Value>,
    tools: Option<Value>,
    documents: Option<Value>,
    kwargs: Option<Value>,
    add_generation_prompt: Option<bool>,
    continue_final_message: Option<bool>,
}

/// What Jinja2 made of one case: the text, or the error it raised.
#[derive(Deserialize)]
struct Expected {
    out: Option<String>,
    err: Option<String>,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn run(command: &mut Command) -> Vec<u8> {
    let output = command.output().expect("runs");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// The templates directory of the unpacked sdist (fetched with the venv's pip, which a
/// fresh machine's system Python may lack).
fn template_dir(root: &Path) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![root.join(".venv/bin")];
    dirs.extend(std::env::split_paths(&path));
    let path = std::env::join_paths(dirs).expect("PATH");
    let out =
        run(Command::new("bash").arg(root.join("scripts/llama_cpp_sdist.sh")).env("PATH", path));
    let sdist = String::from_utf8(out).expect("utf-8");
    PathBuf::from(sdist.trim()).join("vendor/llama.cpp/models/templates")
}

#[test]
fn real_templates_render_as_transformers_renders_them() {
    let root = repo_root();
    let python = root.join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/setup.sh", python.display());
    let templates = template_dir(&root);
    let cases_path = root.join("frontend/tests/data/chat_template_cases.json");
    let expected = run(Command::new(&python)
        .arg(root.join("scripts/render_chat_templates.py"))
        .arg(&templates)
        .arg(&cases_path));
    let expected: BTreeMap<String, BTreeMap<String, serde_json::Value>> =
        serde_json::from_slice(&expected).expect("script output");
    let cases: Vec<Case> =
        serde_json::from_slice(&std::fs::read(&cases_path).expect("cases")).expect("cases parse");
    // Special-token spellings in content are masked while rendering: the text must not change.
    // (`<think>` tags are added tokens but not special ones, and templates split content on
    // them, so they are not masked.)
    let in_content = SpecialTexts::new(
        ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "[INST]", "<|eot_id|>"].map(String::from),
    );
    let special = SpecialTokens { bos: "<s>", eos: "</s>", in_content: in_content.as_ref() };

    let (mut same, mut both_refuse, mut python_only_refuses, mut known) = (0, 0, 0, 0);
    let mut failures = Vec::new();
    let mut lenient = Vec::new();
    for (name, results) in &expected {
        let source = std::fs::read_to_string(templates.join(name)).expect("template");
        let template = match ChatTemplate::compile(&source) {
            Ok(t) => t,
            Err(e) => {
                failures.push(format!("{name}: does not compile: {e:#}"));
                continue;
            }
        };
        for case in &cases {
            let Some(result) = results.get(&case.name) else {
                failures.push(format!("{name}: no Jinja2 result for {}", case.name));
                continue;
            };
            let expected: Expected = serde_json::from_value(result.clone()).expect("result shape");
            let input = ChatInput {
                messages: &case.messages,
                tools: case.tools.as_ref(),
                documents: case.documents.as_ref(),
                kwargs: case.kwargs.as_ref(),
                add_generation_prompt: case.add_generation_prompt.unwrap_or(true),
                continue_final_message: case.continue_final_message.unwrap_or(false),
            };
            let ours = render(&template, special, &input).map(|prompt| prompt.text);
            let is_known = KNOWN_DIFFERENCES.iter().any(|(t, c, _)| *t == name && *c == case.name);
            match (&expected.out, ours) {
                (Some(want), Ok(got)) if *want == got => same += 1,
                (Some(_), Ok(_)) if is_known => known += 1,
                (Some(want), Ok(got)) => failures.push(format!(
                    "{name} / {}: differs at byte {}\n  jinja2: {:?}\n  ours:   {:?}",
                    case.name,
                    first_difference(want, &got),
                    around(want, first_difference(want, &got)),
                    around(&got, first_difference(want, &got)),
                )),
                (Some(_), Err(e)) => failures
                    .push(format!("{name} / {}: jinja2 renders, ours fails: {e}", case.name)),
                (None, Err(_)) => both_refuse += 1,
                (None, Ok(_)) => {
                    python_only_refuses += 1;
                    lenient.push(format!(
                        "{name} / {}: {}",
                        case.name,
                        expected.err.as_deref().unwrap_or("")
                    ));
                }
            }
        }
    }
    let templates_count = expected.len();
    println!(
        "{templates_count} templates, {} cases each: {same} identical, {known} known \
         differences, {both_refuse} refused by both, {python_only_refuses} refused by Jinja2 \
         only, {} failures",
        cases.len(),
        failures.len()
    );
    // Where Jinja2's sandbox refuses and minijinja renders (iterating `None`, `list.append`,
    // attributes of undefined values): shown, not failed.
    for case in &lenient {
        println!("  refused by Jinja2 only: {case}");
    }
    for must in [
        "Qwen-Qwen3-0.6B",
        "Qwen3-Coder",
        "openai-gpt-oss-120b",
        "meta-llama-Llama-3.3-70B-Instruct",
        "mistralai-Mistral-Nemo-Instruct-2407",
    ] {
        assert!(expected.contains_key(&format!("{must}.jinja")), "{must} is not in the corpus");
    }
    assert!(templates_count >= 60, "only {templates_count} templates found");
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

fn first_difference(a: &str, b: &str) -> usize {
    a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count()
}

/// Up to 60 bytes of `s` from a little before `at`.
fn around(s: &str, at: usize) -> &str {
    let mut start = at.saturating_sub(20).min(s.len());
    while !s.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + 40).min(s.len());
    while !s.is_char_boundary(end) {
        end += 1;
    }
    &s[start..end]
}
