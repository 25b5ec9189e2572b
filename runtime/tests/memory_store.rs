//! The memory store: the shared store suite, and its leases under paused tokio time.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard_runtime::store::conformance;
use switchyard_runtime::store::memory::MemoryStore;
use switchyard_runtime::{Error, KvStore, WatchEvent};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn passes_the_store_suite() {
    let run = conformance::run_all(Arc::new(MemoryStore::new()));
    timeout(Duration::from_secs(180), run).await.expect("suite within its time");
}

#[tokio::test(start_paused = true)]
async fn lease_expires_exactly_at_its_ttl_in_paused_time() {
    let store = MemoryStore::new();
    let ttl = Duration::from_secs(10);
    let lease = timeout(LIMIT, store.grant_lease(ttl)).await.unwrap().unwrap();
    timeout(LIMIT, store.put("/t/k", b"v".to_vec(), Some(lease))).await.unwrap().unwrap();
    let mut events = timeout(LIMIT, store.watch_prefix("/t/")).await.unwrap().unwrap();
    let first = timeout(LIMIT, events.next()).await.unwrap();
    assert_eq!(first, Some(WatchEvent::Put { key: "/t/k".into(), value: b"v".to_vec() }));

    // Kept alive at a third of the TTL, it outlives the TTL several times over.
    for _ in 0..9 {
        tokio::time::sleep(ttl / 3).await;
        timeout(LIMIT, store.keep_alive(lease)).await.unwrap().unwrap();
    }
    assert!(timeout(LIMIT, store.get("/t/k")).await.unwrap().unwrap().is_some());

    // Left alone, it is present just before its deadline and gone at it.
    tokio::time::sleep(ttl - Duration::from_millis(1)).await;
    assert!(timeout(LIMIT, store.get("/t/k")).await.unwrap().unwrap().is_some());
    let started = tokio::time::Instant::now();
    let deleted = timeout(LIMIT, events.next()).await.unwrap();
    assert_eq!(deleted, Some(WatchEvent::Delete { key: "/t/k".into() }));
    // Paused time moves only to timers, so this is exact, not a guess about load.
    assert!(started.elapsed() <= Duration::from_millis(10), "the reaper wakes at the deadline");
    match timeout(LIMIT, store.keep_alive(lease)).await.unwrap() {
        Err(Error::LeaseExpired(id)) => assert_eq!(id, lease),
        other => panic!("expected LeaseExpired, got {other:?}"),
    }
}

#[tokio::test]
async fn clones_share_one_store() {
    let store = MemoryStore::new();
    let clone = store.clone();
    timeout(LIMIT, store.put("/t/shared", b"1".to_vec(), None)).await.unwrap().unwrap();
    let seen = timeout(LIMIT, clone.get("/t/shared")).await.unwrap().unwrap();
    assert_eq!(seen.as_deref(), Some(&b"1"[..]));
}

#[tokio::test]
async fn a_watch_outlives_the_store_handles() {
    let store = MemoryStore::new();
    let lease =
        timeout(LIMIT, store.grant_lease(Duration::from_millis(200))).await.unwrap().unwrap();
    timeout(LIMIT, store.put("/t/k", b"v".to_vec(), Some(lease))).await.unwrap().unwrap();
    let mut events = timeout(LIMIT, store.watch_prefix("/t/")).await.unwrap().unwrap();
    drop(store);
    // The reaper still runs for the watch: the lease expires and the watch says so.
    let put = timeout(LIMIT, events.next()).await.unwrap();
    assert!(matches!(put, Some(WatchEvent::Put { .. })), "got {put:?}");
    let delete = timeout(LIMIT, events.next()).await.unwrap();
    assert_eq!(delete, Some(WatchEvent::Delete { key: "/t/k".into() }));
}
