//! NATS with authentication and TLS, against real nats-servers configured for them: a
//! frontend and a worker log in with a user and password (as flags or in the URL), a token,
//! or over TLS with a client certificate, and serve a request; wrong credentials fail with
//! an error that never shows the secret.

#![allow(clippy::unwrap_used)]

#[path = "support/secure.rs"]
mod secure;
mod support;

use std::path::Path;

use secure::{certificates, failing_worker, serve_one_request};
use support::nats_server::NatsServer;

/// File store in `dir`, NATS plane, and `extra`.
fn nats_flags(dir: &Path, extra: &[&str]) -> Vec<String> {
    let store = dir.join("store").to_str().unwrap().to_owned();
    let mut flags: Vec<String> =
        ["--store", "file", "--store-dir", &store, "--request-plane", "nats"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
    flags.extend(extra.iter().map(|s| (*s).to_owned()));
    flags
}

fn strs(flags: &[String]) -> Vec<&str> {
    flags.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password_as_flags_or_in_the_url_and_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_with(&["--user", "alice", "--pass", "s3cret-pw"]);
    let url = nats.url();
    let flags = nats_flags(
        dir.path(),
        &["--nats-url", &url, "--nats-user", "alice", "--nats-password", "s3cret-pw"],
    );
    serve_one_request(&strs(&flags)).await;
    let with_userinfo = url.replace("nats://", "nats://alice:s3cret-pw@");
    let dir2 = tempfile::tempdir().unwrap();
    serve_one_request(&strs(&nats_flags(dir2.path(), &["--nats-url", &with_userinfo]))).await;

    let wrong = url.replace("nats://", "nats://alice:not-the-pw@");
    let stderr = failing_worker(&strs(&nats_flags(dir.path(), &["--nats-url", &wrong])));
    assert!(stderr.contains("connecting to NATS"), "{stderr}");
    assert!(!stderr.contains("not-the-pw"), "the password is shown: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token() {
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start_with(&["--auth", "t0ken-value"]);
    let url = nats.url();
    serve_one_request(&strs(&nats_flags(
        dir.path(),
        &["--nats-url", &url, "--nats-token", "t0ken-value"],
    )))
    .await;
    let wrong = nats_flags(dir.path(), &["--nats-url", &url, "--nats-token", "other-t0ken"]);
    let stderr = failing_worker(&strs(&wrong));
    assert!(!stderr.contains("other-t0ken"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let certs_dir = dir.path().join("certs");
    std::fs::create_dir(&certs_dir).unwrap();
    let c = certificates(&certs_dir);
    let nats = NatsServer::start_with(&[
        "--tlsverify",
        "--tlscert",
        &c.server_cert,
        "--tlskey",
        &c.server_key,
        "--tlscacert",
        &c.ca,
    ]);
    let url = nats.url();
    let tls = [
        "--nats-url",
        &url,
        "--nats-tls-ca",
        &c.ca,
        "--nats-tls-cert",
        &c.client_cert,
        "--nats-tls-key",
        &c.client_key,
    ];
    serve_one_request(&strs(&nats_flags(dir.path(), &tls))).await;
    // Without the client certificate the server refuses the connection.
    let stderr = failing_worker(&strs(&nats_flags(
        dir.path(),
        &["--nats-url", &url, "--nats-tls-ca", &c.ca],
    )));
    assert!(stderr.contains("connecting to NATS"), "{stderr}");
}
