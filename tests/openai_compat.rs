//! API compatibility: the official `openai` Python client against `switchyard up`.
//!
//! Needs `.venv/bin/python` with `openai` installed (`bash scripts/setup.sh` makes it); the
//! test fails, never skips, when it is missing.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use support::{WAIT, free_port, repo_root, spawn, url_in, wait_for_line};

#[test]
fn the_official_openai_client_works_against_switchyard_up() {
    let python = std::env::var_os("SWITCHYARD_TEST_PYTHON")
        .map_or_else(|| repo_root().join(".venv/bin/python"), Into::into);
    assert!(
        python.exists(),
        "{} not found: run `bash scripts/setup.sh` (it installs the openai client)",
        python.display()
    );
    let port = free_port().to_string();
    let mut up = spawn(
        "switchyard up",
        &[
            "up",
            "--workers",
            "2",
            "--http-host",
            "127.0.0.1",
            "--http-port",
            &port,
            "--speedup-ratio",
            "50",
        ],
    );
    let url = url_in(&wait_for_line(&mut up, "switchyard is up"));
    let output = Command::new(&python)
        .arg(repo_root().join("tests/openai_client.py"))
        .args([&url, "switchyard-tiny"])
        .output()
        .expect("running the openai client");
    assert!(
        output.status.success(),
        "openai client failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Ctrl-C stops the whole topology cleanly.
    up.signal(nix::sys::signal::Signal::SIGINT);
    let status = up.wait_exit(WAIT);
    assert!(status.success(), "switchyard up exited with {status:?}");
}
