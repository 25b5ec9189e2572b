//! NATS with authentication and TLS, against real nats-servers configured for them: a
//! frontend and a worker log in with a user and password (as flags or in the URL), a token,
//! or over TLS with a client certificate, and serve a request; wrong credentials fail with
//! an error that never shows the secret.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::Command;

use serde_json::json;
use support::nats_server::NatsServer;
use support::{Proc, spawn, url_in, wait_for_line};

const MODEL: &str = "switchyard-tiny";

/// A frontend and one worker on a file store in `dir`, both with `nats` flags; one request
/// through them must succeed.
async fn serve_one_request(dir: &Path, nats: &[&str]) {
    let store = dir.join("store");
    let store = store.to_str().unwrap();
    let mut common = vec!["--store", "file", "--store-dir", store, "--request-plane", "nats"];
    common.extend_from_slice(nats);
    let mut worker_args = vec!["worker", "--model-name", MODEL, "--lease-ttl-secs", "2"];
    worker_args.extend_from_slice(&common);
    let _worker: Proc = spawn("worker", &worker_args);
    let mut frontend_args = vec!["frontend", "--http-host", "127.0.0.1", "--http-port", "0"];
    frontend_args.extend_from_slice(&common);
    let mut frontend = spawn("frontend", &frontend_args);
    let url = url_in(&wait_for_line(&mut frontend, "listening on"));
    let http = support::client();
    let body = json!({"model": MODEL, "prompt": "secure", "max_tokens": 3});
    let deadline = std::time::Instant::now() + support::WAIT;
    loop {
        let (status, resp) =
            support::post_json(&http, &format!("{url}/v1/completions"), &body).await;
        if status == 200 {
            assert_eq!(resp["usage"]["completion_tokens"], 3, "{resp}");
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{status} {resp}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Runs a worker that must fail to connect: its stderr.
fn failing_worker(dir: &Path, nats: &[&str]) -> String {
    let store = dir.join("store");
    let mut args =
        vec!["worker", "--model-name", MODEL, "--store", "file", "--request-plane", "nats"];
    args.extend_from_slice(&["--store-dir", store.to_str().unwrap()]);
    args.extend_from_slice(nats);
    let out = Command::new(support::bin()).args(&args).output().unwrap();
    assert!(!out.status.success(), "the worker connected");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_as_flags_or_in_the_url_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_with(&["--user", "alice", "--pass", "s3cret-pw"]);
    let url = nats.url();
    serve_one_request(
        dir.path(),
        &["--nats-url", &url, "--nats-user", "alice", "--nats-password", "s3cret-pw"],
    )
    .await;
    let with_userinfo = url.replace("nats://", "nats://alice:s3cret-pw@");
    let dir2 = tempfile::tempdir().unwrap();
    serve_one_request(dir2.path(), &["--nats-url", &with_userinfo]).await;

    let wrong = url.replace("nats://", "nats://alice:not-the-pw@");
    let stderr = failing_worker(dir.path(), &["--nats-url", &wrong]);
    assert!(stderr.contains("connecting to NATS"), "{stderr}");
    assert!(!stderr.contains("not-the-pw"), "the password is shown: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_with(&["--auth", "t0ken-value"]);
    serve_one_request(dir.path(), &["--nats-url", &nats.url(), "--nats-token", "t0ken-value"])
        .await;
    let stderr =
        failing_worker(dir.path(), &["--nats-url", &nats.url(), "--nats-token", "other-t0ken"]);
    assert!(!stderr.contains("other-t0ken"), "{stderr}");
}

/// Runs openssl in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("openssl is needed to make test certificates (apt-get install openssl): {e}")
    });
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn certificates(dir: &Path) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=switchyard-test-ca"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
            format!("{name}.ext"),
        );
        let mut req = vec!["req", "-subj", "/CN=127.0.0.1", "-keyout", &key, "-out", &csr];
        req.extend_from_slice(&ec);
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-out",
                &pem,
                "-extfile",
                &ext,
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    certificates(&certs);
    let path = |name: &str| certs.join(name).to_str().unwrap().to_owned();
    let (ca, server_pem, server_key) = (path("ca.pem"), path("server.pem"), path("server.key"));
    let nats = NatsServer::start_with(&[
        "--tlsverify",
        "--tlscert",
        &server_pem,
        "--tlskey",
        &server_key,
        "--tlscacert",
        &ca,
    ]);
    let (client_pem, client_key) = (path("client.pem"), path("client.key"));
    serve_one_request(
        dir.path(),
        &[
            "--nats-url",
            &nats.url(),
            "--nats-tls-ca",
            &ca,
            "--nats-tls-cert",
            &client_pem,
            "--nats-tls-key",
            &client_key,
        ],
    )
    .await;
    // Without the client certificate the server refuses the connection.
    let stderr = failing_worker(dir.path(), &["--nats-url", &nats.url(), "--nats-tls-ca", &ca]);
    assert!(stderr.contains("connecting to NATS"), "{stderr}");
}
