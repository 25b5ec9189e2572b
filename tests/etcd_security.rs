//! etcd with TLS (client certificates verified) and with authentication, against real etcd
//! servers configured for them: a frontend and a worker connect and serve a request; without
//! the certificate or the password they fail, and the password is never shown.

#![allow(clippy::unwrap_used)]

#[path = "support/secure.rs"]
mod secure;
mod support;

use secure::{certificates, failing_worker, serve_one_request};
use support::etcd_server::EtcdServer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let c = certificates(dir.path());
    let etcd = tokio::task::spawn_blocking({
        let (ca, cert, key) = (c.ca.clone(), c.server_cert.clone(), c.server_key.clone());
        move || EtcdServer::start_tls(ca.into(), cert.into(), key.into())
    })
    .await
    .unwrap();
    let endpoint = etcd.endpoint();
    assert!(endpoint.starts_with("https://"));
    let store = ["--store", "etcd", "--etcd-endpoints", &endpoint, "--etcd-tls-ca", &c.ca];
    let client = ["--etcd-tls-cert", &c.client_cert, "--etcd-tls-key", &c.client_key];
    serve_one_request(&[&store[..], &client[..]].concat()).await;
    let stderr = failing_worker(&store);
    assert!(stderr.contains("connecting to etcd"), "{stderr}");
    let stderr = failing_worker(&["--store", "etcd", "--etcd-endpoints", &endpoint]);
    assert!(stderr.contains("--etcd-tls-ca"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_password() {
    let etcd = tokio::task::spawn_blocking(EtcdServer::start).await.unwrap();
    let endpoint = etcd.endpoint();
    // etcd's authentication on: a root user, as etcdctl would make it.
    let mut admin = etcd_client::Client::connect([&endpoint], None).await.unwrap();
    admin.user_add("root", "r00t-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();

    let store = ["--store", "etcd", "--etcd-endpoints", &endpoint];
    let login = ["--etcd-user", "root", "--etcd-password", "r00t-pw"];
    serve_one_request(&[&store[..], &login[..]].concat()).await;
    let wrong = ["--etcd-user", "root", "--etcd-password", "not-the-pw"];
    let stderr = failing_worker(&[&store[..], &wrong[..]].concat());
    assert!(stderr.contains("connecting to etcd"), "{stderr}");
    assert!(!stderr.contains("not-the-pw"), "the password is shown: {stderr}");
}
