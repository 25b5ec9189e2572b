//! The etcd store against a real etcd: the store conformance suite, watches that outlive etcd
//! restarts and lost connections, a clear error when nothing listens, and a discovery
//! registration that comes back after etcd lost its data.

#[path = "support/etcd_server.rs"]
mod etcd_server;

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_server::EtcdServer;
use futures::StreamExt;
use switchyard_proto::{InstanceRecord, ModelCard};
use switchyard_runtime::store::etcd::EtcdStore;
use switchyard_runtime::store::{KvStore, WatchEvent, WatchStream, conformance};
use switchyard_runtime::{Discovery, Error};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Generous bounds: these tests check what happens on a loaded machine, never how fast.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const STEP_TIMEOUT: Duration = Duration::from_secs(30);
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(60);
const SUITE_TIMEOUT: Duration = Duration::from_secs(300);

async fn within<T>(what: &str, limit: Duration, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, future).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: not done within {limit:?}"),
    }
}

async fn connect(endpoint: String) -> EtcdStore {
    within("connect", CONNECT_TIMEOUT * 2, EtcdStore::connect(&[endpoint], CONNECT_TIMEOUT))
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

async fn next_event(watch: &mut WatchStream, what: &str) -> WatchEvent {
    match within(what, RECOVERY_TIMEOUT, watch.next()).await {
        Some(event) => event,
        None => panic!("{what}: the watch ended"),
    }
}

/// The next `n` events, as a set: relisting after a reconnect emits them in no promised order.
async fn next_events(watch: &mut WatchStream, n: usize, what: &str) -> BTreeSet<String> {
    let mut events = BTreeSet::new();
    for _ in 0..n {
        events.insert(format!("{:?}", next_event(watch, what).await));
    }
    events
}

fn put(key: &str, value: &[u8]) -> WatchEvent {
    WatchEvent::Put { key: key.to_owned(), value: value.to_vec() }
}

fn delete(key: &str) -> WatchEvent {
    WatchEvent::Delete { key: key.to_owned() }
}

fn as_set(events: &[WatchEvent]) -> BTreeSet<String> {
    events.iter().map(|event| format!("{event:?}")).collect()
}

/// Writes `key` through `store`, retrying while the store's connection comes back.
async fn put_eventually(store: &EtcdStore, key: &str, value: &[u8]) {
    within("put after reconnect", RECOVERY_TIMEOUT, async {
        while let Err(e) = store.put(key, value.to_vec(), None).await {
            eprintln!("put {key} not through yet: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_against_etcd() {
    let etcd = EtcdServer::start();
    let store = connect(etcd.endpoint()).await;
    within("conformance suite", SUITE_TIMEOUT, conformance::run_all(Arc::new(store))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_port_with_nothing_listening_fails_fast_and_clearly() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("local addr").port()
    };
    let endpoint = format!("http://127.0.0.1:{port}");
    let started = Instant::now();
    let outcome =
        within("connect", STEP_TIMEOUT * 2, EtcdStore::connect(&[endpoint], STEP_TIMEOUT)).await;
    let elapsed = started.elapsed();
    match outcome {
        Err(error @ Error::Connect { .. }) => {
            let message = error.to_string();
            assert!(
                message.starts_with(&format!("cannot reach etcd at http://127.0.0.1:{port}: ")),
                "unclear message: {message}"
            );
            assert!(message.contains("refused"), "the reason is missing: {message}");
        }
        other => panic!("expected Error::Connect, got {other:?}"),
    }
    // Refused at once rather than waited out: the connect timeout was never the answer.
    assert!(elapsed < STEP_TIMEOUT, "took {elapsed:?}, as long as the connect timeout");
    let none = within("connect", STEP_TIMEOUT, EtcdStore::connect(&[], STEP_TIMEOUT)).await;
    assert!(matches!(none, Err(Error::Config(_))), "no endpoint: {none:?}");
}

/// One watch, held across a restart on the same data directory (nothing lost, so nothing
/// re-emitted) and then a restart with a wiped one (every key gone, revisions starting over).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_survives_etcd_restarts() {
    let mut etcd = EtcdServer::start();
    let store = connect(etcd.endpoint()).await.with_call_timeout(Duration::from_secs(2));
    let prefix = "/switchyard/restart/instances/";
    let (a, b, c, d) =
        (format!("{prefix}a"), format!("{prefix}b"), format!("{prefix}c"), format!("{prefix}d"));
    put_eventually(&store, &a, b"a1").await;
    put_eventually(&store, &b, b"b1").await;
    let mut watch = within("watch", STEP_TIMEOUT, store.watch_prefix(prefix))
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"));
    let existing = next_events(&mut watch, 2, "existing keys").await;
    assert_eq!(existing, as_set(&[put(&a, b"a1"), put(&b, b"b1")]));

    etcd.kill();
    // Calls made while etcd is down fail within their bound instead of hanging. The first
    // call may still meet the dying connection (a broken stream, reported as a store error)
    // rather than a refused one.
    let asked = Instant::now();
    let down = within("get while down", STEP_TIMEOUT, store.get(&a)).await;
    match &down {
        Err(e @ (Error::Connect { .. } | Error::Timeout { .. } | Error::Store(_))) => {
            assert!(e.to_string().contains("etcd"), "unclear error: {e}");
        }
        other => panic!("get with etcd down: expected an error, got {other:?}"),
    }
    eprintln!("get with etcd down failed after {:?}: {down:?}", asked.elapsed());

    let restarted = Instant::now();
    etcd.restart();
    eprintln!("etcd restarted on its data dir in {:?}", restarted.elapsed());
    let back = Instant::now();
    put_eventually(&store, &c, b"c1").await;
    let put_at = back.elapsed();
    // The unchanged keys are not re-emitted: the first event is the new put.
    assert_eq!(next_event(&mut watch, "put after restart").await, put(&c, b"c1"));
    eprintln!(
        "after the restart: put through in {put_at:?}, seen by the old watch in {:?}",
        back.elapsed()
    );

    etcd.restart_wiped();
    let back = Instant::now();
    put_eventually(&store, &d, b"d1").await;
    let after_wipe = next_events(&mut watch, 4, "events after the wipe").await;
    assert_eq!(after_wipe, as_set(&[delete(&a), delete(&b), delete(&c), put(&d, b"d1")]));
    eprintln!("after the wiped restart: differences seen in {:?}", back.elapsed());

    // And it keeps following the new etcd.
    assert!(within("delete", STEP_TIMEOUT, store.delete(&d)).await.expect("delete"));
    assert_eq!(next_event(&mut watch, "delete after the wipe").await, delete(&d));
}

/// The watcher loses its connection (a proxy in front of etcd is cut) while etcd stays up and
/// changes; when the connection is back it reports what changed meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_changes_made_while_it_was_disconnected() {
    let etcd = EtcdServer::start();
    let direct = connect(etcd.endpoint()).await;
    let target = SocketAddr::from(([127, 0, 0, 1], etcd.client_port()));
    let mut proxy = Proxy::start(target).await;
    let watcher = connect(format!("http://{}", proxy.address)).await;

    let prefix = "/switchyard/cut/instances/";
    let (kept, gone, changed, added) = (
        format!("{prefix}kept"),
        format!("{prefix}gone"),
        format!("{prefix}changed"),
        format!("{prefix}added"),
    );
    for key in [&kept, &gone, &changed] {
        put_eventually(&direct, key, b"1").await;
    }
    let mut watch = within("watch", STEP_TIMEOUT, watcher.watch_prefix(prefix))
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"));
    let existing = next_events(&mut watch, 3, "existing keys").await;
    assert_eq!(existing, as_set(&[put(&kept, b"1"), put(&gone, b"1"), put(&changed, b"1")]));

    proxy.cut().await;
    assert!(within("delete", STEP_TIMEOUT, direct.delete(&gone)).await.expect("delete"));
    put_eventually(&direct, &changed, b"2").await;
    put_eventually(&direct, &added, b"1").await;
    // Nothing reaches the watcher while it is cut off.
    let quiet = tokio::time::timeout(Duration::from_secs(1), watch.next()).await;
    assert!(quiet.is_err(), "an event came through a cut connection: {quiet:?}");

    proxy.resume().await;
    let caught_up = next_events(&mut watch, 3, "changes made while disconnected").await;
    assert_eq!(caught_up, as_set(&[delete(&gone), put(&changed, b"2"), put(&added, b"1")]));
    put_eventually(&direct, &kept, b"2").await;
    assert_eq!(next_event(&mut watch, "put after resume").await, put(&kept, b"2"));
}

/// A watch's background task, and with it the watch on the etcd server, ends when its stream is
/// dropped or its store is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_or_closed_watches_end_on_the_server() {
    let etcd = EtcdServer::start();
    let store = connect(etcd.endpoint()).await;
    let watchers = |n: f64| {
        let etcd = &etcd;
        async move {
            within("etcd watcher count", STEP_TIMEOUT, async {
                while etcd.metric("etcd_debugging_mvcc_watcher_total") != Some(n) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
            .await;
        }
    };
    let watch = within("watch", STEP_TIMEOUT, store.watch_prefix("/dropped/"))
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"));
    watchers(1.0).await;
    drop(watch);
    watchers(0.0).await;

    let mut watch = within("watch", STEP_TIMEOUT, store.clone().watch_prefix("/closed/"))
        .await
        .unwrap_or_else(|e| panic!("watch: {e}"));
    watchers(1.0).await;
    within("close", STEP_TIMEOUT, store.close()).await;
    assert_eq!(within("watch end", STEP_TIMEOUT, watch.next()).await, None, "closed watch ends");
    watchers(0.0).await;
}

/// etcd comes back empty: the worker's keep-alive finds its lease gone and registers again, and
/// a frontend's instance watch follows the new etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_comes_back_after_etcd_loses_its_data() {
    let mut etcd = EtcdServer::start();
    let worker_store = Arc::new(connect(etcd.endpoint()).await);
    let frontend_store = Arc::new(connect(etcd.endpoint()).await);
    let shutdown = CancellationToken::new();
    let worker = Discovery::new(worker_store, "wipe");
    let frontend = Discovery::new(frontend_store.clone(), "wipe");
    let record = InstanceRecord {
        instance_id: "worker-1".to_owned(),
        namespace: "wipe".to_owned(),
        address: "127.0.0.1:1".to_owned(),
        card: Some(ModelCard { model: "m".to_owned(), ..ModelCard::default() }),
        transport: "tcp".to_owned(),
        ..InstanceRecord::default()
    };
    let key = format!("{}worker-1", frontend.instances_prefix());
    let registration = within(
        "register",
        STEP_TIMEOUT,
        worker.register(record, Duration::from_secs(3), shutdown.child_token()),
    )
    .await
    .unwrap_or_else(|e| panic!("register: {e}"));
    let instances =
        within("watch instances", STEP_TIMEOUT, frontend.watch_instances(shutdown.clone()))
            .await
            .unwrap_or_else(|e| panic!("watch instances: {e}"));
    assert_eq!(instances.current().for_model("m").len(), 1);

    etcd.restart_wiped();
    let back = Instant::now();
    within("re-registration", RECOVERY_TIMEOUT, async {
        loop {
            if let Ok(Some(_)) = frontend_store.get(&key).await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    eprintln!("registered again {:?} after etcd came back empty", back.elapsed());
    let mut snapshots = instances.subscribe();
    within("instance back in view", RECOVERY_TIMEOUT, snapshots.wait_for(|s| s.len() == 1))
        .await
        .expect("the instance watch ended");

    // The view follows the new etcd: deregistering empties it.
    within("deregister", STEP_TIMEOUT, registration.deregister())
        .await
        .unwrap_or_else(|e| panic!("deregister: {e}"));
    within("instance gone from view", RECOVERY_TIMEOUT, snapshots.wait_for(|s| s.is_empty()))
        .await
        .expect("the instance watch ended");
    shutdown.cancel();
    within("watch stops", STEP_TIMEOUT, instances.stopped()).await;
}

/// A TCP proxy in front of etcd whose connections the test can cut and restore, to break a
/// watcher's connection while etcd itself stays up.
struct Proxy {
    address: SocketAddr,
    target: SocketAddr,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let address = listener.local_addr().expect("proxy address");
        let mut proxy =
            Proxy { address, target, stop: CancellationToken::new(), tasks: TaskTracker::new() };
        proxy.serve(listener);
        proxy
    }

    fn serve(&mut self, listener: TcpListener) {
        let (stop, tasks, target) = (self.stop.clone(), self.tasks.clone(), self.target);
        self.tasks.spawn(async move {
            loop {
                let inbound = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok((inbound, _)) => inbound,
                        Err(_) => continue,
                    },
                };
                let stop = stop.clone();
                tasks.spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    let mut inbound = inbound;
                    tokio::select! {
                        () = stop.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
    }

    /// Closes the listener and every proxied connection; connecting is refused until resumed.
    async fn cut(&mut self) {
        self.stop.cancel();
        self.tasks.close();
        within("proxy stops", STEP_TIMEOUT, self.tasks.wait()).await;
        self.tasks.reopen();
    }

    /// Listens again on the same address.
    async fn resume(&mut self) {
        let socket = TcpSocket::new_v4().expect("socket");
        // The cut connections linger in TIME_WAIT on this port.
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(self.address).expect("rebind proxy");
        let listener = socket.listen(64).expect("listen");
        self.stop = CancellationToken::new();
        self.serve(listener);
    }
}
