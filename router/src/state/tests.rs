//! Unit and property tests of the routing state: pair selection and the conditional
//! decision.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::kv_index::KvChange;
use crate::policy::{KvPolicy, LeastLoaded};

const MODEL: &str = "m";
const BS: usize = 16;

/// A state over `specs`, every instance sending KV events (a `Cleared` first), so decisions
/// are not recorded as cached blocks.
fn state(specs: &[(&str, Role)], disagg: DisaggConfig) -> RoutingState {
    let mut state = silent_state(specs, disagg);
    for (instance, _) in specs {
        let cleared = KvEvent { event_id: 0, change: KvChange::Cleared };
        state.apply_kv(instance, &cleared).expect("instance is live").expect("event applies");
    }
    state
}

/// A state over instances that send no KV events.
fn silent_state(specs: &[(&str, Role)], disagg: DisaggConfig) -> RoutingState {
    let mut state = RoutingState::new(RoutingConfig { disagg, ..RoutingConfig::default() });
    state.sync(specs.iter().map(|&(instance, role)| InstanceSpec { instance, model: MODEL, role }));
    state
}

fn hashes(n: usize) -> Vec<u64> {
    (1..=n as u64).collect()
}

fn request<'a>(hashes: &'a [u64], tokens: usize, exclude: &'a [Arc<str>]) -> RouteRequest<'a> {
    RouteRequest {
        model: MODEL,
        block_hashes: hashes,
        prompt_tokens: tokens,
        block_size: BS,
        exclude,
        allow_remote_prefill: true,
    }
}

fn store(state: &mut RoutingState, instance: &str, blocks: &[u64]) {
    let event = KvEvent { event_id: 1, change: KvChange::Stored { parent: None, blocks } };
    state.apply_kv(instance, &event).expect("instance is live").expect("event applies");
}

fn load(waiting: u32) -> InstanceLoad {
    InstanceLoad { waiting_requests: waiting, total_kv_blocks: 1000, ..InstanceLoad::default() }
}

const SPLIT: DisaggConfig = DisaggConfig { max_local_prefill_tokens: 64, max_prefill_queue: 2 };

#[test]
fn aggregated_models_never_split() {
    let mut s = state(&[("a", Role::Aggregated), ("b", Role::Aggregated)], SPLIT);
    let h = hashes(64);
    let chosen = s
        .select(&request(&h, 1024, &[]), &KvPolicy::default(), Duration::ZERO)
        .expect("present in this test");
    assert_eq!(chosen.place, PrefillPlace::Local(LocalReason::NoPrefillInstance));
    assert!(chosen.prefill.is_none());
}

#[test]
fn a_long_prompt_goes_to_a_prefill_instance_and_the_pair_is_booked() {
    let mut s = state(&[("p", Role::Prefill), ("d", Role::Decode)], SPLIT);
    let h = hashes(64);
    let chosen = s
        .select(&request(&h, 1024, &[]), &KvPolicy::default(), Duration::ZERO)
        .expect("present in this test");
    assert_eq!(chosen.place, PrefillPlace::Remote);
    assert_eq!(&*chosen.decode.instance, "d");
    let prefill = chosen.prefill.clone().expect("present in this test");
    assert_eq!(&*prefill.booking.instance, "p");
    assert_eq!((s.booked_blocks("d"), s.booked_requests("d")), (64, 1));
    assert_eq!((s.booked_blocks("p"), s.booked_requests("p")), (64, 1));
    s.release(&prefill.booking);
    s.release(&chosen.decode);
    assert_eq!((s.booked_blocks("d"), s.booked_blocks("p")), (0, 0));
    assert_eq!((s.booked_requests("d"), s.booked_requests("p")), (0, 0));
}

#[test]
fn prefill_instances_never_decode() {
    let mut s = state(&[("p1", Role::Prefill), ("p2", Role::Prefill)], SPLIT);
    let h = hashes(64);
    assert!(s.select(&request(&h, 1024, &[]), &LeastLoaded, Duration::ZERO).is_none());
}

#[test]
fn a_short_or_cached_prompt_is_prefilled_locally() {
    let mut s = state(&[("p", Role::Prefill), ("d", Role::Decode)], SPLIT);
    let h = hashes(4);
    let chosen = s
        .select(&request(&h, 64, &[]), &KvPolicy::default(), Duration::ZERO)
        .expect("present in this test");
    assert_eq!(chosen.place, PrefillPlace::Local(LocalReason::ShortPrompt));
    assert_eq!(s.booked_requests("p"), 0);
    // 1,024 tokens, of which the decode instance caches all but 48.
    let long = hashes(64);
    store(&mut s, "d", &long[..61]);
    let chosen = s
        .select(&request(&long, 1024, &[]), &KvPolicy::default(), Duration::ZERO)
        .expect("present in this test");
    assert_eq!(chosen.decode_overlap_blocks, 61);
    assert_eq!(chosen.place, PrefillPlace::Local(LocalReason::ShortPrompt));
}

#[test]
fn full_prefill_queues_send_the_prompt_to_the_decode_instance() {
    let mut s = state(&[("p1", Role::Prefill), ("p2", Role::Prefill), ("d", Role::Decode)], SPLIT);
    s.apply_load("p1", load(3));
    s.apply_load("p2", load(2));
    let h = hashes(64);
    // p2 is at the limit but not over it: it takes one more.
    let chosen = s
        .select(&request(&h, 1024, &[]), &LeastLoaded, Duration::ZERO)
        .expect("present in this test");
    assert_eq!(chosen.prefill.map(|p| p.booking.instance), Some("p2".into()));
    s.apply_load("p2", load(3));
    let chosen = s
        .select(&request(&h, 1024, &[]), &LeastLoaded, Duration::ZERO)
        .expect("present in this test");
    assert_eq!(chosen.place, PrefillPlace::Local(LocalReason::PrefillQueuesFull));
    assert!(chosen.prefill.is_none());
}

#[test]
fn bookings_count_toward_a_prefill_queue_before_any_report() {
    let config = DisaggConfig { max_prefill_queue: 1, ..SPLIT };
    let mut s = state(&[("p", Role::Prefill), ("d", Role::Decode)], config);
    let h = hashes(64);
    let places: Vec<PrefillPlace> = (0..3)
        .map(|_| {
            s.select(&request(&h, 1024, &[]), &LeastLoaded, Duration::ZERO)
                .expect("present in this test")
                .place
        })
        .collect();
    assert_eq!(
        places,
        [
            PrefillPlace::Remote,
            PrefillPlace::Remote,
            PrefillPlace::Local(LocalReason::PrefillQueuesFull)
        ]
    );
}

#[test]
fn the_prefill_instance_holding_the_prefix_wins() {
    let mut s = state(&[("p1", Role::Prefill), ("p2", Role::Prefill), ("d", Role::Decode)], SPLIT);
    let h = hashes(64);
    store(&mut s, "p2", &h[..40]);
    for _ in 0..5 {
        let chosen = s
            .select(&request(&h, 1024, &[]), &KvPolicy::default(), Duration::ZERO)
            .expect("present in this test");
        let prefill = chosen.prefill.clone().expect("present in this test");
        assert_eq!(&*prefill.booking.instance, "p2");
        assert_eq!(prefill.overlap_blocks, 40);
        s.release(&prefill.booking);
        s.release(&chosen.decode);
    }
}

#[test]
fn excluded_and_disallowed_instances_are_skipped() {
    let mut s =
        state(&[("p", Role::Prefill), ("d1", Role::Decode), ("a", Role::Aggregated)], SPLIT);
    let h = hashes(64);
    let tried: Vec<Arc<str>> = vec!["d1".into(), "p".into()];
    let chosen = s
        .select(&request(&h, 1024, &tried), &LeastLoaded, Duration::ZERO)
        .expect("present in this test");
    assert_eq!(&*chosen.decode.instance, "a");
    assert_eq!(chosen.place, PrefillPlace::Local(LocalReason::NoPrefillInstance));
    let mut fallback = request(&h, 1024, &[]);
    fallback.allow_remote_prefill = false;
    let chosen = s.select(&fallback, &LeastLoaded, Duration::ZERO).expect("present in this test");
    assert_eq!(chosen.place, PrefillPlace::Local(LocalReason::NotAllowed));
}

#[test]
fn departed_instances_leave_and_their_bookings_release_quietly() {
    let mut s = state(&[("p", Role::Prefill), ("d", Role::Decode)], SPLIT);
    let h = hashes(64);
    let chosen = s
        .select(&request(&h, 1024, &[]), &LeastLoaded, Duration::ZERO)
        .expect("present in this test");
    s.sync([InstanceSpec { instance: "d", model: MODEL, role: Role::Decode }]);
    assert_eq!(s.index(MODEL).expect("present in this test").instances(), 1);
    assert!(!s.apply_load("p", load(0)));
    s.release(&chosen.prefill.expect("present in this test").booking);
    s.release(&chosen.decode);
    assert_eq!(s.booked_requests("d"), 0);
    // A role change is taken in place.
    s.sync([InstanceSpec { instance: "d", model: MODEL, role: Role::Prefill }]);
    assert!(s.select(&request(&h, 1024, &[]), &LeastLoaded, Duration::ZERO).is_none());
}

#[test]
fn decisions_stand_in_for_silent_instances_until_their_ttl() {
    let mut s = silent_state(&[("a", Role::Aggregated), ("b", Role::Aggregated)], SPLIT);
    let h = hashes(32);
    let first = s
        .select(&request(&h, 512, &[]), &KvPolicy::default(), Duration::ZERO)
        .expect("present in this test");
    s.release(&first.decode);
    let again = s
        .select(&request(&h, 512, &[]), &KvPolicy::default(), Duration::from_secs(1))
        .expect("present in this test");
    assert_eq!(again.decode.instance, first.decode.instance);
    assert_eq!(again.decode_overlap_blocks, 32);
    s.release(&again.decode);
    let late = s
        .select(&request(&h, 512, &[]), &KvPolicy::default(), Duration::from_secs(1000))
        .expect("present in this test");
    assert_eq!(late.decode_overlap_blocks, 0);
}

#[test]
fn the_conditional_decision_alone() {
    let c = DisaggConfig { max_local_prefill_tokens: 100, max_prefill_queue: 4 };
    assert_eq!(c.place(1000, []), PrefillPlace::Local(LocalReason::NoPrefillInstance));
    assert_eq!(c.place(100, [0]), PrefillPlace::Local(LocalReason::ShortPrompt));
    assert_eq!(c.place(101, [0]), PrefillPlace::Remote);
    assert_eq!(c.place(101, [5, 9]), PrefillPlace::Local(LocalReason::PrefillQueuesFull));
    assert_eq!(c.place(101, [5, 4]), PrefillPlace::Remote);
}

proptest! {
    /// Over any fleet and any request: the decode instance decodes, the prefill instance
    /// (when there is one) is a prefill instance under its queue limit, neither was
    /// excluded, the place agrees with the conditional rule, and releasing every booking
    /// leaves nothing booked.
    #[test]
    fn selections_respect_roles_limits_and_bookings(
        roles in prop::collection::vec(0u8..3, 1..12),
        waiting in prop::collection::vec(0u32..6, 12),
        cached in prop::collection::vec(0usize..40, 12),
        tokens in 1usize..1024,
        max_local in 0usize..600,
        max_queue in 0u32..5,
        excluded in prop::collection::vec(any::<bool>(), 12),
        requests in 1usize..6,
    ) {
        let config = DisaggConfig { max_local_prefill_tokens: max_local, max_prefill_queue: max_queue };
        let names: Vec<String> = (0..roles.len()).map(|i| format!("i{i}")).collect();
        let role_of = |r: u8| match r { 0 => Role::Aggregated, 1 => Role::Prefill, _ => Role::Decode };
        let specs: Vec<(&str, Role)> =
            names.iter().zip(&roles).map(|(n, &r)| (n.as_str(), role_of(r))).collect();
        let mut s = state(&specs, config);
        let h: Vec<u64> = hashes(tokens / BS);
        for (i, name) in names.iter().enumerate() {
            s.apply_load(name, load(waiting[i]));
            let n = cached[i].min(h.len());
            if n > 0 {
                store(&mut s, name, &h[..n]);
            }
        }
        let exclude: Vec<Arc<str>> =
            names.iter().zip(&excluded).filter(|(_, x)| **x).map(|(n, _)| n.as_str().into()).collect();
        let roles_by_name: HashMap<&str, Role> = specs.iter().copied().collect();
        let mut bookings = Vec::new();
        for _ in 0..requests {
            let queues_before: HashMap<String, u32> = names
                .iter()
                .map(|n| {
                    let w = waiting[names.iter().position(|x| x == n).unwrap_or(0)];
                    (n.clone(), w.max(s.booked_requests(n)))
                })
                .collect();
            let chosen = s.select(&request(&h, tokens, &exclude), &KvPolicy::default(), Duration::ZERO);
            let usable_decoders = specs
                .iter()
                .filter(|(n, r)| r.decodes() && !exclude.iter().any(|x| &**x == *n))
                .count();
            let Some(chosen) = chosen else {
                prop_assert_eq!(usable_decoders, 0);
                break;
            };
            let decode = &*chosen.decode.instance;
            prop_assert!(roles_by_name[decode].decodes());
            prop_assert!(!exclude.iter().any(|x| &**x == decode));
            let usable_prefill: Vec<&str> = specs
                .iter()
                .filter(|(n, r)| *r == Role::Prefill && !exclude.iter().any(|x| &**x == *n))
                .map(|(n, _)| *n)
                .collect();
            let uncached = tokens.saturating_sub(chosen.decode_overlap_blocks as usize * BS);
            match chosen.place {
                PrefillPlace::Remote => {
                    let prefill = chosen.prefill.clone().expect("remote has a prefill choice");
                    let p = &*prefill.booking.instance;
                    prop_assert_eq!(roles_by_name[p], Role::Prefill);
                    prop_assert!(!exclude.iter().any(|x| &**x == p));
                    prop_assert!(queues_before[p] <= max_queue);
                    prop_assert!(uncached > max_local);
                    bookings.push(prefill.booking);
                }
                PrefillPlace::Local(reason) => {
                    prop_assert!(chosen.prefill.is_none());
                    match reason {
                        LocalReason::NoPrefillInstance => prop_assert!(usable_prefill.is_empty()),
                        LocalReason::ShortPrompt => prop_assert!(uncached <= max_local),
                        LocalReason::PrefillQueuesFull => prop_assert!(
                            usable_prefill.iter().all(|p| queues_before[*p] > max_queue)
                        ),
                        LocalReason::NotAllowed => prop_assert!(false, "remote was allowed"),
                    }
                }
            }
            bookings.push(chosen.decode);
        }
        for booking in &bookings {
            s.release(booking);
        }
        for name in &names {
            prop_assert_eq!(s.booked_requests(name), 0);
            prop_assert_eq!(s.booked_blocks(name), 0);
        }
    }
}
