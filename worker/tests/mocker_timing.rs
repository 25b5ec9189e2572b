//! The mocker's simulated time, on tokio's paused clock: step durations follow the timing
//! profile, prefix hits shorten prefill, the speed-up ratio divides everything, and timer
//! rounding does not accumulate.

mod mocker_support;

use std::time::Duration;

use mocker_support::{generate, request, start};
use switchyard_proto::FinishReason;
use switchyard_worker::engine::Engine;
use switchyard_worker::mocker::{MockerConfig, Quadratic, TimingProfile};

/// The engine sleeps until ideal deadlines; tokio's timer fires on whole milliseconds, so
/// an observed time is the ideal one rounded up to the next millisecond.
fn assert_close(observed: Duration, ideal: Duration, what: &str) {
    assert!(
        observed >= ideal && observed < ideal + Duration::from_millis(1),
        "{what}: observed {observed:?}, ideal {ideal:?}"
    );
}

fn scaled(ms: f64, speedup: f64) -> Duration {
    Duration::from_secs_f64(ms / speedup / 1000.0)
}

/// Whole-millisecond steps, so the clock can be compared exactly.
fn round_profile() -> TimingProfile {
    TimingProfile {
        name: "test: 10 ms + 1 ms/token prefill, 5 ms decode".to_owned(),
        prefill: Quadratic { c2: 0.0, c1: 1.0, c0: 10.0 },
        decode: Quadratic { c2: 0.0, c1: 0.0, c0: 5.0 },
        decode_floor_ms: 1.0,
    }
}

#[tokio::test(start_paused = true)]
async fn ttft_is_the_prefill_time_and_each_token_adds_one_decode_step() {
    let (engine, _shutdown) =
        start(MockerConfig { profile: round_profile(), ..MockerConfig::default() });
    let r = generate(&engine, request("a", (0..100).collect(), 4)).await;
    let ms: Vec<u128> = r.times.iter().map(Duration::as_millis).collect();
    assert_eq!(ms, vec![110, 115, 120, 125]);
    assert_eq!(r.times[0], Duration::from_millis(110));
    assert_eq!(r.finish(), FinishReason::Length);
}

#[tokio::test(start_paused = true)]
async fn step_times_follow_the_h100_polynomials() {
    let config = MockerConfig { num_gpu_blocks: 1000, ..MockerConfig::default() };
    let profile = TimingProfile::h100();
    let (prompt, max_tokens) = (1000usize, 300u32);
    let (engine, _shutdown) = start(config.clone());
    let r = generate(&engine, request("a", (0..prompt as u32).collect(), max_tokens)).await;
    assert_eq!(r.tokens.len(), max_tokens as usize);

    let mut ideal = scaled(profile.prefill_ms(prompt), 1.0);
    assert_close(r.ttft(), ideal, "ttft");
    for k in 1..max_tokens as usize {
        // The k-th decode step holds the prompt plus k generated tokens' slots.
        let blocks = (prompt + k).div_ceil(config.block_size as usize);
        let u = blocks as f64 / config.num_gpu_blocks as f64;
        ideal += scaled(profile.decode_ms(u), 1.0);
        assert_close(r.times[k], ideal, &format!("token {k}"));
    }
}

#[tokio::test(start_paused = true)]
async fn the_speedup_ratio_divides_simulated_time() {
    let speedup = 8.0;
    let (engine, _shutdown) =
        start(MockerConfig { speedup_ratio: speedup, ..MockerConfig::default() });
    let profile = TimingProfile::h100();
    let r = generate(&engine, request("a", (0..3000).collect(), 2)).await;
    assert_close(r.ttft(), scaled(profile.prefill_ms(3000), speedup), "ttft");
}

#[tokio::test(start_paused = true)]
async fn a_prefix_cache_hit_shortens_prefill() {
    let (engine, _shutdown) = start(MockerConfig::default());
    let profile = TimingProfile::h100();
    let prompt: Vec<u32> = (0..4000).map(|i| i * 7 % 32_000).collect();
    let first = generate(&engine, request("first", prompt.clone(), 3)).await;
    let second = generate(&engine, request("second", prompt, 3)).await;

    let cold = first.last.usage.unwrap_or_default();
    let warm = second.last.usage.unwrap_or_default();
    assert_eq!(cold.cached_tokens, 0);
    // All full blocks but the one holding the last prompt token (4000 = 250 * 16).
    assert_eq!(warm.cached_tokens, 249 * 16);
    assert!(second.ttft() < first.ttft());
    assert_close(first.ttft(), scaled(profile.prefill_ms(4000), 1.0), "cold");
    assert_close(second.ttft(), scaled(profile.prefill_ms(16), 1.0), "warm");

    let load = engine.load().unwrap_or_default();
    assert_eq!(load.cache_hit_blocks, 249);
    assert_eq!(load.cache_lookup_blocks, 2 * 249);
}

#[tokio::test(start_paused = true)]
async fn a_long_prompt_is_chunked_and_its_chunks_are_timed_one_by_one() {
    let config = MockerConfig { max_num_batched_tokens: 1024, ..MockerConfig::default() };
    let (engine, _shutdown) = start(config);
    let profile = TimingProfile::h100();
    let r = generate(&engine, request("a", (0..2500).collect(), 1)).await;
    let ideal: Duration =
        [1024, 1024, 452].iter().map(|&t| scaled(profile.prefill_ms(t), 1.0)).sum();
    assert_close(r.ttft(), ideal, "chunked ttft");
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_share_steps() {
    let (engine, _shutdown) =
        start(MockerConfig { profile: round_profile(), ..MockerConfig::default() });
    // Both arrive before the first step: one step prefills 100 + 50 tokens (160 ms), then
    // every step decodes both (5 ms).
    let (a, b) = tokio::join!(
        generate(&engine, request("a", (0..100).collect(), 3)),
        generate(&engine, request("b", (500..550).collect(), 3)),
    );
    for r in [&a, &b] {
        let ms: Vec<u128> = r.times.iter().map(Duration::as_millis).collect();
        assert_eq!(ms, vec![160, 165, 170]);
    }
}
