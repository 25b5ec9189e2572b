//! Workloads: random prompts have exactly the token counts asked for, the ShareGPT sample and
//! JSONL files load as bench_serving loads them, shared-prefix groups share their prefix, and
//! multi-turn conversations resend their history with the server's replies.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Script, ScriptedServer, WAIT};
use switchyard_bench::TokenCounter;
use switchyard_bench::config::{RequestRate, RunConfig};
use switchyard_bench::dataset::{Dataset, DatasetConfig, DatasetKind, Prompt};
use switchyard_bench::runner::{Point, run_point};
use tokio_util::sync::CancellationToken;

fn text(prompt: &Prompt) -> &str {
    match prompt {
        Prompt::Text(t) => t,
        Prompt::Messages(_) => panic!("expected a text prompt"),
    }
}

fn sample_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/sharegpt_sample.json")
}

#[test]
fn random_prompts_have_exactly_the_requested_token_counts() {
    let tokenizer = TokenCounter::load("builtin:tiny").unwrap();
    let config = DatasetConfig {
        num_prompts: 200,
        random_input_len: 300,
        random_output_len: 64,
        random_range_ratio: 0.5,
        seed: 11,
        ..DatasetConfig::default()
    };
    let dataset = Dataset::build(&config, &tokenizer).unwrap();
    assert_eq!(dataset.num_requests(), 200);
    let mut lens = std::collections::BTreeSet::new();
    for session in &dataset.sessions {
        let r = &session.turns[0];
        assert!((150..=300).contains(&r.prompt_len), "{}", r.prompt_len);
        assert!((32..=64).contains(&r.output_len), "{}", r.output_len);
        assert_eq!(tokenizer.count(text(&r.prompt)).unwrap(), r.prompt_len);
        lens.insert(r.prompt_len);
    }
    assert!(lens.len() > 50, "lengths are drawn, not fixed: {lens:?}");
    // The same seed gives the same workload.
    assert_eq!(Dataset::build(&config, &tokenizer).unwrap().sessions, dataset.sessions);
}

#[test]
fn sharegpt_sample_loads_like_bench_serving() {
    let tokenizer = TokenCounter::load("builtin:tiny").unwrap();
    let config = DatasetConfig {
        kind: DatasetKind::ShareGpt,
        path: Some(sample_path()),
        num_prompts: 1000,
        ..DatasetConfig::default()
    };
    let dataset = Dataset::build(&config, &tokenizer).unwrap();
    // Every two-turn conversation whose prompt and reply have 2+ tokens; fewer than asked.
    assert!((15..=20).contains(&dataset.num_requests()), "{}", dataset.num_requests());
    for s in &dataset.sessions {
        let r = &s.turns[0];
        assert_eq!(tokenizer.count(text(&r.prompt)).unwrap(), r.prompt_len);
        assert!(r.prompt_len >= 2 && r.output_len >= 2);
    }
    let fixed = DatasetConfig { sharegpt_output_len: Some(64), num_prompts: 5, ..config.clone() };
    let dataset = Dataset::build(&fixed, &tokenizer).unwrap();
    assert_eq!(dataset.num_requests(), 5);
    assert!(dataset.sessions.iter().all(|s| s.turns[0].output_len == 64));

    let missing = DatasetConfig { path: None, ..config };
    let err = Dataset::build(&missing, &tokenizer).unwrap_err().to_string();
    assert!(err.contains("--dataset-path"), "{err}");
}

#[test]
fn shared_prefix_groups_share_their_system_prompt() {
    let tokenizer = TokenCounter::load("builtin:tiny").unwrap();
    let config = DatasetConfig {
        kind: DatasetKind::GeneratedSharedPrefix,
        gsp_num_groups: 3,
        gsp_prompts_per_group: 4,
        gsp_system_prompt_len: 100,
        gsp_question_len: 20,
        gsp_output_len: 8,
        ..DatasetConfig::default()
    };
    let dataset = Dataset::build(&config, &tokenizer).unwrap();
    assert_eq!(dataset.num_requests(), 12);
    let mut prefixes = std::collections::BTreeMap::new();
    for s in &dataset.sessions {
        let t = text(&s.turns[0].prompt);
        let (system, _) = t.split_once("\n\n").unwrap();
        assert_eq!(tokenizer.count(system).unwrap(), 100);
        *prefixes.entry(system.to_owned()).or_insert(0) += 1;
        assert_eq!(s.turns[0].output_len, 8);
    }
    assert_eq!(prefixes.values().copied().collect::<Vec<_>>(), [4, 4, 4]);
}

#[test]
fn jsonl_reads_prompts_and_messages() {
    let tokenizer = TokenCounter::load("builtin:tiny").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.jsonl");
    std::fs::write(
        &path,
        "{\"prompt\": \"hello there\", \"output_len\": 9}\n\n\
         {\"messages\": [{\"role\": \"system\", \"content\": \"be brief\"}, {\"role\": \"user\", \"content\": \"hi\"}], \"max_tokens\": 3}\n\
         {\"prompt\": \"no length\"}\n",
    )
    .unwrap();
    let config = DatasetConfig {
        kind: DatasetKind::Jsonl,
        path: Some(path.clone()),
        num_prompts: 10,
        random_output_len: 77,
        ..DatasetConfig::default()
    };
    let d = Dataset::build(&config, &tokenizer).unwrap();
    let turns: Vec<_> = d.sessions.iter().map(|s| &s.turns[0]).collect();
    assert_eq!(turns.iter().map(|t| t.output_len).collect::<Vec<_>>(), [9, 3, 77]);
    assert_eq!(turns[0].prompt_len, tokenizer.count("hello there").unwrap());
    assert!(matches!(&turns[1].prompt, Prompt::Messages(m) if m.len() == 2));

    std::fs::write(&path, "{\"output_len\": 3}\n").unwrap();
    let err = Dataset::build(&config, &tokenizer).unwrap_err().to_string();
    assert!(err.contains("line 1"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_turn_conversations_resend_the_history_with_the_replies() {
    let script = Script {
        ttft: Duration::from_millis(2),
        per_token: Duration::from_millis(1),
        fail_every: None,
    };
    let server = ScriptedServer::start(script).await;
    let tokenizer = TokenCounter::load("builtin:tiny").unwrap();
    let config = DatasetConfig {
        kind: DatasetKind::MultiTurn,
        num_prompts: 2,
        multi_turn_turns: 3,
        random_input_len: 10,
        random_output_len: 4,
        random_range_ratio: 1.0,
        ..DatasetConfig::default()
    };
    let dataset = Arc::new(Dataset::build(&config, &tokenizer).unwrap());
    assert_eq!(dataset.num_requests(), 6);
    let mut run = RunConfig::new(&server.url, "vllm-chat".parse().unwrap());
    run.model = "scripted".into();
    run.warmup_requests = 0;
    let point = Point { request_rate: RequestRate::INFINITE, max_concurrency: None };
    let go = run_point(Arc::new(run), dataset.clone(), point, CancellationToken::new());
    let output = tokio::time::timeout(WAIT, go).await.unwrap().unwrap();
    assert!(output.records.iter().all(|r| r.succeeded()));
    // A later turn is due when the turn before it ended, and counts the history as prompt.
    for pair in output.records.chunks(3) {
        assert_eq!(pair[1].scheduled, pair[0].end);
        assert_eq!(pair[2].scheduled, pair[1].end);
        assert_eq!(pair[1].prompt_len, 10 + 4 + 10);
        assert_eq!(pair[2].prompt_len, 10 + 4 + 10 + 4 + 10);
    }
    let logs = server.logs();
    let mut sizes: Vec<usize> =
        logs.iter().map(|l| l.body["messages"].as_array().unwrap().len()).collect();
    sizes.sort_unstable();
    assert_eq!(sizes, [1, 1, 3, 3, 5, 5]);
    let last = logs.iter().find(|l| l.body["messages"].as_array().unwrap().len() == 5).unwrap();
    let messages = last.body["messages"].as_array().unwrap();
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(messages[1]["content"], " t0 t1 t2 t3");
    let first_user = messages[0]["content"].as_str().unwrap();
    assert!(dataset.sessions.iter().any(|s| text(&s.turns[0].prompt) == first_user));
}
