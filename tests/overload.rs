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
