//! A [`KvStore`] on etcd: the discovery store for deployments that span machines.
//!
//! Keys are used as given (the discovery layer prefixes them with `/switchyard/<namespace>/`),
//! leases are etcd leases, and every call is bounded by a timeout so that a stuck or absent etcd
//! is an error, never a hang.
//!
//! A watch lists its prefix, then follows etcd's watch from the revision after that list. When
//! the watch breaks (etcd restarted, connection lost, watch cancelled after a compaction) it
//! reconnects with backoff, lists again, emits the difference from what it had emitted, and
//! watches from the new list's revision. Relisting rather than resuming from the last revision
//! seen also covers an etcd restarted with an empty data directory, whose revisions start over.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions, WatchResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use super::{KvStore, LeaseId, WatchEvent, WatchStream};
use crate::{Error, Result};

/// Bound on one etcd request unless [`EtcdStore::with_call_timeout`] says otherwise. Shorter
/// than the discovery layer's own bound, so that our clearer error is the one reported.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(4);
/// HTTP/2 pings on open streams find a connection that died without a reset (host gone,
/// network cut), which a watch would otherwise wait on forever. etcd refuses pings closer than
/// 5 s apart, and pings on idle connections altogether, so both are left at that.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause between attempts to re-establish a broken watch.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(2);
/// Events a watch may queue before its task waits for the reader.
const WATCH_BUFFER: usize = 64;

/// How to log in to etcd and secure the connection. Secrets never appear in `Debug` output
/// or errors.
#[derive(Clone, Default)]
pub struct EtcdSecurity {
    /// User and password of etcd's authentication.
    pub user: Option<String>,
    pub password: Option<String>,
    /// PEM file of the CA that signed etcd's certificate; needed for `https://` endpoints.
    pub tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate and key, for an etcd started with `--client-cert-auth`.
    pub tls_cert: Option<std::path::PathBuf>,
    pub tls_key: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for EtcdSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSecurity")
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

impl EtcdSecurity {
    /// `options` with these settings; endpoints given as `https://` need a CA.
    fn apply(&self, endpoints: &[String], mut options: ConnectOptions) -> Result<ConnectOptions> {
        let read = |what: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| {
                Error::Config(format!("cannot read the etcd {what} {}: {e}", path.display()))
            })
        };
        match (&self.user, &self.password) {
            (Some(user), password) => {
                // etcd's tokens expire (5 min by default); a long-lived worker logs in again.
                options = options
                    .with_user(user.clone(), password.clone().unwrap_or_default())
                    .with_auto_token_refresh(true);
            }
            (None, Some(_)) => {
                return Err(Error::Config("an etcd password needs a user (--etcd-user)".into()));
            }
            (None, None) => {}
        }
        let https = endpoints.iter().any(|e| e.starts_with("https://"));
        if https && self.tls_ca.is_none() {
            return Err(Error::Config(
                "https:// etcd endpoints need the CA of etcd's certificate (--etcd-tls-ca)".into(),
            ));
        }
        if let Some(ca) = &self.tls_ca {
            if !https {
                return Err(Error::Config(
                    "with --etcd-tls-ca, give the etcd endpoints as https://".into(),
                ));
            }
            let mut tls = etcd_client::TlsOptions::new()
                .ca_certificate(etcd_client::Certificate::from_pem(read("CA", ca)?));
            match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => {
                    let identity = etcd_client::Identity::from_pem(
                        read("client certificate", cert)?,
                        read("client key", key)?,
                    );
                    tls = tls.identity(identity);
                }
                (None, None) => {}
                _ => {
                    return Err(Error::Config(
                        "an etcd client certificate needs both --etcd-tls-cert and --etcd-tls-key"
                            .into(),
                    ));
                }
            }
            options = options.with_tls(tls);
        }
        Ok(options)
    }
}

/// A [`KvStore`] on an etcd cluster. Cheap to clone; clones share one connection.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    inner: Arc<Inner>,
}

struct Inner {
    /// The endpoints as given, for error messages.
    endpoints: String,
    call_timeout: Duration,
    /// Parent of every watch task's token, so that [`EtcdStore::close`] can stop them all.
    cancel: CancellationToken,
    /// Owns the watch tasks.
    tracker: TaskTracker,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.inner.endpoints).finish()
    }
}

impl EtcdStore {
    /// Connects to the etcd cluster at `endpoints` (`http://host:port` or `host:port`) and checks
    /// that an etcd answers, all within `connect_timeout`; [`Error::Connect`] otherwise.
    pub async fn connect(endpoints: &[String], connect_timeout: Duration) -> Result<EtcdStore> {
        EtcdStore::connect_secure(endpoints, connect_timeout, &EtcdSecurity::default()).await
    }

    /// [`EtcdStore::connect`] with authentication and TLS.
    pub async fn connect_secure(
        endpoints: &[String],
        connect_timeout: Duration,
        security: &EtcdSecurity,
    ) -> Result<EtcdStore> {
        if endpoints.is_empty() {
            return Err(Error::Config("no etcd endpoint given".to_owned()));
        }
        let joined = endpoints.join(",");
        let unreachable =
            |reason: String| Error::Connect { address: format!("etcd at {joined}"), reason };
        let options = ConnectOptions::new()
            .with_connect_timeout(connect_timeout)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT)
            .with_keep_alive_while_idle(false)
            // A member cut off from its cluster then fails requests and ends watches, so that
            // callers retry (on another endpoint) instead of reading a stale view.
            .with_require_leader(true);
        let options = security.apply(endpoints, options)?;
        let attempt = async {
            // The client connects lazily and its requests wait for a connection, so nothing
            // listening would show only as a timeout; a TCP connect says "refused" at once.
            probe_tcp(endpoints, connect_timeout).await?;
            let mut client =
                Client::connect(endpoints, Some(options)).await.map_err(|e| e.to_string())?;
            // Something listens; one request proves it is an etcd that answers.
            client.status().await.map_err(|e| e.to_string())?;
            Ok(client)
        };
        let client = match tokio::time::timeout(connect_timeout, attempt).await {
            Ok(Ok(client)) => client,
            Ok(Err(reason)) => return Err(unreachable(reason)),
            Err(_) => return Err(unreachable(format!("no answer within {connect_timeout:?}"))),
        };
        Ok(EtcdStore {
            client,
            inner: Arc::new(Inner {
                endpoints: joined,
                call_timeout: DEFAULT_CALL_TIMEOUT,
                cancel: CancellationToken::new(),
                tracker: TaskTracker::new(),
            }),
        })
    }

    /// The same connection with another bound on each request. Watches opened before keep the
    /// bound they were opened with.
    pub fn with_call_timeout(self, call_timeout: Duration) -> EtcdStore {
        let inner = Inner {
            endpoints: self.inner.endpoints.clone(),
            call_timeout,
            cancel: self.inner.cancel.clone(),
            tracker: self.inner.tracker.clone(),
        };
        EtcdStore { client: self.client, inner: Arc::new(inner) }
    }

    /// Ends every watch opened through this store or its clones and waits for their tasks to
    /// stop. Watches opened afterwards end at once.
    pub async fn close(&self) {
        self.inner.cancel.cancel();
        self.inner.tracker.close();
        self.inner.tracker.wait().await;
    }
}

impl Inner {
    /// Runs one etcd request under the call timeout.
    async fn call<T, F>(&self, what: &'static str, request: F) -> Result<T>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.within(what, request).await?.map_err(|e| self.error(what, &e))
    }

    /// Applies only the call timeout, leaving etcd's own error for the caller to interpret.
    async fn within<T, F>(
        &self,
        what: &'static str,
        request: F,
    ) -> Result<Result<T, etcd_client::Error>>
    where
        F: Future<Output = Result<T, etcd_client::Error>>,
    {
        let after = self.call_timeout;
        tokio::time::timeout(after, request).await.map_err(|_| Error::Timeout { what, after })
    }

    /// An unreachable etcd (refused, or the connection closed under the request) is told apart
    /// from one that refused the request.
    fn error(&self, what: &str, error: &etcd_client::Error) -> Error {
        use tonic::Code::{Cancelled, Unavailable};
        // The innermost cause ("Connection refused") says more than tonic's wrapping.
        let reason = match error {
            etcd_client::Error::GRpcStatus(status)
                if matches!(status.code(), Unavailable | Cancelled) =>
            {
                std::error::Error::source(status)
                    .map_or_else(|| status.message().to_owned(), innermost)
            }
            etcd_client::Error::TransportError(e) => innermost(e),
            _ => return Error::Store(format!("{what}: {error}")),
        };
        Error::Connect {
            address: format!("etcd at {}", self.endpoints),
            reason: format!("{what}: {reason}"),
        }
    }
}

fn innermost(error: &dyn std::error::Error) -> String {
    error.source().map_or_else(|| error.to_string(), innermost)
}

/// Opens a TCP connection to each endpoint in turn until one accepts.
async fn probe_tcp(endpoints: &[String], timeout: Duration) -> std::result::Result<(), String> {
    let mut reasons = Vec::new();
    for endpoint in endpoints {
        let authority = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"))
            .unwrap_or(endpoint);
        let authority = authority.split('/').next().unwrap_or(authority);
        match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(authority)).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => reasons.push(format!("{authority}: {e}")),
            Err(_) => reasons.push(format!("{authority}: no connection within {timeout:?}")),
        }
    }
    Err(reasons.join("; "))
}

/// etcd lease ids are positive `i64`s; one that does not fit cannot be a live lease.
fn etcd_lease(lease: LeaseId) -> Result<i64> {
    i64::try_from(lease).map_err(|_| Error::LeaseExpired(lease))
}

/// etcd counts TTLs in whole seconds; rounding up never expires a lease early.
fn ttl_seconds(ttl: Duration) -> i64 {
    let seconds = ttl.as_secs().saturating_add(u64::from(ttl.subsec_nanos() > 0)).max(1);
    i64::try_from(seconds).unwrap_or(i64::MAX)
}

fn is_not_found(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::NotFound)
}

#[async_trait]
impl KvStore for EtcdStore {
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId> {
        let mut leases = self.client.lease_client();
        let granted =
            self.inner.call("etcd lease grant", leases.grant(ttl_seconds(ttl), None)).await?;
        LeaseId::try_from(granted.id())
            .map_err(|_| Error::Store(format!("etcd granted a negative lease id {}", granted.id())))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<()> {
        const WHAT: &str = "etcd lease keep-alive";
        let id = etcd_lease(lease)?;
        let mut leases = self.client.lease_client();
        // One request and its answer; the stream closes when the returned pair is dropped.
        match self.inner.within(WHAT, leases.keep_alive(id)).await? {
            Ok(_) => Ok(()),
            // The client turns an answer with TTL 0 (etcd's "no such lease") into this error,
            // and raises it for nothing else on a fresh stream.
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => Err(Error::LeaseExpired(lease)),
            Err(e) if is_not_found(&e) => Err(Error::LeaseExpired(lease)),
            Err(e) => Err(self.inner.error(WHAT, &e)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<()> {
        const WHAT: &str = "etcd lease revoke";
        let Ok(id) = etcd_lease(lease) else {
            return Ok(());
        };
        let mut leases = self.client.lease_client();
        match self.inner.within(WHAT, leases.revoke(id)).await? {
            Ok(_) => Ok(()),
            // Gone already is what the caller wants.
            Err(e) if is_not_found(&e) => Ok(()),
            Err(e) => Err(self.inner.error(WHAT, &e)),
        }
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<()> {
        const WHAT: &str = "etcd put";
        let options = match lease {
            Some(lease) => Some(PutOptions::new().with_lease(etcd_lease(lease)?)),
            None => None,
        };
        let mut kv = self.client.kv_client();
        match self.inner.within(WHAT, kv.put(key, value, options)).await? {
            Ok(_) => Ok(()),
            Err(e) => match lease {
                // etcd's answer to a put bound to a lease it does not know.
                Some(lease) if is_not_found(&e) => Err(Error::LeaseExpired(lease)),
                _ => Err(self.inner.error(WHAT, &e)),
            },
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let mut kv = self.client.kv_client();
        let mut found = self.inner.call("etcd get", kv.get(key, None)).await?;
        Ok(found.take_kvs().into_iter().next().map(|kv| kv.into_key_value().1))
    }

    async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(list(&self.client, prefix, &self.inner).await?.1.into_iter().collect())
    }

    async fn delete(&self, key: &str) -> Result<bool> {
        let mut kv = self.client.kv_client();
        let deleted = self.inner.call("etcd delete", kv.delete(key, None)).await?;
        Ok(deleted.deleted() > 0)
    }

    async fn watch_prefix(&self, prefix: &str) -> Result<WatchStream> {
        let mut follower = Follower {
            client: self.client.clone(),
            prefix: prefix.to_owned(),
            inner: Arc::clone(&self.inner),
            emitted: BTreeMap::new(),
        };
        // The first sync happens here, so that an unreachable etcd fails this call instead of
        // yielding a watch that stays silent.
        let (initial, stream) = follower.sync().await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let stop = self.inner.cancel.child_token();
        self.inner.tracker.spawn(follower.run(initial, stream, tx, stop.clone()));
        Ok(Box::pin(EtcdWatch { events: rx, _stop: stop.drop_guard() }))
    }
}

type Listing = BTreeMap<String, Vec<u8>>;

/// The keys under `prefix` and the revision they were read at. Keys that are not UTF-8 were not
/// written by this store and are skipped.
async fn list(client: &Client, prefix: &str, inner: &Inner) -> Result<(i64, Listing)> {
    let mut kv = client.kv_client();
    let request = kv.get(prefix, Some(GetOptions::new().with_prefix()));
    let mut found = inner.call("etcd list", request).await?;
    let revision = found.header().map_or(0, |header| header.revision());
    let mut listing = Listing::new();
    for kv in found.take_kvs() {
        let (key, value) = kv.into_key_value();
        match String::from_utf8(key) {
            Ok(key) => {
                listing.insert(key, value);
            }
            Err(e) => warn!(%prefix, key = ?e.as_bytes(), "skipping a key that is not UTF-8"),
        }
    }
    Ok((revision, listing))
}

/// The background half of one watch: follows etcd and re-establishes the watch when it breaks.
struct Follower {
    client: Client,
    prefix: String,
    /// The store's endpoints and call timeout as they were when the watch was opened.
    inner: Arc<Inner>,
    /// The state the reader has been told of, so that a relist emits only the difference.
    emitted: Listing,
}

impl Follower {
    /// Lists the prefix and opens an etcd watch from the revision after the list; the events
    /// that take the reader from what it was told to what the list holds.
    async fn sync(&mut self) -> Result<(Vec<WatchEvent>, etcd_client::WatchStream)> {
        let (revision, listing) = list(&self.client, &self.prefix, &self.inner).await?;
        let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
        let mut watches = self.client.watch_client();
        let request = watches.watch(self.prefix.as_str(), Some(options));
        let stream = self.inner.call("etcd watch", request).await?;
        Ok((self.take_difference(listing), stream))
    }

    fn take_difference(&mut self, listing: Listing) -> Vec<WatchEvent> {
        let mut events: Vec<WatchEvent> = listing
            .iter()
            .filter(|(key, value)| self.emitted.get(*key) != Some(*value))
            .map(|(key, value)| WatchEvent::Put { key: key.clone(), value: value.clone() })
            .collect();
        events.extend(
            self.emitted
                .keys()
                .filter(|key| !listing.contains_key(*key))
                .map(|key| WatchEvent::Delete { key: key.clone() }),
        );
        self.emitted = listing;
        events
    }

    async fn run(
        mut self,
        initial: Vec<WatchEvent>,
        mut stream: etcd_client::WatchStream,
        tx: mpsc::Sender<WatchEvent>,
        stop: CancellationToken,
    ) {
        if !send_all(&tx, &stop, initial).await {
            return;
        }
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return,
                message = stream.message() => message,
            };
            let reason = match message {
                Ok(Some(response)) if response.canceled() => {
                    // A compacted start revision is one reason; every reason is met by a relist.
                    format!(
                        "etcd cancelled the watch (compact revision {}): {}",
                        response.compact_revision(),
                        response.cancel_reason()
                    )
                }
                Ok(Some(response)) => {
                    let events = self.take_events(&response);
                    if !send_all(&tx, &stop, events).await {
                        return;
                    }
                    continue;
                }
                Ok(None) => "etcd ended the watch".to_owned(),
                Err(e) => e.to_string(),
            };
            warn!(prefix = %self.prefix, %reason, "etcd watch broken; re-establishing");
            let Some((events, resumed)) = self.resync(&stop).await else {
                return;
            };
            stream = resumed;
            if !send_all(&tx, &stop, events).await {
                return;
            }
        }
    }

    fn take_events(&mut self, response: &WatchResponse) -> Vec<WatchEvent> {
        let mut events = Vec::with_capacity(response.events().len());
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            let Ok(key) = std::str::from_utf8(kv.key()) else {
                continue;
            };
            let key = key.to_owned();
            events.push(match event.event_type() {
                EventType::Put => {
                    self.emitted.insert(key.clone(), kv.value().to_vec());
                    WatchEvent::Put { key, value: kv.value().to_vec() }
                }
                EventType::Delete => {
                    self.emitted.remove(&key);
                    WatchEvent::Delete { key }
                }
            });
        }
        events
    }

    /// Retries [`Follower::sync`] with jittered exponential backoff until it succeeds or `stop`
    /// fires. The jitter keeps many watchers from hitting a restarted etcd at the same instant.
    async fn resync(
        &mut self,
        stop: &CancellationToken,
    ) -> Option<(Vec<WatchEvent>, etcd_client::WatchStream)> {
        let mut pause = RECONNECT_MIN;
        loop {
            let jittered = pause.mul_f64(rand::random_range(0.5..1.0));
            tokio::select! {
                () = stop.cancelled() => return None,
                () = tokio::time::sleep(jittered) => {}
            }
            let attempt = tokio::select! {
                () = stop.cancelled() => return None,
                attempt = self.sync() => attempt,
            };
            match attempt {
                Ok((events, stream)) => {
                    info!(prefix = %self.prefix, changes = events.len(), "etcd watch re-established");
                    return Some((events, stream));
                }
                Err(e) => {
                    warn!(prefix = %self.prefix, error = %e, "etcd watch not re-established yet")
                }
            }
            pause = (pause * 2).min(RECONNECT_MAX);
        }
    }
}

/// Sends `events` in order; false when the watch was stopped or its reader is gone.
async fn send_all(
    tx: &mpsc::Sender<WatchEvent>,
    stop: &CancellationToken,
    events: Vec<WatchEvent>,
) -> bool {
    for event in events {
        tokio::select! {
            () = stop.cancelled() => return false,
            sent = tx.send(event) => if sent.is_err() { return false },
        }
    }
    true
}

/// The reader's half of a watch; dropping it stops the background task.
struct EtcdWatch {
    events: mpsc::Receiver<WatchEvent>,
    _stop: DropGuard,
}

impl Stream for EtcdWatch {
    type Item = WatchEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        self.get_mut().events.poll_recv(cx)
    }
}
