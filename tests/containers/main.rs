//! Container tests: the compose files of `deploy/compose` run as real containers with their
//! own addresses, from an image built offline from the binary of this test run
//! (`deploy/build-image.sh`), and lose workers — killed, cut off the network — and their etcd,
//! under client traffic. Tests talk to a deployment only through the frontend's port
//! published on 127.0.0.1, and from inside its containers.
//!
//! Needs Docker with docker-compose (or the compose plugin), and debootstrap for the first
//! image build (`bash scripts/setup.sh` installs it). The figures each step measured are
//! printed (`cargo nextest run --test containers --no-capture`).

#![allow(clippy::unwrap_used)]

#[path = "../support/mod.rs"]
mod support;

mod deployment;
mod traffic;

use std::time::{Duration, Instant};

use deployment::{Deployment, LEASE_TTL, compose_program, ok};
use serde_json::json;
use support::repo_root;
use traffic::{REQUEST_LIMIT, Traffic, chat, first_success};

/// Slack on top of the lease TTL for a lost worker to leave `/health`: the store noticing the
/// expiry and the frontend's watch delivering it.
const EXPIRY_SLACK: Duration = Duration::from_secs(2);
/// Loops of client traffic kept running through every fault.
const LOOPS: usize = 2;

/// Local mode: a file store on a shared volume, requests over TCP, two workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_two_workers_lose_a_worker_and_a_partition() {
    let d = Deployment::up("local-2", 2).await;
    api_works(&d).await;

    let killed = kill_and_count(&d, "worker-2", 2).await;
    d.start("worker-2");
    d.wait_instances(2, Duration::from_secs(60)).await;

    // A partition cannot take a worker out of a file store shared through a volume: its
    // lease lives on. The frontend goes around it (connect fails, another worker takes the
    // request) and sends to it again once it is back.
    let traffic = Traffic::start(&d.base_url, LOOPS);
    d.disconnect("worker-2");
    let cut = Instant::now();
    tokio::time::sleep(LEASE_TTL + EXPIRY_SLACK).await;
    assert_eq!(d.instance_count().await, Some(2), "the file-store lease outlives a partition");
    settled_requests_succeed(&d).await;
    let (during, error) = traffic.stop().await;
    let partitioned_for = cut.elapsed();
    assert!(during.failed <= LOOPS as u64, "{during:?}: {error:?}");
    d.reconnect("worker-2");
    serves_again(&d, "worker-2").await;
    report(
        "local-2",
        &format!(
            "kill: out of /health after {:.2} s, traffic {}; partition ({:.1} s, the worker stays \
             listed): traffic {} ({error:?})",
            killed.0.as_secs_f64(),
            tally(&killed.1),
            partitioned_for.as_secs_f64(),
            tally(&during),
        ),
    );
    d.down();
}

/// Server mode: etcd and NATS, four workers; losses, a partition, a graceful stop and an
/// etcd restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_four_workers_lose_workers_a_partition_and_etcd() {
    let d = Deployment::up("server-4", 4).await;
    api_works(&d).await;

    let killed = kill_and_count(&d, "worker-4", 4).await;

    // A partition: the worker's lease expires in etcd, so it leaves routing; joined again,
    // it registers again and takes requests.
    let traffic = Traffic::start(&d.base_url, LOOPS);
    d.disconnect("worker-3");
    let out = d.wait_instances(2, LEASE_TTL + EXPIRY_SLACK).await;
    // The worker itself says so too, once its lease went unconfirmed for a TTL.
    let unhealthy = wait_until(LEASE_TTL + EXPIRY_SLACK, || !d.healthy_inside("worker-3"));
    assert!(unhealthy, "a worker cut off from etcd must stop reporting healthy");
    settled_requests_succeed(&d).await;
    let (partition, error) = traffic.stop().await;
    // Only a request the worker was streaming when cut off may fail.
    assert!(partition.failed <= LOOPS as u64, "{partition:?}: {error:?}");
    d.reconnect("worker-3");
    let back = d.wait_instances(3, Duration::from_secs(30)).await;
    serves_again(&d, "worker-3").await;
    assert!(d.healthy_inside("worker-3"));

    // SIGTERM to the worker as PID 1: it deregisters at once (no lease wait) and exits 0.
    let started = Instant::now();
    let code = d.stop("worker-2", Duration::from_secs(20));
    let stop_took = started.elapsed();
    assert_eq!(code, 0, "a worker stopped with SIGTERM exits 0\n{}", d.logs());
    let gone = d.wait_instances(2, Duration::from_secs(5)).await;

    // etcd restarts: new requests succeed within 5 s of its return, and the workers are
    // still registered.
    let traffic = Traffic::start(&d.base_url, LOOPS);
    d.restart("etcd");
    let after_etcd = first_success(&d.base_url, Duration::from_secs(5)).await;
    d.wait_instances(2, Duration::from_secs(15)).await;
    settled_requests_succeed(&d).await;
    let (etcd, etcd_error) = traffic.stop().await;
    assert_eq!(etcd.failed, 0, "requests failed across the etcd restart: {etcd_error:?}");

    report(
        "server-4",
        &format!(
            "kill: out of /health after {:.2} s, traffic {}; partition: out after {:.2} s, \
             traffic {} ({error:?}), back in /health {:.2} s after reconnect; SIGTERM: exit 0 \
             in {:.2} s, out of /health {:.2} s later; etcd restart: first request OK {:.2} s \
             after its return, traffic {}",
            killed.0.as_secs_f64(),
            tally(&killed.1),
            out.as_secs_f64(),
            tally(&partition),
            back.as_secs_f64(),
            stop_took.as_secs_f64(),
            gone.as_secs_f64(),
            after_etcd.as_secs_f64(),
            tally(&etcd),
        ),
    );
    d.down();
}

/// Prefill/decode split: one prefill and one decode worker serve the API together. The file
/// sets `SWITCHYARD_WORKER_ROLE`; it runs once the binary reads it (worker roles come with
/// prefill/decode serving).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs worker roles (SWITCHYARD_WORKER_ROLE), which this build does not read yet"]
async fn disaggregated_one_prefill_one_decode_serve_and_lose_the_decode_worker() {
    let d = Deployment::up("disagg-1p1d", 2).await;
    api_works(&d).await;
    let code = d.stop("decode-1", Duration::from_secs(20));
    assert_eq!(code, 0, "{}", d.logs());
    d.wait_instances(1, Duration::from_secs(5)).await;
    d.start("decode-1");
    d.wait_instances(2, Duration::from_secs(60)).await;
    settled_requests_succeed(&d).await;
    d.down();
}

/// `compose config` accepts every shipped compose file, GPU ones included.
#[test]
fn every_compose_file_passes_compose_config() {
    let dir = repo_root().join("deploy/compose");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 6, "{files:?}");
    let program = compose_program();
    for file in files {
        let file = file.display().to_string();
        let mut args: Vec<&str> = program[1..].to_vec();
        args.extend(["-f", &file, "config", "-q"]);
        ok(program[0], &args, &[], Duration::from_secs(60));
    }
}

/// The Kubernetes manifests are YAML documents with a kind and a name each, and every
/// Deployment's containers have probes (parsed with PyYAML, which docker-compose 1.29 brings).
#[test]
fn kubernetes_manifests_parse_with_probes() {
    let check = r#"
import glob, sys, yaml
files = sorted(glob.glob(sys.argv[1] + "/*.yaml"))
assert len(files) >= 3, files
for f in files:
    docs = [d for d in yaml.safe_load_all(open(f)) if d]
    kinds = [d["kind"] for d in docs]
    assert "Service" in kinds and "Deployment" in kinds, (f, kinds)
    for d in docs:
        assert d["apiVersion"] and d["metadata"]["name"], (f, d)
        if d["kind"] == "Deployment" and d["metadata"]["name"].startswith("switchyard-"):
            for c in d["spec"]["template"]["spec"]["containers"]:
                assert c["livenessProbe"]["httpGet"]["path"] == "/live", (f, c)
                assert c["readinessProbe"]["httpGet"]["path"] == "/health", (f, c)
print("ok", len(files))
"#;
    let dir = repo_root().join("deploy/k8s").display().to_string();
    let out = ok("/usr/bin/python3", &["-c", check, &dir], &[], Duration::from_secs(60));
    assert!(out.starts_with("ok"), "{out}");
}

/// Chat, streamed chat and completions through the frontend's published port, then the
/// official `openai` client.
async fn api_works(d: &Deployment) {
    let http = support::client();
    let url = |path: &str| format!("{}{path}", d.base_url);
    let chat_body = json!({"model": "switchyard-tiny", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6});
    let (status, body) = support::post_json(&http, &url("/v1/chat/completions"), &chat_body).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 6, "{body}");
    let mut stream = chat_body.clone();
    stream["stream"] = json!(true);
    let (status, events) = support::post_sse(&http, &url("/v1/chat/completions"), &stream).await;
    assert_eq!(status, 200);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let completion = json!({"model": "switchyard-tiny", "prompt": "Once", "max_tokens": 5});
    let (status, body) = support::post_json(&http, &url("/v1/completions"), &completion).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 5, "{body}");

    let python = repo_root().join(".venv/bin/python");
    assert!(python.exists(), "{} missing: run `bash scripts/setup.sh`", python.display());
    let script = repo_root().join("tests/openai_client.py").display().to_string();
    ok(
        python.to_str().unwrap(),
        &[&script, &d.base_url, "switchyard-tiny"],
        &[],
        Duration::from_secs(120),
    );
}

/// Kills `service` under traffic; how long until it left `/health`, and what the traffic saw
/// until then and for a settled stretch after.
async fn kill_and_count(
    d: &Deployment,
    service: &str,
    workers: usize,
) -> (Duration, traffic::Counts) {
    let traffic = Traffic::start(&d.base_url, LOOPS);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(traffic.counts().ok > 0, "no traffic before the kill");
    d.kill(service);
    let out = d.wait_instances(workers - 1, LEASE_TTL + EXPIRY_SLACK).await;
    settled_requests_succeed(d).await;
    let (counts, error) = traffic.stop().await;
    // Only a request the killed worker was serving may fail.
    assert!(counts.failed <= LOOPS as u64, "{counts:?}: {error:?}");
    (out, counts)
}

/// Once a fault has settled, requests one after another all succeed.
async fn settled_requests_succeed(d: &Deployment) {
    for i in 0..10 {
        let prompt = format!("settled {i}");
        let answer = tokio::time::timeout(REQUEST_LIMIT, chat(&d.base_url, &prompt));
        answer.await.unwrap().unwrap_or_else(|e| panic!("request {i} after the fault: {e}"));
    }
}

/// Sends requests until `service` has taken one more (round-robin spreads them).
async fn serves_again(d: &Deployment, service: &str) {
    let before = d.requests_per_instance().await.get(service).copied().unwrap_or(0);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        chat(&d.base_url, "back again").await.unwrap();
        if d.requests_per_instance().await.get(service).copied().unwrap_or(0) > before {
            return;
        }
    }
    panic!("{service} took no request within 60 s of rejoining\n{}", d.logs());
}

/// Polls `check` until it holds or `limit` passes; whether it held.
fn wait_until(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < limit {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check()
}

fn tally(c: &traffic::Counts) -> String {
    format!("{} failed of {}, slowest {:.2} s", c.failed, c.ok + c.failed, c.slowest.as_secs_f64())
}

fn report(name: &str, line: &str) {
    eprintln!("MEASURED {name}: {line}");
}
