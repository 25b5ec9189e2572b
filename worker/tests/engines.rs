//! The engine conformance suite on the mocker and on a real llama.cpp server, and the
//! llama.cpp wrapper's own paths: parameters, log probabilities, and prefill/decode between
//! two servers through two workers and the request plane.

#![allow(clippy::unwrap_used)]

#[path = "support/llama_server.rs"]
mod llama_server;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use llama_server::{LlamaServer, tiny_model};
use switchyard_proto::{
    DisaggregatedParams, FinishReason, GenerateChunk, GenerateRequest, ModelCard, SamplingParams,
};
use switchyard_runtime::plane::tcp::{TcpClient, TcpClientConfig};
use switchyard_runtime::store::memory::MemoryStore;
use switchyard_runtime::{Discovery, RequestClient};
use switchyard_worker::conformance::{self, Expectations};
use switchyard_worker::mocker::{MockerConfig, MockerEngine};
use switchyard_worker::openai::{Flavour, OpenAiConfig, OpenAiEngine};
use switchyard_worker::{Engine, PlaneListener, WorkerConfig};
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

/// A prompt of real token ids of the tiny model, four 16-token blocks and a bit.
fn prompt() -> Vec<u32> {
    (0..70).map(|i| 40 + (i * 7) % 1500).collect()
}

async fn llamacpp_engine(server: &LlamaServer, stop: &CancellationToken) -> OpenAiEngine {
    let dir = tiny_model();
    let tokenizer = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let config = OpenAiConfig {
        url: server.url.clone(),
        flavour: None,
        ready_timeout: Duration::from_secs(30),
        ..OpenAiConfig::default()
    };
    let card = ModelCard {
        model: "tiny".into(),
        tokenizer_source: dir.display().to_string(),
        ..ModelCard::default()
    };
    OpenAiEngine::start(config, card, &tokenizer, CancellationToken::new(), stop.clone())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mocker_passes_the_conformance_suite() {
    let stop = CancellationToken::new();
    let config =
        MockerConfig { speedup_ratio: 100.0, context_length: 4096, ..MockerConfig::default() };
    let card = ModelCard { model: "m".into(), ..ModelCard::default() };
    let engine = MockerEngine::start(config, card, stop.clone()).unwrap();
    let expect = Expectations { prompt: prompt(), caches_prefixes: true, kv_events: true };
    conformance::run(&engine, &expect).await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_passes_the_conformance_suite() {
    let server = LlamaServer::start(&[]).await;
    let stop = CancellationToken::new();
    let engine = llamacpp_engine(&server, &stop).await;
    assert_eq!(engine.flavour(), Flavour::Llamacpp, "detected from /v1/models");
    assert_eq!(engine.card().context_length, 2048, "a slot's context");
    let expect = Expectations { prompt: prompt(), caches_prefixes: true, kv_events: false };
    conformance::run(&engine, &expect).await;
    stop.cancel();
}

fn tokens(chunks: &[GenerateChunk]) -> Vec<u32> {
    chunks.iter().flat_map(|c| c.token_ids.iter().copied()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_honours_logprobs_logit_bias_and_stop_token_ids() {
    let server = LlamaServer::start(&[]).await;
    let stop = CancellationToken::new();
    let engine = llamacpp_engine(&server, &stop).await;
    let greedy = tokens(&conformance::collect(&engine, conformance::request(&prompt(), 6)).await);
    assert_eq!(greedy.len(), 6);

    let mut with_logprobs = conformance::request(&prompt(), 6);
    with_logprobs.sampling.as_mut().unwrap().logprobs = Some(2);
    let chunks = conformance::collect(&engine, with_logprobs).await;
    assert_eq!(tokens(&chunks), greedy, "asking for logprobs changes no token");
    let logprobs: Vec<_> = chunks.iter().flat_map(|c| c.logprobs.iter()).collect();
    assert_eq!(logprobs.len(), 6, "one per token");
    for (lp, id) in logprobs.iter().zip(&greedy) {
        assert_eq!(lp.token_id, *id);
        assert_eq!(lp.top.len(), 2);
        assert!(lp.logprob <= 0.0 && lp.top[0].logprob >= lp.top[1].logprob);
        assert_eq!(lp.top[0].token_id, *id, "greedy picks the likeliest");
    }

    let mut banned = conformance::request(&prompt(), 6);
    banned.sampling.as_mut().unwrap().logit_bias = [(greedy[0], -100.0)].into_iter().collect();
    let other = tokens(&conformance::collect(&engine, banned).await);
    assert_ne!(other[0], greedy[0], "a banned token is not sampled");

    let mut stopping = conformance::request(&prompt(), 6);
    let s = stopping.sampling.as_mut().unwrap();
    s.stop_token_ids = vec![greedy[2]];
    s.ignore_eos = false;
    let chunks = conformance::collect(&engine, stopping).await;
    let stopped = tokens(&chunks);
    let at = greedy.iter().position(|t| *t == greedy[2]).unwrap();
    assert_eq!(stopped, greedy[..=at], "the stop token ends the output, included");
    let last = chunks.last().unwrap();
    assert_eq!(last.finish_reason(), FinishReason::Stop);
    assert_eq!(last.usage.unwrap().completion_tokens as usize, stopped.len());

    let mut min_tokens = conformance::request(&prompt(), 6);
    min_tokens.sampling.as_mut().unwrap().min_tokens = 2;
    let refused = engine.generate(min_tokens, CancellationToken::new()).await;
    assert_eq!(
        refused.err().and_then(|e| e.param_name().map(String::from)).as_deref(),
        Some("min_tokens")
    );
    stop.cancel();
}

/// A worker serving `engine` on a TCP port; its address.
async fn serve(
    engine: OpenAiEngine,
    discovery: &Discovery,
    shutdown: &CancellationToken,
) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (discovery, shutdown) = (discovery.clone(), shutdown.clone());
    tokio::spawn(async move {
        let engine: Arc<dyn Engine> = Arc::new(engine);
        switchyard_worker::serve(
            PlaneListener::Tcp(listener),
            None,
            engine,
            discovery,
            WorkerConfig::default(),
            shutdown,
        )
        .await
        .unwrap();
    });
    address
}

async fn send(client: &TcpClient, address: &str, request: GenerateRequest) -> Vec<GenerateChunk> {
    let stream = timeout(WAIT, client.generate(address, request)).await.unwrap().unwrap();
    let chunks: Vec<_> = timeout(WAIT, stream.collect::<Vec<_>>()).await.unwrap();
    let chunks: Vec<GenerateChunk> = chunks.into_iter().map(Result::unwrap).collect();
    let last = chunks.last().unwrap();
    assert!(last.error.is_none(), "{:?}", last.error);
    chunks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn llamacpp_prefill_then_decode_on_another_server_gives_the_aggregated_tokens() {
    let slots = tempfile::tempdir().unwrap();
    let slot_path = format!("{}/", slots.path().display());
    let args = ["-np", "1", "--slot-save-path", &slot_path];
    let (prefill_server, decode_server) =
        tokio::join!(LlamaServer::start(&args), LlamaServer::start(&args));
    let stop = CancellationToken::new();
    let prefill_engine = llamacpp_engine(&prefill_server, &stop).await;
    let decode_engine = llamacpp_engine(&decode_server, &stop).await;
    assert!(prefill_engine.serves_prefill());
    let discovery = Discovery::new(Arc::new(MemoryStore::new()), "pd");
    let prefill = serve(prefill_engine, &discovery, &stop).await;
    let decode = serve(decode_engine, &discovery, &stop).await;
    let client = TcpClient::new(TcpClientConfig::default());

    let prompt = prompt();
    let aggregated = tokens(&send(&client, &prefill, conformance::request(&prompt, 10)).await);

    // A prompt the prefill server has not seen, so nothing is cached there either.
    let prompt: Vec<u32> = prompt.iter().map(|t| t + 1).collect();
    let aggregated_other = tokens(&send(&client, &decode, conformance::request(&prompt, 10)).await);
    let mut first = conformance::request(&prompt, 10);
    first.disaggregated = Some(DisaggregatedParams { prefill_only: true, ..Default::default() });
    let prefilled = send(&client, &prefill, first).await;
    let last = prefilled.last().unwrap();
    let handle = last.kv_handle.clone().expect("the prefill returns a KV handle");
    let first_tokens = tokens(&prefilled);
    assert_eq!(first_tokens.len(), 1, "the prefill returns the first token");
    assert_eq!(handle.tokens as usize, prompt.len());
    assert!(handle.bytes > 0, "the slot was saved");
    assert!(handle.engine_params.contains("llamacpp"), "{}", handle.engine_params);

    let mut rest = conformance::request(&prompt, 10);
    rest.disaggregated = Some(DisaggregatedParams {
        kv_handle: Some(handle),
        generated_token_ids: first_tokens.clone(),
        ..Default::default()
    });
    let decoded = send(&client, &decode, rest).await;
    let usage = decoded.last().unwrap().usage.unwrap();
    let mut all = first_tokens;
    all.extend(tokens(&decoded));
    assert_eq!(all, aggregated_other, "prefill + decode = one aggregated server");
    assert_eq!(usage.completion_tokens, 10, "the first token counts");
    assert!(
        usage.cached_tokens as usize >= prompt.len(),
        "the decode server restored the prompt's KV: {usage:?}"
    );
    assert_ne!(aggregated, aggregated_other, "the two prompts differ in output");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_engine_is_refused_as_overloaded_so_routers_retry() {
    let mut server = LlamaServer::start(&[]).await;
    let stop = CancellationToken::new();
    let engine = llamacpp_engine(&server, &stop).await;
    let mut up = engine.up().unwrap();
    server.kill();
    let error = engine
        .generate(conformance::request(&prompt(), 4), CancellationToken::new())
        .await
        .err()
        .expect("no engine to serve it");
    assert_eq!(error.kind(), switchyard_proto::ErrorKind::Overloaded, "{error}");
    timeout(WAIT, up.wait_for(|up| !*up)).await.unwrap().unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_parameters_reach_llamacpp_under_its_names() {
    let server = LlamaServer::start(&[]).await;
    let stop = CancellationToken::new();
    let engine = llamacpp_engine(&server, &stop).await;
    let mut request = conformance::request(&prompt(), 4);
    request.sampling = Some(SamplingParams {
        max_tokens: 4,
        temperature: Some(0.8),
        top_k: Some(5),
        min_p: Some(0.1),
        seed: Some(42),
        presence_penalty: Some(0.5),
        frequency_penalty: Some(0.5),
        repetition_penalty: Some(1.2),
        ignore_eos: true,
        ..SamplingParams::default()
    });
    let a = tokens(&conformance::collect(&engine, request.clone()).await);
    let b = tokens(&conformance::collect(&engine, request).await);
    assert_eq!(a.len(), 4);
    assert_eq!(a, b, "the same seed samples the same tokens");
    stop.cancel();
}
