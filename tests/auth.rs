//! API keys on the frontend, through the real binary: 401s in OpenAI's shape without a key
//! or with a wrong one, every configured key (flag and file) accepted, the operational routes
//! open unless asked otherwise.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::{Value, json};
use support::{Mode, Topology};

const MODEL: &str = "switchyard-tiny";

async fn post_with(t_http: &reqwest::Client, url: &str, key: Option<&str>) -> (u16, Value) {
    let body = json!({"model": MODEL, "prompt": "hi", "max_tokens": 2});
    let mut req = t_http.post(format!("{url}/v1/completions")).json(&body);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    let resp = req.send().await.unwrap();
    (resp.status().as_u16(), resp.json().await.unwrap_or(Value::Null))
}

async fn get_status(http: &reqwest::Client, url: &str, key: Option<&str>) -> u16 {
    let mut req = http.get(url);
    if let Some(key) = key {
        req = req.bearer_auth(key);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_guard_the_api_and_leave_probes_open() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys");
    std::fs::write(&file, "# operators\nfile-key-1\n\nfile-key-2\n").unwrap();
    let file = file.to_str().unwrap().to_owned();
    let t = Topology::start_on(
        Mode::FILE_TCP,
        &[MODEL],
        &["--api-key", "flag-key", "--api-key-file", &file],
    )
    .await;

    for key in [None, Some("wrong"), Some("flag-ke"), Some("flag-key-and-more"), Some("")] {
        let (status, body) = post_with(&t.http, &t.url, key).await;
        assert_eq!(status, 401, "{key:?}: {body}");
        let error = &body["error"];
        assert_eq!(error["code"], "invalid_api_key", "{body}");
        assert_eq!(error["type"], "invalid_request_error", "{body}");
        assert!(error["message"].as_str().is_some_and(|m| !m.contains("flag-key")), "{body}");
    }
    for key in ["flag-key", "file-key-1", "file-key-2"] {
        let (status, body) = post_with(&t.http, &t.url, Some(key)).await;
        assert_eq!(status, 200, "{key}: {body}");
    }
    assert_eq!(get_status(&t.http, &format!("{}/v1/models", t.url), None).await, 401);
    assert_eq!(get_status(&t.http, &format!("{}/v1/models", t.url), Some("flag-key")).await, 200);
    for ops in ["/health", "/live", "/metrics"] {
        assert_eq!(get_status(&t.http, &format!("{}{ops}", t.url), None).await, 200, "{ops}");
    }

    // Asked to, the operational routes want a key too.
    let guarded = t.start_frontend(&["--api-key", "flag-key", "--api-key-protect-ops"]);
    for ops in ["/health", "/live", "/metrics"] {
        let url = format!("{}{ops}", guarded.url);
        assert_eq!(get_status(&guarded.http, &url, None).await, 401, "{ops}");
        assert_eq!(get_status(&guarded.http, &url, Some("flag-key")).await, 200, "{ops}");
    }
}
