//! Fault tests against real servers: the discovery store restarted under traffic.
//! (SIGKILL and SIGTERM of workers are covered per topology in `e2e.rs`.)

#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::{Mode, Topology, WAIT};

const MODEL: &str = "switchyard-tiny";

/// Sends requests one after another until told to stop; returns (ok, failed) counts and the
/// first failures.
async fn traffic(
    http: reqwest::Client,
    url: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (usize, usize, Vec<String>) {
    let (mut ok, mut failed, mut errors) = (0, 0, Vec::new());
    let body = json!({"model": MODEL, "prompt": "keep going", "max_tokens": 3});
    while !*stop.borrow() {
        let (status, resp) =
            support::post_json(&http, &format!("{url}/v1/completions"), &body).await;
        if status == 200 {
            ok += 1;
        } else {
            failed += 1;
            if errors.len() < 5 {
                errors.push(format!("{status} {resp}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (ok, failed, errors)
}

/// Runs `restart` on the topology's etcd on a blocking thread; how long it took.
async fn restart_etcd(
    t: &mut Topology,
    restart: fn(&mut support::etcd_server::EtcdServer),
) -> Duration {
    let mut etcd = t.servers.etcd.take().unwrap();
    let started = Instant::now();
    let etcd = tokio::task::spawn_blocking(move || {
        restart(&mut etcd);
        etcd
    })
    .await
    .unwrap();
    t.servers.etcd = Some(etcd);
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restart_keeps_serving_from_the_last_view() {
    let mut t = Topology::start_on(Mode::ETCD_TCP, &[MODEL, MODEL], &[]).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(traffic(t.http.clone(), t.url.clone(), stop_rx));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // etcd goes down and comes back on its data: the frontend serves from its last view
    // meanwhile, and the workers' leases carry on.
    let back_after = restart_etcd(&mut t, support::etcd_server::EtcdServer::restart).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_tx.send(true).unwrap();
    let (ok, failed, errors) = tokio::time::timeout(WAIT, load).await.unwrap().unwrap();
    eprintln!("etcd restart: back after {back_after:?}; {ok} ok, {failed} failed");
    assert_eq!(failed, 0, "requests failed while etcd restarted: {errors:?}");
    assert!(ok > 10, "too little traffic to tell: {ok}");
    assert_eq!(support::health_instances(&t.health().await).get(MODEL), Some(&2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_losing_its_data_makes_workers_register_again() {
    let mut t = Topology::start_on(Mode::ETCD_TCP, &[MODEL, MODEL], &[]).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(traffic(t.http.clone(), t.url.clone(), stop_rx));
    tokio::time::sleep(Duration::from_millis(500)).await;

    // etcd loses everything: keys, leases, revisions. The workers' keep-alives find their
    // leases gone and register again. (Until they do, etcd says no worker exists, and a
    // frontend that re-read it may answer 503 for up to a third of the lease TTL.)
    let back_after = restart_etcd(&mut t, support::etcd_server::EtcdServer::restart_wiped).await;
    let back = Instant::now();
    // A frontend started now sees only what etcd holds, so it tells when the workers are back.
    let fresh = t.start_frontend(&[]);
    let deadline = Instant::now() + WAIT;
    while fresh.instance_count().await != Some(2) {
        assert!(Instant::now() < deadline, "workers did not register again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let registered_after = back.elapsed();
    t.wait_instances(2).await;
    stop_tx.send(true).unwrap();
    let (ok, failed, _) = tokio::time::timeout(WAIT, load).await.unwrap().unwrap();
    eprintln!(
        "etcd wiped: back after {back_after:?}; workers registered {registered_after:?} later; {ok} ok, {failed} failed meanwhile"
    );
    for _ in 0..10 {
        let url = format!("{}/v1/completions", t.url);
        let body = json!({"model": MODEL, "prompt": "after", "max_tokens": 2});
        let (status, resp) = support::post_json(&t.http, &url, &body).await;
        assert_eq!(status, 200, "{resp}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_ends_or_completes_in_flight_and_serves_again_within_5s() {
    let mut t = Topology::start_on(Mode::FILE_NATS, &[MODEL, MODEL], &[]).await;
    let body = json!({"model": MODEL, "prompt": "through nats", "max_tokens": 3});
    let url = format!("{}/v1/completions", t.url);
    for _ in 0..5 {
        let (status, resp) = support::post_json(&t.http, &url, &body).await;
        assert_eq!(status, 200, "{resp}");
    }

    // A stream in flight when NATS goes away must end (an error or its end), never hang.
    let slow = json!({"model": MODEL, "prompt": "long", "max_tokens": 2000, "stream": true});
    let send = t.http.post(&url).json(&slow).send();
    let mut resp = tokio::time::timeout(WAIT, send).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    tokio::time::timeout(WAIT, resp.chunk()).await.unwrap().unwrap();

    let nats = support::bounce_nats(t.servers.nats.take().unwrap()).await;
    let back = Instant::now();
    t.servers.nats = Some(nats);

    // The in-flight stream is read beside the new requests: it must end within the wait
    // (completed, moved to another instance, or with an error event), never hang.
    let in_flight = tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(chunk)) =
            tokio::time::timeout(WAIT, resp.chunk()).await.expect("in-flight stream hung")
        {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text
    });

    // New requests succeed within 5 s of NATS being back, and keep succeeding.
    let mut first_ok = None;
    while back.elapsed() < Duration::from_secs(5) {
        let (status, _) = support::post_json(&t.http, &url, &body).await;
        if status == 200 {
            first_ok = Some(back.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let first_ok = first_ok.expect("no request succeeded within 5 s of NATS coming back");
    for _ in 0..10 {
        let (status, resp) = support::post_json(&t.http, &url, &body).await;
        assert_eq!(status, 200, "{resp}");
    }
    let text = in_flight.await.unwrap();
    let ended_with_error = text.contains("\"error\"");
    let completed = text.contains("\"finish_reason\":\"length\"");
    assert!(
        ended_with_error || completed,
        "in-flight stream ended without its end: …{}",
        &text[text.len().saturating_sub(400)..]
    );
    eprintln!(
        "NATS restart: in-flight stream {}; first success {first_ok:?} after NATS was back",
        if completed { "completed" } else { "ended with an error" }
    );
}
