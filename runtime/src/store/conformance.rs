//! The test suite every [`KvStore`] passes: call [`run_all`] (or one check) from a test.
//!
//! Checks panic on failure. Each works under a prefix of its own, so checks may share one store
//! (an etcd server, say) and run side by side. They use real time, short TTLs and generous
//! timeouts: they test what happens, never how fast.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;

use super::{KvStore, WatchEvent, WatchStream};
use crate::Error;

/// Longest wait for one store call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for a lease to be seen expired. Stores may round a TTL up (etcd's minimum is
/// about 2 s) and find expiry late on a loaded machine.
const EXPIRY_TIMEOUT: Duration = Duration::from_secs(30);
/// The TTL of leases meant to expire.
const SHORT_TTL: Duration = Duration::from_secs(1);

/// Runs every check against `store`.
pub async fn run_all(store: Arc<dyn KvStore>) {
    put_get_overwrite_delete(Arc::clone(&store)).await;
    get_prefix_is_scoped_and_sorted(Arc::clone(&store)).await;
    watch_yields_existing_then_changes(Arc::clone(&store)).await;
    lease_expiry_deletes_its_keys(Arc::clone(&store)).await;
    keep_alive_extends_lease(Arc::clone(&store)).await;
    revoke_deletes_keys_at_once(Arc::clone(&store)).await;
    expired_lease_refuses_keep_alive_and_put(store).await;
}

/// A fresh prefix, so that checks never see each other's keys.
fn fresh_prefix(check: &str) -> String {
    format!("/conformance/{}/{check}/", uuid::Uuid::new_v4().simple())
}

/// Awaits `call`, panicking when it takes longer than [`CALL_TIMEOUT`].
async fn within<T>(what: &str, call: impl Future<Output = T>) -> T {
    match tokio::time::timeout(CALL_TIMEOUT, call).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: no answer within {CALL_TIMEOUT:?}"),
    }
}

async fn next_event(watch: &mut WatchStream, what: &str) -> WatchEvent {
    match tokio::time::timeout(EXPIRY_TIMEOUT, watch.next()).await {
        Ok(Some(event)) => event,
        Ok(None) => panic!("{what}: the watch ended"),
        Err(_) => panic!("{what}: no watch event within {EXPIRY_TIMEOUT:?}"),
    }
}

fn put_event(key: &str, value: &[u8]) -> WatchEvent {
    WatchEvent::Put { key: key.to_owned(), value: value.to_vec() }
}

fn delete_event(key: &str) -> WatchEvent {
    WatchEvent::Delete { key: key.to_owned() }
}

async fn get(store: &dyn KvStore, key: &str) -> Option<Vec<u8>> {
    within("get", store.get(key)).await.unwrap_or_else(|e| panic!("get {key}: {e}"))
}

async fn put(store: &dyn KvStore, key: &str, value: &[u8], lease: Option<u64>) {
    within("put", store.put(key, value.to_vec(), lease))
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e}"));
}

async fn watch(store: &dyn KvStore, prefix: &str) -> WatchStream {
    within("watch", store.watch_prefix(prefix)).await.unwrap_or_else(|e| panic!("watch: {e}"))
}

async fn grant(store: &dyn KvStore, ttl: Duration) -> u64 {
    within("grant", store.grant_lease(ttl)).await.unwrap_or_else(|e| panic!("grant: {e}"))
}

/// Polls until `key` is absent.
async fn wait_absent(store: &dyn KvStore, key: &str) {
    let waited = tokio::time::timeout(EXPIRY_TIMEOUT, async {
        while get(store, key).await.is_some() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    if waited.await.is_err() {
        panic!("{key} still present after {EXPIRY_TIMEOUT:?}");
    }
}

/// Put, get, overwrite, delete; delete says whether the key existed.
pub async fn put_get_overwrite_delete(store: Arc<dyn KvStore>) {
    let store = store.as_ref();
    let key = format!("{}key", fresh_prefix("basic"));
    assert_eq!(get(store, &key).await, None, "a key never written is absent");
    put(store, &key, b"one", None).await;
    assert_eq!(get(store, &key).await.as_deref(), Some(&b"one"[..]));
    put(store, &key, b"two", None).await;
    assert_eq!(get(store, &key).await.as_deref(), Some(&b"two"[..]), "put overwrites");
    let binary = [0u8, 10, 255, b'\n'];
    put(store, &key, &binary, None).await;
    assert_eq!(get(store, &key).await.as_deref(), Some(&binary[..]), "values are bytes");
    assert!(within("delete", store.delete(&key)).await.expect("delete"), "delete of a present key");
    assert_eq!(get(store, &key).await, None, "deleted key is absent");
    assert!(!within("delete", store.delete(&key)).await.expect("delete"), "delete of absent key");
}

/// `get_prefix` returns exactly the keys under the prefix, sorted by key.
pub async fn get_prefix_is_scoped_and_sorted(store: Arc<dyn KvStore>) {
    let store = store.as_ref();
    let root = fresh_prefix("prefix");
    let prefix = format!("{root}abc/");
    let inside = [format!("{prefix}b"), format!("{prefix}a"), format!("{prefix}c/deep")];
    let outside = [format!("{root}abcd/x"), format!("{root}abc"), format!("{root}ab/x")];
    for key in inside.iter().chain(&outside) {
        put(store, key, key.as_bytes(), None).await;
    }
    let listed = within("get_prefix", store.get_prefix(&prefix)).await.expect("get_prefix");
    let mut expected: Vec<(String, Vec<u8>)> =
        inside.iter().map(|key| (key.clone(), key.clone().into_bytes())).collect();
    expected.sort();
    assert_eq!(listed, expected);
    let empty = format!("{root}nothing/");
    let none = within("get_prefix", store.get_prefix(&empty)).await.expect("get_prefix");
    assert!(none.is_empty(), "an empty prefix lists nothing: {none:?}");
}

/// A watch yields the present keys as puts, then later changes under its prefix only.
pub async fn watch_yields_existing_then_changes(store: Arc<dyn KvStore>) {
    let store = store.as_ref();
    let root = fresh_prefix("watch");
    let prefix = format!("{root}in/");
    let (a, b, c) = (format!("{prefix}a"), format!("{prefix}b"), format!("{prefix}c"));
    put(store, &a, b"a1", None).await;
    put(store, &b, b"b1", None).await;
    put(store, &format!("{root}out/x"), b"x", None).await;

    let mut events = watch(store, &prefix).await;
    let first =
        [next_event(&mut events, "existing").await, next_event(&mut events, "existing").await];
    let first: BTreeSet<_> = first.iter().map(|e| format!("{e:?}")).collect();
    let expected: BTreeSet<_> =
        [put_event(&a, b"a1"), put_event(&b, b"b1")].iter().map(|e| format!("{e:?}")).collect();
    assert_eq!(first, expected, "existing keys come first, as puts");

    // One change at a time, each awaited, so that stores which batch changes still give one
    // order.
    put(store, &c, b"c1", None).await;
    assert_eq!(next_event(&mut events, "put").await, put_event(&c, b"c1"));
    put(store, &b, b"b2", None).await;
    assert_eq!(next_event(&mut events, "overwrite").await, put_event(&b, b"b2"));
    // A change elsewhere, then one here: only the second may come.
    put(store, &format!("{root}out/y"), b"y", None).await;
    put(store, &format!("{root}in"), b"no slash", None).await;
    assert!(within("delete", store.delete(&a)).await.expect("delete"));
    assert_eq!(next_event(&mut events, "delete").await, delete_event(&a));
}

/// A lease left alone expires: its keys vanish and a watcher sees them deleted; keys not bound to
/// it, or re-put without it, stay.
pub async fn lease_expiry_deletes_its_keys(store: Arc<dyn KvStore>) {
    let store = store.as_ref();
    let prefix = fresh_prefix("expiry");
    let (leased, unleased, rebound) =
        (format!("{prefix}leased"), format!("{prefix}plain"), format!("{prefix}rebound"));
    // Watch first: the lease may expire before a later watch would have started.
    let mut events = watch(store, &prefix).await;
    put(store, &unleased, b"stays", None).await;
    let lease = grant(store, SHORT_TTL).await;
    put(store, &leased, b"goes", Some(lease)).await;
    put(store, &rebound, b"leased first", Some(lease)).await;
    put(store, &rebound, b"then plain", None).await;

    // Stores that scan may fold several puts into one event, so wait for the delete and only
    // check that nothing else was deleted on the way.
    loop {
        match next_event(&mut events, "expiry").await {
            WatchEvent::Delete { key } if key == leased => break,
            WatchEvent::Delete { key } => panic!("{key} deleted, but its lease was not expiring"),
            WatchEvent::Put { .. } => {}
        }
    }
    assert_eq!(get(store, &leased).await, None, "an expired key is absent");
    let listed = within("get_prefix", store.get_prefix(&prefix)).await.expect("get_prefix");
    let expected = vec![(unleased, b"stays".to_vec()), (rebound, b"then plain".to_vec())];
    assert_eq!(listed, expected, "keys not bound to the expired lease stay");
}

/// Keep-alives hold a lease well past its TTL.
pub async fn keep_alive_extends_lease(store: Arc<dyn KvStore>) {
    let store = store.as_ref();
    let key = format!("{}kept", fresh_prefix("keepalive"));
    // Longer than SHORT_TTL and kept alive often, so that a slow machine still keeps it.
    let ttl = Duration::from_secs(2);
    let lease = grant(store, ttl).await;
    put(store, &key, b"alive", Some(lease)).await;
    let until = tokio::time::Instant::now() + ttl * 3;
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(ttl / 8).await;
        within("keep_alive", store.keep_alive(lease))
            .await
            .unwrap_or_else(|e| panic!("keep_alive of a live lease: {e}"));
    }
    assert_eq!(get(store, &key).await.as_deref(), Some(&b"alive"[..]), "kept past the TTL");
    within("revoke", store.revoke_lease(lease)).await.expect("revoke");
}

/// Revoking a lease removes its keys at once, and watchers see the deletes.
pub async fn revoke_deletes_keys_at_once(store: Arc<dyn KvStore>) {
    let store = store.as_ref();
    let prefix = fresh_prefix("revoke");
    let key = format!("{prefix}k");
    let lease = grant(store, Duration::from_secs(60)).await;
    put(store, &key, b"v", Some(lease)).await;
    let mut events = watch(store, &prefix).await;
    assert_eq!(next_event(&mut events, "existing").await, put_event(&key, b"v"));
    within("revoke", store.revoke_lease(lease)).await.expect("revoke");
    assert_eq!(get(store, &key).await, None, "revoked keys are gone when revoke returns");
    assert_eq!(next_event(&mut events, "revoke").await, delete_event(&key));
}

/// Once a lease has expired, keep-alive and put with it fail with [`Error::LeaseExpired`].
pub async fn expired_lease_refuses_keep_alive_and_put(store: Arc<dyn KvStore>) {
    let store = store.as_ref();
    let key = format!("{}k", fresh_prefix("expired"));
    let lease = grant(store, SHORT_TTL).await;
    put(store, &key, b"v", Some(lease)).await;
    wait_absent(store, &key).await;
    match within("keep_alive", store.keep_alive(lease)).await {
        Err(Error::LeaseExpired(id)) => assert_eq!(id, lease),
        other => panic!("keep_alive of an expired lease: expected LeaseExpired, got {other:?}"),
    }
    match within("put", store.put(&key, b"late".to_vec(), Some(lease))).await {
        Err(Error::LeaseExpired(id)) => assert_eq!(id, lease),
        other => panic!("put with an expired lease: expected LeaseExpired, got {other:?}"),
    }
    assert_eq!(get(store, &key).await, None, "a refused put writes nothing");
}
