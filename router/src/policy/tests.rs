//! Tests of the policies: selection rules, spreading, and the no-hot-spot property.

use super::*;

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("w{i}")).collect()
}

fn select_many(policy: &dyn Policy, n: usize, rounds: usize) -> Vec<usize> {
    let ids = ids(n);
    let view: Vec<Candidate<'_>> = ids.iter().map(|id| Candidate::new(id, 0)).collect();
    let mut counts = vec![0; n];
    for _ in 0..rounds {
        let i = policy.select(&view, &RequestInfo::default()).expect("a candidate");
        counts[i] += 1;
    }
    counts
}

#[test]
fn round_robin_spreads_evenly() {
    assert_eq!(select_many(&RoundRobin::default(), 3, 300), vec![100, 100, 100]);
}

#[test]
fn random_and_tied_policies_reach_every_instance() {
    for kind in
        [PolicyKind::Random, PolicyKind::LeastLoaded, PolicyKind::PowerOfTwo, PolicyKind::Kv]
    {
        let counts = select_many(kind.build().as_ref(), 4, 4000);
        assert!(counts.iter().all(|&c| c > 700), "{kind}: {counts:?}");
    }
}

#[test]
fn no_candidates_no_choice_and_one_candidate_is_chosen() {
    let one = [Candidate::new("only", 7)];
    for kind in PolicyKind::ALL {
        let policy = kind.build();
        assert_eq!(policy.select(&[], &RequestInfo::default()), None, "{kind}");
        assert_eq!(policy.select(&one, &RequestInfo::default()), Some(0), "{kind}");
    }
}

#[test]
fn names_round_trip() {
    for kind in PolicyKind::ALL {
        assert_eq!(kind.name().parse::<PolicyKind>().expect("known"), kind);
    }
    let err = "fastest".parse::<PolicyKind>().expect_err("unknown");
    assert!(err.to_string().contains("power-of-two"), "{err}");
}

#[test]
fn bad_kv_settings_are_refused() {
    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let config =
            PolicyConfig { kv: KvPolicyConfig { temperature: bad, ..KvPolicyConfig::default() } };
        let err = PolicyKind::Kv.build_with(&config).expect_err("invalid");
        assert!(err.to_string().contains("temperature"), "{err}");
        let half = KvPolicyConfig { balance_ratio: 0.5, ..KvPolicyConfig::default() };
        assert!(PolicyConfig { kv: half }.validate().is_err());
    }
    assert!(PolicyKind::Kv.build_with(&PolicyConfig::default()).is_ok());
}

#[test]
fn least_loaded_takes_the_fewest_requests_counting_reports_and_own_in_flight() {
    let view = [
        Candidate::new("a", 5),
        // Reports 1 running + 1 waiting while we have 0 in flight there: 2 requests.
        Candidate { active_requests: 1, waiting_requests: 1, ..Candidate::new("b", 0) },
        Candidate::new("c", 3),
    ];
    assert_eq!(LeastLoaded.select(&view, &RequestInfo::default()), Some(1));
}

#[test]
fn power_of_two_never_picks_the_most_loaded_of_two() {
    let view = [Candidate::new("idle", 0), Candidate::new("busy", 9)];
    for _ in 0..200 {
        assert_eq!(PowerOfTwo.select(&view, &RequestInfo::default()), Some(0));
    }
}

#[test]
fn kv_follows_the_cache_while_the_holder_has_room_and_leaves_it_when_overloaded() {
    let hashes = [1, 2, 3, 4, 5, 6, 7, 8];
    let request = RequestInfo::new(&hashes, 8 * 16);
    let mut view = [
        Candidate::new("cold", 0),
        Candidate { overlap_blocks: 8, ..Candidate::new("warm", 0) },
        Candidate::new("cold2", 0),
    ];
    let policy = KvPolicy::default();
    assert_eq!(policy.select(&view, &request), Some(1));
    // Busy with more KV than prefilling the whole prompt elsewhere would cost (16 × 8).
    view[1].active_decode_blocks = 200;
    view[1].in_flight = 2;
    assert_ne!(policy.select(&view, &request), Some(1));
}

#[test]
fn the_hot_spot_guard_passes_over_a_holder_far_above_the_mean() {
    let hashes = [1, 2, 3, 4, 5, 6, 7, 8];
    let request = RequestInfo::new(&hashes, 8 * 16);
    let mut view = [
        Candidate::new("cold", 1),
        Candidate { overlap_blocks: 8, ..Candidate::new("warm", 3) },
        Candidate::new("cold2", 1),
    ];
    let policy = KvPolicy::default();
    // With this one, 6 requests in all: the cap is 1.25 × 6/3 + 2 = 4.5, and warm would hold 4.
    assert_eq!(policy.select(&view, &request), Some(1));
    // 8 in all: the cap is 1.25 × 8/3 + 2 ≈ 5.3, and warm would hold 6.
    view[1].in_flight = 5;
    for _ in 0..100 {
        assert_ne!(policy.select(&view, &request), Some(1));
    }
    // Off, the cost alone decides.
    let off = KvPolicyConfig { balance_ratio: 0.0, ..KvPolicyConfig::default() };
    assert_eq!(KvPolicy::new(off).expect("valid").select(&view, &request), Some(1));
    // Sampling honours the guard too.
    let sampled = KvPolicyConfig { temperature: 0.5, ..KvPolicyConfig::default() };
    for _ in 0..100 {
        assert_ne!(KvPolicy::new(sampled).expect("valid").select(&view, &request), Some(1));
    }
}

#[test]
fn kv_cost_counts_prefill_decode_and_requests() {
    let policy = KvPolicy::new(KvPolicyConfig {
        prefill_load_scale: 2.0,
        active_request_weight: 0.5,
        ..KvPolicyConfig::default()
    })
    .expect("valid");
    let candidate = Candidate {
        overlap_blocks: 3,
        active_decode_blocks: 10,
        active_requests: 4,
        ..Candidate::new("x", 1)
    };
    assert_eq!(policy.cost(&candidate, 5), 2.0 * 2.0 + 10.0 + 0.5 * 4.0);
    // An overlap longer than the prompt (a stale or shared longer chain) saves at most it.
    assert_eq!(policy.cost(&candidate, 2), 10.0 + 0.5 * 4.0);
}

#[test]
fn kv_softmax_prefers_cheap_instances_but_still_explores() {
    let policy = KvPolicy::new(KvPolicyConfig { temperature: 0.3, ..KvPolicyConfig::default() })
        .expect("valid");
    let hashes: Vec<u64> = (0..32).collect();
    let view =
        [Candidate { overlap_blocks: 32, ..Candidate::new("warm", 0) }, Candidate::new("cold", 0)];
    let mut warm = 0;
    for _ in 0..2000 {
        if policy.select(&view, &RequestInfo::new(&hashes, 0)) == Some(0) {
            warm += 1;
        }
    }
    // exp(0) : exp(-1/0.3) is about 28 : 1.
    assert!((1800..2000).contains(&warm), "{warm}");
}

/// The hot-spotting test: identical prompts, the caller adding each decision's load (and
/// the cache it creates) before the next one. Requests finish in order once `in_flight`
/// are outstanding. No instance may receive more than twice the mean.
fn identical_prompts_spread(policy: &dyn Policy, instances: usize, in_flight: usize) {
    let hashes: Vec<u64> = (100..164).collect();
    let blocks = hashes.len() as u64;
    let request = RequestInfo::new(&hashes, hashes.len() * 16);
    let ids = ids(instances);
    let mut view: Vec<Candidate<'_>> = ids.iter().map(|id| Candidate::new(id, 0)).collect();
    let mut running = std::collections::VecDeque::new();
    let mut received = vec![0usize; instances];
    let requests = 4000;
    for _ in 0..requests {
        let i = policy.select(&view, &request).expect("a candidate");
        received[i] += 1;
        view[i].overlap_blocks = hashes.len() as u32;
        view[i].in_flight += 1;
        view[i].active_decode_blocks += blocks + 8;
        running.push_back(i);
        if running.len() > in_flight {
            let done = running.pop_front().expect("running");
            view[done].in_flight -= 1;
            view[done].active_decode_blocks -= blocks + 8;
        }
    }
    let mean = requests as f64 / instances as f64;
    let max = *received.iter().max().expect("instances") as f64;
    assert!(max <= 2.0 * mean, "max {max} vs mean {mean}: {received:?}");
}

#[test]
fn identical_prompts_do_not_hot_spot() {
    for (instances, in_flight) in [(2, 1), (4, 16), (16, 64), (64, 200)] {
        for kind in [PolicyKind::Kv, PolicyKind::LeastLoaded, PolicyKind::PowerOfTwo] {
            identical_prompts_spread(kind.build().as_ref(), instances, in_flight);
        }
        let softmax =
            KvPolicy::new(KvPolicyConfig { temperature: 0.5, ..KvPolicyConfig::default() })
                .expect("valid");
        identical_prompts_spread(&softmax, instances, in_flight);
    }
}
