//! Steady client traffic through the frontend while containers fail: a few loops of short
//! chat requests, each outcome recorded, so a test can count what failed and when.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

/// Longest one request may take: a request sent to a worker behind a partition waits for
/// the request plane's keep-alive (about 30 s) before the frontend tries another worker.
pub const REQUEST_LIMIT: Duration = Duration::from_secs(90);

/// Loops of requests running in the background.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    loops: Vec<tokio::task::JoinHandle<()>>,
}

#[derive(Default)]
pub struct Tally {
    pub ok: AtomicU64,
    pub failed: AtomicU64,
    /// The slowest request so far, in milliseconds.
    pub slowest_ms: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

/// What a stretch of traffic saw.
#[derive(Debug, Clone, Copy)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    pub slowest: Duration,
}

impl Traffic {
    pub fn start(base_url: &str, loops: usize) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let loops = (0..loops)
            .map(|i| {
                let (stop, tally, url) = (stop.clone(), tally.clone(), base_url.to_owned());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        let sent = Instant::now();
                        let outcome = chat(&url, &format!("loop {i} request {n}")).await;
                        let took = u64::try_from(sent.elapsed().as_millis()).unwrap();
                        tally.slowest_ms.fetch_max(took, Ordering::Relaxed);
                        match outcome {
                            Ok(()) => tally.ok.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                tally.first_error.lock().unwrap().get_or_insert(e);
                                tally.failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                })
            })
            .collect();
        Traffic { stop, tally, loops }
    }

    pub fn counts(&self) -> Counts {
        counts(&self.tally)
    }

    /// Stops the loops (each finishes its request, bounded by [`REQUEST_LIMIT`]).
    pub async fn stop(self) -> (Counts, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for handle in self.loops {
            tokio::time::timeout(REQUEST_LIMIT + Duration::from_secs(5), handle)
                .await
                .expect("a traffic loop did not stop")
                .unwrap();
        }
        let error = self.tally.first_error.lock().unwrap().clone();
        (counts(&self.tally), error)
    }
}

fn counts(t: &Tally) -> Counts {
    Counts {
        ok: t.ok.load(Ordering::Relaxed),
        failed: t.failed.load(Ordering::Relaxed),
        slowest: Duration::from_millis(t.slowest_ms.load(Ordering::Relaxed)),
    }
}

/// One short chat request: `Ok` when it came back 200 with a message.
pub async fn chat(base_url: &str, prompt: &str) -> Result<(), String> {
    let http = reqwest::Client::builder().timeout(REQUEST_LIMIT).build().unwrap();
    let body = json!({
        "model": "switchyard-tiny",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 4,
    });
    let resp = http
        .post(format!("{base_url}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status();
    let text = resp.text().await.map_err(|e| format!("body: {e}"))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{status}: {e}: {text}"))?;
    if status.is_success() && value["choices"][0]["message"]["content"].is_string() {
        Ok(())
    } else {
        Err(format!("{status}: {text}"))
    }
}

/// Sends requests one after another until one succeeds; how long that took.
pub async fn first_success(base_url: &str, limit: Duration) -> Duration {
    let started = Instant::now();
    let mut last = String::new();
    while started.elapsed() < limit {
        match tokio::time::timeout(limit, chat(base_url, "are you back?")).await {
            Ok(Ok(())) => return started.elapsed(),
            Ok(Err(e)) => last = e,
            Err(_) => last = "no answer".into(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no request succeeded within {limit:?}; last error: {last}");
}
