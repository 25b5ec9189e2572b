//! The worker's status port and `switchyard health`, against the real binary: `/live`,
//! `/health` while registered, `/metrics` in Prometheus text, and the probe's exit codes.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{WAIT, bin, client, free_port, start_worker};

#[tokio::test]
async fn a_worker_reports_live_health_and_metrics_and_the_probe_agrees() {
    let store = tempfile::tempdir().unwrap();
    let store_dir = store.path().to_str().unwrap().to_owned();
    let status = free_port().to_string();
    let mut worker = start_worker(
        &["--store", "file", "--store-dir", &store_dir],
        "status-model",
        &["--metrics-port", &status, "--instance-id", "w-status"],
    );
    let http = client();
    let url = |path: &str| format!("http://127.0.0.1:{status}{path}");

    // Healthy once registered: bounded poll.
    let started = Instant::now();
    let body = loop {
        if let Ok(resp) = http.get(url("/health")).send().await
            && resp.status() == 200
        {
            break resp.json::<serde_json::Value>().await.unwrap();
        }
        assert!(started.elapsed() < WAIT, "the worker never reported healthy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(body["status"], "serving", "{body}");
    // The GPUs it sees: none on a machine without a CUDA driver, but always the list.
    assert!(body["gpus"].is_array(), "{body}");
    assert_eq!(body["instance"], "w-status", "{body}");
    assert_eq!(http.get(url("/live")).send().await.unwrap().status(), 200);
    let metrics = http.get(url("/metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        "switchyard_worker_registered{instance=\"w-status\",model=\"status-model\"} 1",
        "switchyard_worker_draining{instance=\"w-status\",model=\"status-model\"} 0",
        "switchyard_worker_kv_total_blocks{instance=\"w-status\",model=\"status-model\"} 16384",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no {line:?} in\n{metrics}");
    }

    // The probe: nothing on the frontend's port here, so the worker's status port decides.
    let unused = free_port().to_string();
    let probe = |args: &[&str]| {
        Command::new(bin()).arg("health").args(args).output().expect("running switchyard health")
    };
    let out = probe(&["--http-port", &unused, "--metrics-port", &status]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = probe(&["--url", &format!("http://127.0.0.1:{unused}/live"), "--timeout-secs", "2"]);
    assert!(!out.status.success(), "a probe of a closed port must fail");

    // SIGTERM: deregisters, drains, exits 0.
    worker.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(worker.wait_exit(WAIT).success());
    let out = probe(&["--http-port", &unused, "--metrics-port", &status]);
    assert!(!out.status.success(), "a stopped worker must not probe healthy");
}
