//! The file store: the shared store suite, and two handles on one directory, as two processes
//! of one machine would have.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use switchyard_runtime::store::conformance;
use switchyard_runtime::store::file::FileStore;
use switchyard_runtime::{KvStore, WatchEvent, WatchStream};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

async fn next_event(events: &mut WatchStream) -> WatchEvent {
    timeout(LIMIT, events.next()).await.expect("a watch event in time").expect("watch goes on")
}

#[tokio::test]
async fn passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    timeout(Duration::from_secs(180), conformance::run_all(Arc::new(store)))
        .await
        .expect("suite within its time");
}

#[tokio::test]
async fn two_handles_on_one_directory_see_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let writer = FileStore::open(dir.path()).unwrap();
    let reader = FileStore::open(dir.path()).unwrap();
    let key = "/switchyard/default/instances/a b%c";

    let mut events = timeout(LIMIT, reader.watch_prefix("/switchyard/")).await.unwrap().unwrap();
    let lease = timeout(LIMIT, writer.grant_lease(Duration::from_secs(2))).await.unwrap().unwrap();
    timeout(LIMIT, writer.put(key, b"v1".to_vec(), Some(lease))).await.unwrap().unwrap();
    assert_eq!(
        next_event(&mut events).await,
        WatchEvent::Put { key: key.into(), value: b"v1".to_vec() },
        "the other handle's put reaches the watch"
    );
    let read = timeout(LIMIT, reader.get(key)).await.unwrap().unwrap();
    assert_eq!(read.as_deref(), Some(&b"v1"[..]), "the other handle's put is readable");

    // The writer stops keeping its lease alive, as a crashed process would: the reader's watch
    // finds the expiry by itself, with no file event to wake it.
    assert_eq!(next_event(&mut events).await, WatchEvent::Delete { key: key.into() });
    assert_eq!(timeout(LIMIT, writer.get(key)).await.unwrap().unwrap(), None);
    let keys = std::fs::read_dir(dir.path().join("keys")).unwrap().count();
    let leases = std::fs::read_dir(dir.path().join("leases")).unwrap().count();
    assert_eq!((keys, leases), (0, 0), "whoever saw the expiry removed the files");

    // Unleased keys and deletes cross over too.
    timeout(LIMIT, reader.put("/switchyard/x", b"x".to_vec(), None)).await.unwrap().unwrap();
    assert_eq!(
        next_event(&mut events).await,
        WatchEvent::Put { key: "/switchyard/x".into(), value: b"x".to_vec() }
    );
    assert!(timeout(LIMIT, writer.delete("/switchyard/x")).await.unwrap().unwrap());
    assert_eq!(next_event(&mut events).await, WatchEvent::Delete { key: "/switchyard/x".into() });
}

#[tokio::test]
async fn a_revoke_in_one_handle_is_seen_by_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let owner = FileStore::open(dir.path()).unwrap();
    let other = FileStore::open(dir.path()).unwrap();
    let lease = timeout(LIMIT, owner.grant_lease(Duration::from_secs(60))).await.unwrap().unwrap();
    for key in ["/r/1", "/r/2"] {
        timeout(LIMIT, owner.put(key, b"v".to_vec(), Some(lease))).await.unwrap().unwrap();
    }
    let listed = timeout(LIMIT, other.get_prefix("/r/")).await.unwrap().unwrap();
    assert_eq!(listed.len(), 2);
    timeout(LIMIT, owner.revoke_lease(lease)).await.unwrap().unwrap();
    let listed = timeout(LIMIT, other.get_prefix("/r/")).await.unwrap().unwrap();
    assert!(listed.is_empty(), "revoked keys are gone for every handle: {listed:?}");
    let refused = timeout(LIMIT, other.keep_alive(lease)).await.unwrap();
    assert!(refused.is_err(), "a revoked lease cannot be kept alive");
}

#[tokio::test]
async fn foreign_and_temp_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    timeout(LIMIT, store.put("/f/k", b"v".to_vec(), None)).await.unwrap().unwrap();
    std::fs::write(dir.path().join("keys").join(".tmp-leftover"), b"lease=0\npartial").unwrap();
    std::fs::write(dir.path().join("keys").join("README.txt"), b"not a key").unwrap();
    let listed = timeout(LIMIT, store.get_prefix("/")).await.unwrap().unwrap();
    assert_eq!(listed, vec![("/f/k".to_owned(), b"v".to_vec())]);
}

#[tokio::test]
async fn a_grant_sweeps_expired_leases_nobody_refers_to() {
    let dir = tempfile::tempdir().unwrap();
    let store = FileStore::open(dir.path()).unwrap();
    let orphan = dir.path().join("leases").join("12345");
    std::fs::write(&orphan, b"deadline_ms=1 ttl_ms=1000\n").unwrap();
    let live = timeout(LIMIT, store.grant_lease(Duration::from_secs(60))).await.unwrap().unwrap();
    assert!(!orphan.exists(), "the expired lease file is swept");
    let live_file = dir.path().join("leases").join(live.to_string());
    assert!(live_file.exists(), "the new lease stays");
}
