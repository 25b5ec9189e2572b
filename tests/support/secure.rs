//! Helpers of the tests of secured stores and planes: test certificates made with openssl, a
//! frontend and worker that must serve one request, a worker that must fail to connect.
//! Included by those tests only (`#[path = "support/secure.rs"] mod secure;`).

// Each including test uses its own part of this file.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::support::{self, Proc, spawn, url_in, wait_for_line};

const MODEL: &str = "switchyard-tiny";

/// A frontend and one worker with `flags` (store, plane and their security); one request
/// through them must succeed.
pub async fn serve_one_request(flags: &[&str]) {
    let mut worker_args = vec!["worker", "--model-name", MODEL, "--lease-ttl-secs", "2"];
    worker_args.extend_from_slice(flags);
    let _worker: Proc = spawn("worker", &worker_args);
    let mut frontend_args = vec!["frontend", "--http-host", "127.0.0.1", "--http-port", "0"];
    frontend_args.extend_from_slice(flags);
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

/// Runs a worker with `flags` that must fail to connect: its stderr.
pub fn failing_worker(flags: &[&str]) -> String {
    let mut args = vec!["worker", "--model-name", MODEL];
    args.extend_from_slice(flags);
    let out = Command::new(support::bin()).args(&args).output().unwrap();
    assert!(!out.status.success(), "the worker connected");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Test certificates: a CA, a server certificate for 127.0.0.1, a client certificate.
pub struct Certs {
    pub ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_cert: String,
    pub client_key: String,
}

/// Runs openssl in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap_or_else(|e| {
        panic!("openssl is needed to make test certificates (apt-get install openssl): {e}")
    });
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// Makes [`Certs`] in `dir`.
pub fn certificates(dir: &Path) -> Certs {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=switchyard-test-ca"];
    ca.extend_from_slice(&ec);
    ca.extend_from_slice(&["-keyout", "ca.key", "-out", "ca.pem"]);
    openssl(dir, &ca);
    // The server certificate serves as a client's too (the TCP plane's processes are both).
    let server_ext = "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n";
    std::fs::write(dir.join("server.ext"), server_ext).unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for name in ["server", "client"] {
        let file = |ext: &str| format!("{name}.{ext}");
        let (key, csr, pem, ext) = (file("key"), file("csr"), file("pem"), file("ext"));
        let mut req = vec!["req", "-subj", "/CN=127.0.0.1", "-keyout", &key, "-out", &csr];
        req.extend_from_slice(&ec);
        openssl(dir, &req);
        let sign = ["x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key"];
        let rest = ["-CAcreateserial", "-days", "1", "-out", &pem, "-extfile", &ext];
        openssl(dir, &[&sign[..], &rest[..]].concat());
    }
    let path = |name: &str| -> String {
        let p: PathBuf = dir.join(name);
        p.to_str().unwrap().to_owned()
    };
    Certs {
        ca: path("ca.pem"),
        server_cert: path("server.pem"),
        server_key: path("server.key"),
        client_cert: path("client.pem"),
        client_key: path("client.key"),
    }
}
