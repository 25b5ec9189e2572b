//! HTTPS on the frontend through the real binary: with a certificate and key it serves the
//! API over TLS only (a client that trusts the CA gets answers, streamed too; plain HTTP on
//! the port gets none), and files that cannot be used stop it at start with a clear error.

#![allow(clippy::unwrap_used)]

#[path = "support/secure.rs"]
mod secure;
mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Proc, spawn, url_in, wait_for_line};

const MODEL: &str = "switchyard-tiny";

/// `curl` with `args`: its exit status and stdout.
fn curl(args: &[&str]) -> (bool, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("curl is needed (apt-get install curl): {e}"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_frontend_serves_https_with_a_certificate_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let c = secure::certificates(dir.path());
    let store = dir.path().join("store").to_str().unwrap().to_owned();
    let base = ["--store", "file", "--store-dir", &store];
    let mut args = vec!["worker", "--model-name", MODEL];
    args.extend_from_slice(&base);
    let _worker: Proc = spawn("worker", &args);
    let mut args = vec!["frontend", "--http-host", "127.0.0.1", "--http-port", "0"];
    args.extend_from_slice(&base);
    args.extend_from_slice(&["--tls-cert-file", &c.server_cert, "--tls-key-file", &c.server_key]);
    let mut frontend = spawn("frontend", &args);
    let url = url_in(&wait_for_line(&mut frontend, "listening on"));
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");

    let body = r#"{"model":"switchyard-tiny","prompt":"over TLS","max_tokens":4,"stream":true}"#;
    let completions = format!("{url}/v1/completions");
    let headers = ["-H", "content-type: application/json", "--cacert", &c.ca];
    let deadline = Instant::now() + support::WAIT;
    let streamed = loop {
        let (ok, out) = curl(&[&headers[..], &["-d", body, &completions]].concat());
        if ok && out.contains("[DONE]") {
            break out;
        }
        assert!(Instant::now() < deadline, "no streamed answer over HTTPS: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(streamed.matches("\"finish_reason\":\"length\"").count(), 1, "{streamed}");
    let (ok, live) = curl(&["--cacert", &c.ca, &format!("{url}/live")]);
    assert!(ok, "{live}");

    // A client that does not trust the CA refuses the server; plain HTTP gets no answer.
    let (ok, _) = curl(&[&format!("{url}/live")]);
    assert!(!ok, "a client without the CA accepted the certificate");
    let plain = url.replacen("https://", "http://", 1);
    let (ok, out) = curl(&[&format!("{plain}/live")]);
    assert!(!ok && out.is_empty(), "plain HTTP was answered: {out}");
    // The server still answers after those.
    assert!(curl(&["--cacert", &c.ca, &format!("{url}/live")]).0);
}

#[test]
fn unusable_certificate_files_stop_the_frontend_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let c = secure::certificates(dir.path());
    let store = dir.path().join("store").to_str().unwrap().to_owned();
    let run = |extra: &[&str]| {
        let mut args = vec!["frontend", "--http-port", "0", "--store", "file", "--store-dir"];
        args.push(&store);
        args.extend_from_slice(extra);
        let out = Command::new(support::bin()).args(&args).output().unwrap();
        assert!(!out.status.success(), "{extra:?}: the frontend started");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let missing = run(&["--tls-cert-file", "/nonexistent.pem", "--tls-key-file", &c.server_key]);
    assert!(missing.contains("cannot read the certificate /nonexistent.pem"), "{missing}");
    // The key of another certificate.
    let mismatched = run(&["--tls-cert-file", &c.server_cert, "--tls-key-file", &c.client_key]);
    assert!(mismatched.contains("do not make a server"), "{mismatched}");
    let key = std::fs::read_to_string(&c.client_key).unwrap();
    let body = key.lines().nth(1).unwrap();
    assert!(!mismatched.contains(body), "the key was printed");
    let alone = run(&["--tls-cert-file", &c.server_cert]);
    assert!(alone.contains("--tls-key-file"), "{alone}");
}
