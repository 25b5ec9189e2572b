//! Overload through the real binary: with admission control, requests past an instance's
//! places and the queue get 429 with Retry-After at once, those admitted complete whole, and
//! the frontend serves normally once the burst is over.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Instant;

use serde_json::{Value, json};
use support::{Mode, Topology};

const MODEL: &str = "switchyard-tiny";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_capacity_gets_quick_429s_and_the_admitted_complete() {
    let admission = [
        "--max-inflight-per-instance",
        "4",
        "--max-queued-requests",
        "4",
        "--queue-timeout-secs",
        "30",
    ];
    let mut t = Topology::start_on(Mode::FILE_TCP, &[], &admission).await;
    // About a second per request at a batch of 4.
    t.add_worker(MODEL, &["--speedup-ratio", "2"]);
    t.wait_instances(1).await;
    let url = format!("{}/v1/completions", t.url);
    let body = json!({"model": MODEL, "prompt": "burst", "max_tokens": 100, "ignore_eos": true});

    let burst = (0..48).map(|_| {
        let (http, url, body) = (t.http.clone(), url.clone(), body.clone());
        async move {
            let started = Instant::now();
            let resp = http.post(&url).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            let retry_after =
                resp.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
            let json: Value = resp.json().await.unwrap();
            (status, started.elapsed(), retry_after, json)
        }
    });
    let results = futures::future::join_all(burst).await;
    let ok: Vec<_> = results.iter().filter(|r| r.0 == 200).collect();
    let refused: Vec<_> = results.iter().filter(|r| r.0 == 429).collect();
    assert_eq!(
        ok.len() + refused.len(),
        results.len(),
        "only 200s and 429s: {:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    // 4 running and 4 queued at the most; the rest refused.
    assert!(ok.len() >= 8, "{} admitted", ok.len());
    assert!(refused.len() >= 30, "{} refused", refused.len());
    for (_, _, retry_after, json) in &refused {
        assert!(
            retry_after.as_deref().is_some_and(|s| s.parse::<u64>().is_ok()),
            "{retry_after:?}"
        );
        assert_eq!(json["error"]["code"], "overloaded", "{json}");
        assert_eq!(json["error"]["type"], "rate_limit_error", "{json}");
    }
    for (_, _, _, json) in &ok {
        assert_eq!(json["usage"]["completion_tokens"], 100, "{json}");
    }
    let mut refused_ms: Vec<f64> = refused.iter().map(|r| r.1.as_secs_f64() * 1e3).collect();
    refused_ms.sort_by(f64::total_cmp);
    let mut ok_ms: Vec<f64> = ok.iter().map(|r| r.1.as_secs_f64() * 1e3).collect();
    ok_ms.sort_by(f64::total_cmp);
    eprintln!(
        "burst of 48 on 4 places + 4 queued: {} admitted (median {:.0} ms, max {:.0} ms), {} refused (median {:.1} ms, max {:.1} ms)",
        ok.len(),
        ok_ms[ok_ms.len() / 2],
        ok_ms[ok_ms.len() - 1],
        refused.len(),
        refused_ms[refused_ms.len() / 2],
        refused_ms[refused_ms.len() - 1]
    );
    // Refusals do not wait for the places to free up (a second per request here).
    assert!(refused_ms[refused_ms.len() - 1] < 1000.0, "{refused_ms:?}");

    let metrics = t.metrics().await;
    assert!(
        metrics.contains("switchyard_frontend_admission_rejected_total{reason=\"queue_full\"}"),
        "{metrics}"
    );
    // After the burst, requests are admitted again.
    let (status, body) = t.post("/v1/completions", &body).await;
    assert_eq!(status, 200, "{body}");
}

/// Whether the server closed `stream` within `limit` (a read sees the end, or an error).
async fn closed_within(stream: &mut tokio::net::TcpStream, limit: std::time::Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A response (e.g. 408) before the close.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_and_connections_are_capped() {
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;
    let limits = ["--http-header-timeout-secs", "1", "--max-connections", "40"];
    let t = Topology::start_on(Mode::FILE_TCP, &[MODEL], &limits).await;
    let address = t.url.trim_start_matches("http://").to_owned();
    // Slow clients: a request line and one header, then nothing.
    let mut slow = Vec::new();
    for _ in 0..40 {
        let mut stream = tokio::net::TcpStream::connect(&address).await.unwrap();
        stream.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        slow.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Past the cap, a connection is closed at once.
    let mut over = tokio::net::TcpStream::connect(&address).await.unwrap();
    assert!(closed_within(&mut over, Duration::from_millis(500)).await, "no cap on connections");
    // The header timeout closes every slow one.
    let started = Instant::now();
    for stream in &mut slow {
        assert!(
            closed_within(stream, Duration::from_secs(5)).await,
            "a slow client kept its connection"
        );
    }
    eprintln!("40 slow clients cut off {:?} after the cap was checked", started.elapsed());
    let metrics = t.metrics().await;
    assert!(metrics.contains("switchyard_frontend_connections_refused_total"), "{metrics}");
    let (status, body) =
        t.post("/v1/completions", &json!({"model": MODEL, "prompt": "x", "max_tokens": 2})).await;
    assert_eq!(status, 200, "{body}");
}

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap();
    line.trim().trim_end_matches("kB").trim().parse::<f64>().unwrap() / 1024.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Ten times the capacity offered for five seconds (open loop): every request gets a 200 or
/// a quick 429, those admitted run whole, and the frontend's memory stays within a bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_times_capacity_keeps_memory_bounded() {
    use std::time::Duration;
    /// Growth of the frontend's resident memory allowed under the overload.
    const RSS_BOUND_MIB: f64 = 64.0;
    let admission = ["--max-inflight-per-instance", "4", "--max-queued-requests", "0"];
    let mut t = Topology::start_on(Mode::FILE_TCP, &[], &admission).await;
    t.add_worker(MODEL, &["--speedup-ratio", "4"]);
    t.wait_instances(1).await;
    let url = format!("{}/v1/completions", t.url);
    let body = json!({"model": MODEL, "prompt": "overload", "max_tokens": 50, "ignore_eos": true});
    let send = |http: reqwest::Client| {
        let (url, body) = (url.clone(), body.clone());
        async move {
            let started = Instant::now();
            let resp = http.post(&url).json(&body).send().await.unwrap();
            let status = resp.status().as_u16();
            let json: Value = resp.json().await.unwrap();
            (status, started.elapsed().as_secs_f64() * 1e3, json)
        }
    };
    let pid = t.frontend.pid();
    // Capacity: four at a time (the instance's places), for three seconds.
    let rss_before = rss_mib(pid);
    let started = Instant::now();
    let closed_loop = (0..4).map(|_| {
        let (http, send) = (t.http.clone(), &send);
        async move {
            let mut latencies = Vec::new();
            while started.elapsed() < Duration::from_secs(3) {
                let (status, ms, json) = send(http.clone()).await;
                assert_eq!(status, 200, "{json}");
                latencies.push(ms);
            }
            latencies
        }
    });
    let normal: Vec<f64> = futures::future::join_all(closed_loop).await.concat();
    let capacity = normal.len() as f64 / started.elapsed().as_secs_f64();

    // Ten times that, open loop, while the frontend's memory is sampled.
    let rate = 10.0 * capacity;
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = tokio::spawn({
        let sampling = sampling.clone();
        async move {
            let mut peak = 0.0f64;
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_mib(pid));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            peak
        }
    });
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    let mut sent = Vec::new();
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(5) {
        tick.tick().await;
        sent.push(tokio::spawn(send(t.http.clone())));
    }
    let mut results = Vec::new();
    for request in sent {
        results.push(request.await.unwrap());
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    let rss_peak = sampler.await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_mib(pid);

    let statuses: Vec<u16> = results.iter().map(|r| r.0).collect();
    assert!(statuses.iter().all(|&s| s == 200 || s == 429), "{statuses:?}");
    let admitted: Vec<&(u16, f64, Value)> = results.iter().filter(|r| r.0 == 200).collect();
    for (_, _, json) in &admitted {
        assert_eq!(json["usage"]["completion_tokens"], 50, "{json}");
    }
    let refused: Vec<f64> = results.iter().filter(|r| r.0 == 429).map(|r| r.1).collect();
    let mut refused_sorted = refused.clone();
    refused_sorted.sort_by(f64::total_cmp);
    eprintln!(
        "capacity {capacity:.1} req/s (median {:.0} ms); offered {rate:.0} req/s for 5 s: {} requests, \
         {} admitted (median {:.0} ms), {} refused with 429 (median {:.1} ms, p99 {:.1} ms, max {:.1} ms); \
         frontend RSS {rss_before:.1} MiB before, {rss_peak:.1} MiB at most, {rss_after:.1} MiB 2 s after",
        median(normal.clone()),
        results.len(),
        admitted.len(),
        median(admitted.iter().map(|r| r.1).collect()),
        refused.len(),
        median(refused.clone()),
        refused_sorted[refused_sorted.len() * 99 / 100],
        refused_sorted[refused_sorted.len() - 1],
    );
    // Most of a tenfold overload is refused, not queued.
    assert!(
        refused.len() * 10 >= results.len() * 7,
        "{} of {} refused",
        refused.len(),
        results.len()
    );
    assert!(
        rss_peak - rss_before < RSS_BOUND_MIB,
        "the frontend grew from {rss_before:.1} to {rss_peak:.1} MiB"
    );
}
