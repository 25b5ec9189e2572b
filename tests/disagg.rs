//! Prefill/decode split end to end, with the real binary on a file store over TCP and over
//! NATS: one namespace holds an aggregated topology (agg:1), another a split one (1p1d, a
//! prefill and a decode worker), both on the same servers.
//!
//! - With the same `seed`, 1p1d answers exactly what agg:1 answers (chat and completions,
//!   streamed and not), usage included.
//! - The decode worker's KV events carry the handed-over blocks, its load counts them, and a
//!   repeat of the prompt is served from its cache.
//! - A prefill worker killed (SIGKILL) under load fails no request: the decode worker
//!   prefills, and the frontend counts the fallbacks.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use support::{
    Mode, PlaneMode, Proc, Servers, WAIT, client, free_port, post_json, post_sse, spawn, url_in,
    wait_for_line,
};
use switchyard_proto::worker_event::Event;
use switchyard_proto::{InstanceRecord, Role, kv_event};
use switchyard_runtime::events::{
    EventStream, EventSubscriber, NatsEventSubscriber, TcpEventConfig, TcpEventSubscriber,
};
use switchyard_runtime::store::file::FileStore;
use switchyard_runtime::{Discovery, InstanceWatch};
use tokio_util::sync::CancellationToken;

const MODEL: &str = "switchyard-tiny";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_serving_over_tcp() {
    split_serving(Mode::FILE_TCP).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_serving_over_nats() {
    split_serving(Mode::FILE_NATS).await;
}

/// A frontend and its workers in one namespace.
struct Namespaced {
    _frontend: Proc,
    workers: Vec<Proc>,
    /// Each worker's status port, as `http://127.0.0.1:PORT`.
    status_urls: Vec<String>,
    url: String,
}

fn start(
    servers: &Servers,
    namespace: &str,
    roles: &[&str],
    frontend_extra: &[&str],
) -> Namespaced {
    let mut flags: Vec<&str> = servers.store_flags.iter().map(String::as_str).collect();
    flags.extend(["--namespace", namespace, "--lease-ttl-secs", "2"]);
    let ports: Vec<String> = roles.iter().map(|_| free_port().to_string()).collect();
    let workers = roles
        .iter()
        .zip(&ports)
        .map(|(role, port)| {
            let mut args = vec!["worker", "--model-name", MODEL, "--role", role];
            args.extend_from_slice(&flags);
            args.extend(["--speedup-ratio", "20", "--drain-timeout-secs", "5"]);
            args.extend(["--metrics-port", port]);
            spawn(&format!("{namespace} {role} worker"), &args)
        })
        .collect();
    let status_urls = ports.iter().map(|port| format!("http://127.0.0.1:{port}")).collect();
    let mut args = vec!["frontend", "--http-host", "127.0.0.1", "--http-port", "0"];
    args.extend_from_slice(&flags);
    args.extend_from_slice(frontend_extra);
    let mut frontend = spawn(&format!("{namespace} frontend"), &args);
    let url = url_in(&wait_for_line(&mut frontend, "listening on"));
    Namespaced { _frontend: frontend, workers, status_urls, url }
}

async fn wait_instances(url: &str, n: usize) {
    let deadline = Instant::now() + WAIT;
    let http = client();
    loop {
        let count = match http.get(format!("{url}/health")).send().await {
            Ok(resp) => resp.json::<Value>().await.ok().map(|b| support::health_instances(&b)),
            Err(_) => None,
        };
        if count.as_ref().is_some_and(|c| c.values().sum::<usize>() == n) {
            return;
        }
        assert!(Instant::now() < deadline, "expected {n} instances at {url}, saw {count:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A prompt of 200-odd tokens: over one KV block, under the local-prefill limit of none.
fn prompt(i: usize) -> String {
    format!("Request {i}: tell me a long story about trains and switchyards. ").repeat(12)
}

/// The text and usage of a response, streamed or not.
async fn answer(url: &str, endpoint: &str, body: &Value) -> (String, Value) {
    let http = client();
    let target = format!("{url}{endpoint}");
    if body["stream"] == json!(true) {
        let (status, events) = post_sse(&http, &target, body).await;
        assert_eq!(status, 200, "{events:?}");
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
        let chunks: Vec<Value> =
            events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"].get(0))
            .filter_map(|c| c["delta"]["content"].as_str().or(c["text"].as_str()))
            .collect();
        let usage = chunks.last().map(|c| c["usage"].clone()).unwrap_or_default();
        return (text, usage);
    }
    let (status, response) = post_json(&http, &target, body).await;
    assert_eq!(status, 200, "{response}");
    let choice = &response["choices"][0];
    let text = choice["message"]["content"].as_str().or(choice["text"].as_str()).unwrap();
    (text.to_owned(), response["usage"].clone())
}

/// The four kinds of request, each with a prompt of its own (so none is a repeat).
fn bodies(i: usize) -> Vec<(&'static str, Value)> {
    let chat = |stream: bool| {
        let content = prompt(i * 10 + usize::from(stream));
        json!({"model": MODEL, "messages": [{"role": "user", "content": content}],
               "max_tokens": 24, "seed": 7 + i, "stream": stream,
               "stream_options": {"include_usage": true}})
    };
    let completion = |stream: bool| {
        let content = prompt(i * 10 + 2 + usize::from(stream));
        json!({"model": MODEL, "prompt": content, "max_tokens": 24, "seed": 7 + i,
               "stream": stream, "stream_options": {"include_usage": true}})
    };
    vec![
        ("/v1/chat/completions", chat(false)),
        ("/v1/chat/completions", chat(true)),
        ("/v1/completions", completion(false)),
        ("/v1/completions", completion(true)),
    ]
}

async fn split_serving(mode: Mode) {
    let servers = tokio::task::spawn_blocking(move || Servers::start(mode)).await.unwrap();
    let agg = start(&servers, "agg", &["aggregated"], &[]);
    // A remote prefill for anything over one block's worth of uncached tokens, so a repeat
    // served from the decode worker's cache is prefilled there.
    let split_flags = ["--max-local-prefill-tokens", "15"];
    let split = start(&servers, "split", &["prefill", "decode"], &split_flags);
    wait_instances(&agg.url, 1).await;
    wait_instances(&split.url, 2).await;

    let stop = CancellationToken::new();
    let store = FileStore::open(servers.store_dir.path()).unwrap();
    let watch =
        Discovery::new(Arc::new(store), "split").watch_instances(stop.clone()).await.unwrap();
    let decode = instance_with_role(&watch, Role::Decode);
    let prefill = instance_with_role(&watch, Role::Prefill);
    assert!(!prefill.kv_transfer_address.is_empty(), "{prefill:?}");

    // The same tokens, whichever way the request is served.
    for (endpoint, body) in bodies(0) {
        let (agg_text, agg_usage) = answer(&agg.url, endpoint, &body).await;
        let (split_text, split_usage) = answer(&split.url, endpoint, &body).await;
        assert_eq!(split_text, agg_text, "{endpoint} {}", body["stream"]);
        assert_eq!(split_usage["prompt_tokens"], agg_usage["prompt_tokens"]);
        assert_eq!(split_usage["completion_tokens"], 24);
        assert_eq!(agg_usage["completion_tokens"], 24);
    }
    let scraped = scrape(&split.url).await;
    assert!(
        counter(&scraped, "switchyard_frontend_prefills_total{place=\"remote\"") >= 4.0,
        "{scraped}"
    );
    // The decode worker's own page counts the hand-offs it pulled.
    let scraped = scrape(&split.status_urls[1]).await;
    assert!(counter(&scraped, "switchyard_worker_kv_transfer_bytes_total") > 0.0, "{scraped}");
    assert!(counter(&scraped, "switchyard_worker_kv_transfer_seconds_count") >= 4.0, "{scraped}");
    assert_eq!(counter(&scraped, "switchyard_worker_kv_transfer_failures_total"), 0.0);

    // A new prompt: its blocks reach the decode worker by hand-off, and show up in its KV
    // events and, while it decodes (long enough for a few load reports), in its load.
    let mut events = subscribe(mode, &servers, &watch).await;
    let body = json!({"model": MODEL, "prompt": prompt(1000), "max_tokens": 1000, "seed": 1});
    let (_, usage) = answer(&split.url, "/v1/completions", &body).await;
    let prompt_tokens = usage["prompt_tokens"].as_u64().unwrap();
    let full_blocks = prompt_tokens / 16;
    let (stored, peak_blocks) = decode_events(&mut events, &decode.instance_id, full_blocks).await;
    assert!(stored >= full_blocks, "decode worker stored {stored} of {full_blocks} blocks");
    assert!(peak_blocks >= full_blocks, "decode worker's load peaked at {peak_blocks} blocks");
    // The repeat finds the prompt cached on the decode worker, which prefills the rest.
    let (_, usage) = answer(&split.url, "/v1/completions", &body).await;
    // (The last prompt token is always computed again, so a prompt of whole blocks reuses
    // all but its last.)
    let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0);
    assert!(cached >= (full_blocks - 1) * 16 && cached > 0, "{usage}");
    let scraped = scrape(&split.url).await;
    assert!(
        counter(
            &scraped,
            "switchyard_frontend_prefills_total{place=\"local\",reason=\"short_prompt\"}"
        ) >= 1.0,
        "{scraped}"
    );

    // The only prefill worker dies under load: every request still succeeds.
    let load = (0..48).map(|i| {
        let url = split.url.clone();
        async move {
            let body = json!({"model": MODEL, "prompt": prompt(100 + i), "max_tokens": 32, "stream": i % 2 == 0,
                "stream_options": {"include_usage": true}});
            answer(&url, "/v1/completions", &body).await
        }
    });
    let mut results = futures::stream::iter(load).buffer_unordered(6);
    let mut done = 0;
    while let Some((_, usage)) = tokio::time::timeout(WAIT, results.next()).await.unwrap() {
        assert_eq!(usage["completion_tokens"], 32, "{usage}");
        done += 1;
        if done == 8 {
            split.workers[0].signal(Signal::SIGKILL);
        }
    }
    assert_eq!(done, 48);
    let scraped = scrape(&split.url).await;
    assert!(counter(&scraped, "switchyard_frontend_prefill_fallbacks_total") >= 1.0, "{scraped}");
    stop.cancel();
    drop(agg);
}

fn instance_with_role(watch: &InstanceWatch, role: Role) -> Arc<InstanceRecord> {
    let current = watch.current();
    let found =
        current.models().flat_map(|(_, list)| list.iter().cloned()).find(|r| r.role() == role);
    found.unwrap_or_else(|| panic!("no {role:?} instance"))
}

async fn subscribe(mode: Mode, servers: &Servers, watch: &InstanceWatch) -> EventStream {
    let subscriber: Box<dyn EventSubscriber> = match mode.plane {
        PlaneMode::Tcp => {
            Box::new(TcpEventSubscriber::new(watch.subscribe(), TcpEventConfig::default()))
        }
        PlaneMode::Nats => {
            let url = servers.nats.as_ref().unwrap().url();
            let client = switchyard_runtime::plane::nats::connect(&url).await.unwrap();
            Box::new(NatsEventSubscriber::new(client, "split").unwrap())
        }
    };
    tokio::time::timeout(WAIT, subscriber.subscribe()).await.unwrap().unwrap()
}

/// Follows `instance`'s events until it stored a chain of `blocks` blocks from a prompt's
/// first block (a Stored event without a parent: what a hand-off or a prefill caches, not
/// blocks completed by generated tokens) and reported a load of as many: both, as far as
/// they got.
async fn decode_events(events: &mut EventStream, instance: &str, blocks: u64) -> (u64, u64) {
    let (mut stored, mut peak) = (0u64, 0u64);
    let deadline = Instant::now() + WAIT;
    while stored < blocks || peak < blocks {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some(event)) = tokio::time::timeout(left, events.next()).await else {
            break;
        };
        if event.instance_id != instance {
            continue;
        }
        match event.event {
            Some(Event::Kv(kv)) => {
                if let Some(kv_event::Data::Stored(s)) = kv.data
                    && s.parent_hash.is_none()
                {
                    stored = stored.max(s.block_hashes.len() as u64);
                }
            }
            Some(Event::Load(load)) => peak = peak.max(load.active_kv_blocks),
            None => {}
        }
    }
    (stored, peak)
}

async fn scrape(url: &str) -> String {
    let resp = tokio::time::timeout(WAIT, client().get(format!("{url}/metrics")).send())
        .await
        .unwrap()
        .unwrap();
    resp.text().await.unwrap()
}

/// The sum of the series of a counter whose line starts with `prefix`.
fn counter(metrics: &str, prefix: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}
