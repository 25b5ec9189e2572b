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
