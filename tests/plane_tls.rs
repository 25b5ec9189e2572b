//! TLS on the TCP plane through the real binary: a frontend and workers given the fabric's
//! CA, certificates and keys (clients verified) serve requests — aggregated, and split with
//! the KV handed from the prefill to the decode worker over TLS too; a frontend without a
//! certificate reaches no worker.

#![allow(clippy::unwrap_used)]

#[path = "support/secure.rs"]
mod secure;
mod support;

use serde_json::json;
use support::{Proc, spawn, url_in, wait_for_line};

const MODEL: &str = "switchyard-tiny";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_events_and_kv_handoffs_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let c = secure::certificates(dir.path());
    let store = dir.path().join("store").to_str().unwrap().to_owned();
    let tls = [
        "--plane-tls-ca",
        &c.ca,
        "--plane-tls-cert",
        &c.server_cert,
        "--plane-tls-key",
        &c.server_key,
        "--plane-tls-verify-clients",
    ];
    let base = ["--store", "file", "--store-dir", &store];
    let flags: Vec<&str> = [&base[..], &tls[..]].concat();

    // Aggregated: one worker, its events and its requests over TLS.
    secure::serve_one_request(&flags).await;

    // Split: a prefill and a decode worker (a store of their own); the decode worker pulls
    // the KV over TLS.
    let split_store = dir.path().join("split").to_str().unwrap().to_owned();
    let base = ["--store", "file", "--store-dir", &split_store];
    let flags: Vec<&str> = [&base[..], &tls[..]].concat();
    let workers: Vec<Proc> = ["prefill", "decode"]
        .iter()
        .map(|role| {
            let mut args = vec!["worker", "--model-name", MODEL, "--role", role];
            args.extend_from_slice(&flags);
            spawn(role, &args)
        })
        .collect();
    let mut args = vec!["frontend", "--http-host", "127.0.0.1", "--http-port", "0"];
    args.extend_from_slice(&flags);
    args.extend_from_slice(&["--max-local-prefill-tokens", "0"]);
    let mut frontend = spawn("frontend", &args);
    let url = url_in(&wait_for_line(&mut frontend, "listening on"));
    let http = support::client();
    let deadline = std::time::Instant::now() + support::WAIT;
    while support::get_json(&http, &format!("{url}/health")).await.1["instances"][MODEL] != 2 {
        assert!(std::time::Instant::now() < deadline, "the split workers did not register");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let prompt = "a prompt long enough to be prefilled on the prefill worker ".repeat(8);
    let body = json!({"model": MODEL, "prompt": prompt, "max_tokens": 8});
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let (status, resp) =
            support::post_json(&http, &format!("{url}/v1/completions"), &body).await;
        let metrics =
            http.get(format!("{url}/metrics")).send().await.unwrap().text().await.unwrap();
        let remote = metrics.lines().any(|l| {
            l.starts_with("switchyard_frontend_prefills_total{place=\"remote\"")
                && !l.ends_with(" 0")
        });
        if status == 200 && remote {
            assert_eq!(resp["usage"]["completion_tokens"], 8, "{resp}");
            assert!(!metrics.contains("switchyard_frontend_prefill_fallbacks_total{"), "{metrics}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {resp}\n{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    drop(workers);

    // A frontend with no certificate is refused by the workers.
    let worker = {
        let mut args = vec!["worker", "--model-name", "switchyard-tls-only"];
        args.extend_from_slice(&flags);
        spawn("tls worker", &args)
    };
    let mut args = vec!["frontend", "--http-host", "127.0.0.1", "--http-port", "0"];
    args.extend_from_slice(&base);
    let mut plain = spawn("plain frontend", &args);
    let plain_url = url_in(&wait_for_line(&mut plain, "listening on"));
    let body = json!({"model": "switchyard-tls-only", "prompt": "x", "max_tokens": 2});
    let deadline = std::time::Instant::now() + support::WAIT;
    let status = loop {
        let (status, resp) =
            support::post_json(&http, &format!("{plain_url}/v1/completions"), &body).await;
        // 404 until the model is seen in the store; then the worker must refuse it.
        if status != 404 {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {resp}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    assert_eq!(status, 503, "a frontend without TLS reached a TLS worker");
    drop(worker);
}
