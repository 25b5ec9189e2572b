//! The bench's measurements against a server that logs its own timings: TTFT, ITL and E2E
//! agree with the server's clock within 1 ms at the median, output tokens come from `usage`,
//! and failures are counted by kind.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::{Script, ScriptedServer, WAIT};
use switchyard_bench::TokenCounter;
use switchyard_bench::config::{RequestRate, RunConfig};
use switchyard_bench::dataset::{Dataset, DatasetConfig, Prompt};
use switchyard_bench::metrics::RunMetrics;
use switchyard_bench::runner::{Point, RunOutput, run_point};
use switchyard_bench::stats::percentile_sorted;
use tokio_util::sync::CancellationToken;

fn median_ms(mut values: Vec<Duration>) -> f64 {
    values.sort();
    let ms: Vec<f64> = values.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    percentile_sorted(&ms, 50.0)
}

async fn run(
    server: &ScriptedServer,
    backend: &str,
    dataset: DatasetConfig,
    tweak: impl FnOnce(&mut RunConfig),
    point: Point,
) -> (RunOutput, TokenCounter, Arc<Dataset>) {
    let mut config = RunConfig::new(&server.url, backend.parse().unwrap());
    config.model = "scripted".into();
    tweak(&mut config);
    let tokenizer = TokenCounter::load("builtin:tiny").unwrap();
    let dataset = Arc::new(Dataset::build(&dataset, &tokenizer).unwrap());
    let run = run_point(Arc::new(config), dataset.clone(), point, CancellationToken::new());
    let output = tokio::time::timeout(WAIT, run).await.unwrap().unwrap();
    (output, tokenizer, dataset)
}

fn prompt_of(dataset: &Dataset, index: usize) -> &str {
    match &dataset.sessions[index].turns[0].prompt {
        Prompt::Text(text) => text,
        Prompt::Messages(_) => unreachable!("random prompts are text"),
    }
}

fn small_random(num_prompts: usize, output_len: u32) -> DatasetConfig {
    DatasetConfig {
        num_prompts,
        random_input_len: 32,
        random_output_len: output_len,
        random_range_ratio: 1.0,
        ..DatasetConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn measured_ttft_itl_and_e2e_match_the_servers_own_log() {
    let script = Script {
        ttft: Duration::from_millis(30),
        per_token: Duration::from_millis(12),
        fail_every: None,
    };
    let server = ScriptedServer::start(script).await;
    let point = Point { request_rate: RequestRate::INFINITE, max_concurrency: Some(4) };
    // Chat: the server's first chunk (role, empty content) must not count as the first token.
    let (output, tokenizer, dataset) =
        run(&server, "vllm-chat", small_random(40, 40), |_| {}, point).await;

    let records = &output.records;
    assert_eq!(records.len(), 40);
    assert!(records.iter().all(|r| r.succeeded()), "{:?}", records.iter().find(|r| !r.succeeded()));
    // The warmup request is logged too; it asks for 32 tokens at most.
    let logs: Vec<_> = server.logs().into_iter().filter(|l| l.body["max_tokens"] == 40).collect();
    assert_eq!(logs.len(), 40);
    assert!(logs.iter().all(|l| l.body["stream_options"]["include_usage"] == true));
    assert!(logs.iter().all(|l| l.body["ignore_eos"] == true));

    // Each request's figures against the server's for the same request (found by its prompt):
    // the median difference is the bias of the measurement.
    let mut diffs: [Vec<f64>; 3] = Default::default();
    for log in &logs {
        let content = log.body["messages"][0]["content"].as_str().unwrap();
        let r = records.iter().find(|r| prompt_of(&dataset, r.index) == content).unwrap();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        diffs[0].push(ms(r.ttft().unwrap()) - ms(log.ttft()));
        let itls: Vec<Duration> = r.itls().collect();
        assert_eq!(itls.len(), log.itls().len());
        diffs[1].extend(itls.iter().zip(log.itls()).map(|(b, s)| ms(*b) - ms(s)));
        diffs[2].push(ms(r.e2e()) - ms(log.e2e()));
    }
    let [ttft, itl, e2e] = diffs.map(|mut d| {
        d.sort_by(f64::total_cmp);
        percentile_sorted(&d, 50.0)
    });
    eprintln!("bias at p50 (ms): TTFT {ttft:.3}, ITL {itl:.3}, E2E {e2e:.3}");
    // Half a token's interval (12 ms here): a reading taken at the wrong chunk is caught, the
    // scheduling noise of a busy machine (up to 3 ms seen in CI) is not mistaken for a bias.
    const TOLERANCE_MS: f64 = 6.0;
    for (what, bias) in [("TTFT", ttft), ("ITL", itl), ("E2E", e2e)] {
        assert!(
            bias.abs() < TOLERANCE_MS,
            "{what}: the bench reads {bias:.3} ms off the server at p50"
        );
    }
    let server_ttft = median_ms(logs.iter().map(|l| l.ttft()).collect());
    let bench_ttft = median_ms(records.iter().map(|r| r.ttft().unwrap()).collect());
    assert!((bench_ttft - server_ttft).abs() < TOLERANCE_MS, "{bench_ttft} vs {server_ttft}");

    let m = RunMetrics::compute(&output, &tokenizer, None, None).unwrap();
    assert_eq!((m.completed, m.total_output), (40, 40 * 40));
    assert!((m.ttft.median - bench_ttft).abs() < 1e-9);
    assert!(m.max_concurrent_requests <= 4, "{}", m.max_concurrent_requests);
    // The scripted text is " t0 t1 …": the re-tokenized count is the tokenizer's, not 40.
    assert!(m.total_output_retokenized > 0);
    assert!(m.client_cpu.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_streamed_completions_take_tokens_from_usage() {
    let script = Script {
        ttft: Duration::from_millis(5),
        per_token: Duration::from_millis(1),
        fail_every: None,
    };
    let server = ScriptedServer::start(script).await;
    let point = Point { request_rate: RequestRate(200.0), max_concurrency: None };
    let (output, _, _) =
        run(&server, "sglang-oai", small_random(10, 7), |c| c.stream = false, point).await;
    for r in &output.records {
        assert!(r.succeeded(), "{:?}", r.failure);
        assert_eq!(r.usage_completion_tokens, Some(7));
        assert_eq!(r.chunk_times.len(), 1);
        // Not streamed: the first token is the whole answer, as bench_serving counts it.
        assert_eq!(r.ttft(), Some(r.e2e()));
        assert!(r.sent >= r.scheduled);
    }
    // Poisson arrivals at 200/s: not all at once.
    assert!(output.records.iter().any(|r| !r.scheduled.is_zero()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_kind() {
    let script =
        Script { ttft: Duration::from_millis(1), per_token: Duration::ZERO, fail_every: Some(3) };
    let server = ScriptedServer::start(script).await;
    let point = Point { request_rate: RequestRate::INFINITE, max_concurrency: Some(1) };
    // No warmup: the request count of the server is then the workload's.
    let (output, tokenizer, _) =
        run(&server, "vllm", small_random(9, 4), |c| c.warmup_requests = 0, point).await;
    let m = RunMetrics::compute(&output, &tokenizer, None, None).unwrap();
    assert_eq!((m.completed, m.failed), (6, 3));
    assert_eq!(m.error_counts.get("http_503"), Some(&3), "{:?}", m.error_counts);
    assert!(m.first_error.unwrap().contains("scripted failure"));

    // Nothing listens here: every request fails to connect, and the warmup says so.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut config = RunConfig::new(&url, "vllm".parse().unwrap());
    config.model = "scripted".into();
    let dataset = Arc::new(Dataset::build(&small_random(2, 2), &tokenizer).unwrap());
    let run = run_point(Arc::new(config), dataset, point, CancellationToken::new());
    let err = tokio::time::timeout(WAIT, run).await.unwrap().unwrap_err();
    assert!(err.to_string().contains("warmup failed"), "{err}");
}
