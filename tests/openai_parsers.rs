//! Output parsers end to end: `switchyard up` with a mocker that replays recorded Qwen3-style
//! outputs (`--replay-output`) and the Qwen3 reasoning and Hermes tool-call parsers, driven by
//! the official `openai` Python client (`tests/openai_parsers_client.py`).
//!
//! Needs `.venv/bin/python` with `openai` (`bash scripts/setup.sh`); fails, never skips, when
//! it is missing.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use support::{WAIT, free_port, repo_root, spawn, url_in, wait_for_line};

/// Replayed outputs, by request seed.
const OUTPUTS: [&str; 3] = [
    "<think>\nThe user says hello. I will greet back.\n</think>\n\nHello! How can I help you today?",
    "<think>\nI need the weather tool.\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\", \"unit\": \"celsius\"}}\n</tool_call>",
    "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n</tool_call>",
];

#[test]
fn the_openai_client_reads_reasoning_tool_calls_and_responses() {
    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} not found: run `bash scripts/setup.sh`", python.display());
    let dir = tempfile::tempdir().unwrap();
    let replay = dir.path().join("outputs.json");
    std::fs::write(&replay, serde_json::to_vec(&OUTPUTS).unwrap()).unwrap();
    let port = free_port().to_string();
    let mut up = spawn(
        "switchyard up",
        &[
            "up",
            "--workers",
            "1",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            &port,
            "--speedup-ratio",
            "100",
            "--reasoning-parser",
            "qwen3",
            "--tool-call-parser",
            "hermes",
            "--replay-output",
            replay.to_str().unwrap(),
        ],
    );
    let url = url_in(&wait_for_line(&mut up, "switchyard is up"));
    let output = Command::new(&python)
        .arg(repo_root().join("tests/openai_parsers_client.py"))
        .args([&url, "switchyard-tiny"])
        .output()
        .expect("running the openai client");
    assert!(
        output.status.success(),
        "openai client failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    up.signal(nix::sys::signal::Signal::SIGINT);
    let status = up.wait_exit(WAIT);
    assert!(status.success(), "switchyard up exited with {status:?}");
}

/// A worker whose model's chat template does not compile refuses to start, saying why, so
/// the model is never registered.
#[test]
fn a_worker_refuses_a_model_whose_template_does_not_compile() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    let files = switchyard_model::ModelFiles::resolve(switchyard_model::DEFAULT_SOURCE).unwrap();
    std::fs::write(model.join("tokenizer.json"), &*files.tokenizer_json).unwrap();
    let config = serde_json::json!({"chat_template": "{% if messages %}{{ messages[0] }"});
    std::fs::write(model.join("tokenizer_config.json"), config.to_string()).unwrap();
    let store = dir.path().join("store");
    let mut child = Command::new(support::bin())
        .args(["worker", "--store", "file", "--store-dir", store.to_str().unwrap()])
        .args(["--model-path", model.to_str().unwrap()])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the worker did not exit");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(!status.success());
    assert!(stderr.contains("chat template"), "{stderr}");
}
