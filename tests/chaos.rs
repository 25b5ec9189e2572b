//! Chaos under streamed load (the real binary, 3 workers, 64 streams at a time): one worker
//! SIGKILLed, another SIGSTOPped, and over NATS the NATS server restarted. Nothing may fail:
//! every response reaches its full length, and its text is the text the same request gets
//! when nothing goes wrong (responses moved to another instance carry on exactly where they
//! broke). A dead instance is out of routing after its first failure.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use support::{Mode, Topology, WAIT};

const MODEL: &str = "switchyard-tiny";
const CONCURRENCY: usize = 64;
const MAX_TOKENS: u64 = 200;
/// Bound on one streamed request, faults included.
const REQUEST_LIMIT: Duration = Duration::from_secs(60);

/// One finished request.
struct Outcome {
    seed: u64,
    started: Instant,
    ended: Instant,
    result: Result<Done, String>,
}

#[derive(Debug, PartialEq, Eq)]
struct Done {
    text: String,
    finish: String,
    completion_tokens: u64,
}

fn body(seed: u64) -> Value {
    json!({"model": MODEL, "prompt": format!("chaos number {seed}"), "max_tokens": MAX_TOKENS,
        "ignore_eos": true, "seed": seed, "stream": true,
        "stream_options": {"include_usage": true}})
}

/// One streamed completion, read to its end: its text, finish reason and usage, or why not.
async fn stream_one(http: &reqwest::Client, url: &str, seed: u64) -> Result<Done, String> {
    let run = async {
        let mut resp = http.post(url).json(&body(seed)).send().await.map_err(|e| e.to_string())?;
        if resp.status() != 200 {
            return Err(format!("{} {}", resp.status(), resp.text().await.unwrap_or_default()));
        }
        // Bytes first: a network chunk may end inside a character.
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
            bytes.extend_from_slice(&chunk);
        }
        let raw = String::from_utf8(bytes).map_err(|e| format!("not UTF-8: {e}"))?;
        let (mut text, mut finish, mut tokens, mut done) = (String::new(), None, None, false);
        for data in raw.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data == "[DONE]" {
                done = true;
                continue;
            }
            let event: Value = serde_json::from_str(data).map_err(|e| format!("{e}: {data}"))?;
            if event.get("error").is_some() {
                return Err(format!("error event: {data}"));
            }
            if let Some(choice) = event["choices"].get(0) {
                text.push_str(choice["text"].as_str().unwrap_or_default());
                if let Some(reason) = choice["finish_reason"].as_str() {
                    finish = Some(reason.to_owned());
                }
            }
            if let Some(n) = event["usage"]["completion_tokens"].as_u64() {
                tokens = Some(n);
            }
        }
        if !done {
            return Err(format!("no [DONE]: …{}", &raw[raw.len().saturating_sub(300)..]));
        }
        Ok(Done {
            text,
            finish: finish.ok_or("no finish_reason")?,
            completion_tokens: tokens.ok_or("no usage")?,
        })
    };
    tokio::time::timeout(REQUEST_LIMIT, run).await.unwrap_or_else(|_| Err("timed out".into()))
}

/// Streams requests `CONCURRENCY` at a time until `stop`, counting finished ones in `done`;
/// every outcome.
async fn load(t: &Topology, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) -> Vec<Outcome> {
    let url = format!("{}/v1/completions", t.url);
    let next = Arc::new(AtomicU64::new(0));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let mut clients = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, url, next, stop, outcomes) =
            (t.http.clone(), url.clone(), next.clone(), stop.clone(), outcomes.clone());
        let done = done.clone();
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                let started = Instant::now();
                let result = stream_one(&http, &url, seed).await;
                let outcome = Outcome { seed, started, ended: Instant::now(), result };
                outcomes.lock().unwrap().push(outcome);
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for client in clients {
        client.await.unwrap();
    }
    Arc::try_unwrap(outcomes).ok().unwrap().into_inner().unwrap()
}

/// What `/health` says of instance `id` now: its state, or `None` once it is not listed.
async fn state_of(t: &Topology, id: &str) -> Option<String> {
    let health = t.health().await;
    health["workers"]
        .as_array()?
        .iter()
        .find(|w| w["instance_id"] == id)
        .map(|w| w["state"].as_str().unwrap_or_default().to_owned())
}

/// Polls `/health` until instance `id` is no longer `serving`, then until it is not listed:
/// both times, from `since`.
async fn watch_leaving(t: &Topology, id: &str, since: Instant) -> (Duration, Duration) {
    let deadline = Instant::now() + WAIT;
    let mut out_of_routing = None;
    loop {
        let state = state_of(t, id).await;
        if out_of_routing.is_none() && state.as_deref() != Some("serving") {
            out_of_routing = Some(since.elapsed());
        }
        if state.is_none() {
            return (out_of_routing.unwrap(), since.elapsed());
        }
        assert!(Instant::now() < deadline, "{id} still listed as {state:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The frontend's `instance_failures_total` for one instance and cause.
fn failures(metrics: &str, id: &str, cause: &str) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("switchyard_frontend_instance_failures_total{"))
        .filter(|l| l.contains(&format!("instance=\"{id}\"")))
        .filter(|l| l.contains(&format!("cause=\"{cause}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn nothing_is_lost(mode: Mode) {
    let mut t = Topology::start_on(mode, &[], &[]).await;
    // Real time (about 1.2 s per response): the workers must still be generating when the
    // faults strike. Ten times faster, a busy frontend falls behind the workers, which have
    // then sent whole responses before they die, and the faults move nothing.
    for id in ["w0", "w1", "w2"] {
        t.add_worker(MODEL, &["--instance-id", id, "--speedup-ratio", "1"]);
    }
    t.wait_instances(3).await;

    let stop = Arc::new(AtomicBool::new(false));
    let mut nats_server = t.servers.nats.take();
    let started = Instant::now();
    let done = Arc::new(AtomicU64::new(0));
    let (outcomes, events) = tokio::join!(load(&t, stop.clone(), done.clone()), async {
        let mut events = Vec::new();
        // Faults strike a steady load: every worker streaming responses part-way through
        // (on a busy machine the first responses take a while).
        let deadline = Instant::now() + WAIT;
        while done.load(Ordering::Relaxed) < 2 * CONCURRENCY as u64 {
            assert!(Instant::now() < deadline, "the load did not get going");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let killed = Instant::now();
        t.workers[0].signal(Signal::SIGKILL);
        let (out, gone) = watch_leaving(&t, "w0", killed).await;
        eprintln!("{mode:?}: SIGKILLed w0 out of routing after {out:?}, unlisted after {gone:?}");
        events.push(killed);

        tokio::time::sleep(Duration::from_millis(1000)).await;
        let frozen = Instant::now();
        t.workers[1].signal(Signal::SIGSTOP);
        let (out, gone) = watch_leaving(&t, "w1", frozen).await;
        eprintln!("{mode:?}: SIGSTOPped w1 out of routing after {out:?}, unlisted after {gone:?}");
        events.push(frozen);

        if let Some(nats) = nats_server.take() {
            tokio::time::sleep(Duration::from_millis(1000)).await;
            let restarted = Instant::now();
            nats_server = Some(support::bounce_nats(nats).await);
            eprintln!("{mode:?}: NATS restarted in {:?}", restarted.elapsed());
            events.push(restarted);
        }
        tokio::time::sleep(Duration::from_millis(2000)).await;
        stop.store(true, Ordering::Relaxed);
        events
    });
    let took = started.elapsed();
    t.servers.nats = nats_server;
    let metrics = t.metrics().await;
    t.workers[1].signal(Signal::SIGCONT);

    let failed: Vec<String> = outcomes
        .iter()
        .filter_map(|o| o.result.as_ref().err().map(|e| format!("seed {}: {e}", o.seed)))
        .collect();
    let migrations = metric_sum(&metrics, "switchyard_frontend_migrations_total");
    eprintln!(
        "{mode:?}: {} requests in {took:?}, {} failed, {migrations} moved mid-stream; \
         failures seen: w0 unreachable {} broken {}; w1 unreachable {} broken {} stalled {}; \
         probes of w0 after its first failure: {}",
        outcomes.len(),
        failed.len(),
        failures(&metrics, "w0", "unreachable"),
        failures(&metrics, "w0", "broken"),
        failures(&metrics, "w1", "unreachable"),
        failures(&metrics, "w1", "broken"),
        failures(&metrics, "w1", "stall"),
        metric_sum(&metrics, "switchyard_frontend_instance_probes_total{instance=\"w0\"}"),
    );
    assert!(
        failed.is_empty(),
        "{} of {} failed: {:?}",
        failed.len(),
        outcomes.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(migrations >= 1.0, "no response was moved; the faults missed the load");
    for o in &outcomes {
        let done = o.result.as_ref().unwrap();
        assert_eq!(
            (done.finish.as_str(), done.completion_tokens),
            ("length", MAX_TOKENS),
            "seed {}",
            o.seed
        );
    }
    // After its first failure a dead worker gets at most the breaker's probes (1 s, then 2 s
    // apart) until its lease (2 s) ends.
    let probes = metric_sum(&metrics, "switchyard_frontend_instance_probes_total{instance=\"w0\"}");
    assert!(probes <= 3.0, "{probes} requests were let through to the dead worker");

    // Every request in flight at a fault, and a sample of the rest, gives the same text again
    // with nothing going wrong.
    let at_fault = |o: &&Outcome| events.iter().any(|&e| o.started <= e && e <= o.ended);
    let again: Vec<&Outcome> =
        outcomes.iter().filter(|o| at_fault(o) || o.seed % 10 == 0).collect();
    let url = format!("{}/v1/completions", t.url);
    let rerun: Vec<_> =
        futures::stream::iter(
            again.iter().map(|o| {
                let (http, url) = (t.http.clone(), url.clone());
                async move {
                    (o.seed, stream_one(&http, &url, o.seed).await, o.result.as_ref().unwrap())
                }
            }),
        )
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let checked = rerun.len();
    for (seed, result, first) in rerun {
        let result = result.unwrap_or_else(|e| panic!("seed {seed} again: {e}"));
        assert_eq!(&result, first, "seed {seed}: the text differs from an undisturbed run");
    }
    eprintln!(
        "{mode:?}: {checked} outputs (all {} in flight at a fault) match an undisturbed run",
        again.iter().filter(|o| at_fault(o)).count()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_over_file_and_tcp() {
    nothing_is_lost(Mode::FILE_TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_over_etcd_and_nats() {
    nothing_is_lost(Mode::ETCD_NATS).await;
}

/// Starts one long streamed request; its response once the first chunk is in.
async fn start_long(t: &Topology, seed: u64) -> (reqwest::Response, Vec<u8>) {
    let mut req = body(seed);
    req["max_tokens"] = json!(3000);
    let send = t.http.post(format!("{}/v1/completions", t.url)).json(&req).send();
    let mut resp = tokio::time::timeout(WAIT, send).await.unwrap().unwrap();
    assert_eq!(resp.status(), 200);
    let first = tokio::time::timeout(WAIT, resp.chunk()).await.unwrap().unwrap().unwrap();
    (resp, first.to_vec())
}

/// SIGTERMs worker 0 (drain timeout 1 s) and reads the response to its end.
async fn drain_and_read(
    t: &Topology,
    (mut resp, mut bytes): (reqwest::Response, Vec<u8>),
) -> String {
    t.workers[0].signal(Signal::SIGTERM);
    while let Some(chunk) = tokio::time::timeout(WAIT, resp.chunk()).await.unwrap().unwrap() {
        bytes.extend_from_slice(&chunk);
    }
    String::from_utf8(bytes).unwrap()
}

fn tail(body: &str) -> &str {
    &body[body.len().saturating_sub(400)..]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_by_a_drain_timeout_moves_on_or_ends_with_an_error_never_stop() {
    // One slow worker (simulated real time): the drain timeout cuts the response.
    let slow = ["--speedup-ratio", "1", "--drain-timeout-secs", "1", "--instance-id", "slow"];
    let mut t = Topology::start_on(Mode::FILE_TCP, &[], &[]).await;
    t.add_worker(MODEL, &slow);
    t.wait_instances(1).await;
    let alone = drain_and_read(&t, start_long(&t, 1).await).await;
    assert!(alone.contains("\"error\""), "…{}", tail(&alone));
    assert!(!alone.contains("\"finish_reason\":\"stop\""), "{alone}");
    assert!(!alone.contains("\"finish_reason\":\"length\""), "{alone}");
    t.workers[0].wait_exit(WAIT);

    // With another instance, the cut response moves there and ends whole.
    t.workers.clear();
    t.add_worker(MODEL, &slow);
    t.wait_instances(1).await;
    let started = start_long(&t, 2).await;
    t.add_worker(MODEL, &["--speedup-ratio", "50", "--instance-id", "other"]);
    t.wait_instances(2).await;
    let moved = drain_and_read(&t, started).await;
    assert!(!moved.contains("\"error\""), "…{}", tail(&moved));
    assert!(moved.contains("\"finish_reason\":\"length\""), "…{}", tail(&moved));
    assert!(moved.contains("\"completion_tokens\":3000"), "…{}", tail(&moved));
    let metrics = t.metrics().await;
    assert!(
        metrics.contains("switchyard_frontend_migrations_total{cause=\"cancelled\"} 1"),
        "{metrics}"
    );
}
