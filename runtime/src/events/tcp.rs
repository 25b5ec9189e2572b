//! The event plane in TCP mode, a router's side: [`TcpEventSubscriber`] opens the `Events` call
//! of every TCP instance it learns of from discovery, merges their streams, and reopens a
//! broken one while its instance is still listed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::plane::tls::PlaneTls;
use async_trait::async_trait;
use futures::StreamExt;
use switchyard_proto::worker_client::WorkerClient;
use switchyard_proto::{EventsRequest, InstanceRecord, WorkerEvent};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::Code;
use tracing::{debug, warn};

use super::{EventStream, EventSubscriber};
use crate::discovery::Instances;
use crate::{Error, Result};

/// The `transport` of the instance records this subscriber follows.
const TCP_TRANSPORT: &str = "tcp";
/// HTTP/2 pings find a worker that vanished without closing its connection, so its stream
/// breaks and is reopened (or dropped with the instance) instead of waiting for TCP.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Subscriber settings.
#[derive(Debug, Clone)]
pub struct TcpEventConfig {
    /// Longest wait to open a connection to a worker and start its `Events` call.
    pub connect_timeout: Duration,
    /// First pause before reopening a broken stream; it doubles per failed attempt.
    pub retry_min: Duration,
    /// Longest pause between attempts.
    pub retry_max: Duration,
    /// Events that may wait for the reader; past that, workers' streams wait (HTTP/2 flow
    /// control), and a worker that falls too far behind skips events.
    pub buffer: usize,
    /// Reach workers over TLS.
    pub tls: Option<PlaneTls>,
}

impl Default for TcpEventConfig {
    fn default() -> Self {
        TcpEventConfig {
            connect_timeout: Duration::from_secs(2),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            buffer: 4096,
            tls: None,
        }
    }
}

/// Reads the events of the TCP instances of a namespace. Give it the instances from
/// [`crate::Discovery::watch_instances`] (`InstanceWatch::subscribe`).
pub struct TcpEventSubscriber {
    instances: watch::Receiver<Arc<Instances>>,
    config: TcpEventConfig,
    /// One follower task per subscription; each owns the streams of its instances.
    tasks: TaskTracker,
    resyncs: Resyncs,
}

/// Per instance id, what makes its streams reopen with a snapshot.
type Resyncs = Arc<Mutex<HashMap<String, Arc<Notify>>>>;

fn resync_signal(resyncs: &Resyncs, instance_id: &str) -> Arc<Notify> {
    let mut map = resyncs.lock().unwrap_or_else(PoisonError::into_inner);
    map.entry(instance_id.to_owned()).or_default().clone()
}

impl std::fmt::Debug for TcpEventSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpEventSubscriber").field("config", &self.config).finish_non_exhaustive()
    }
}

impl TcpEventSubscriber {
    pub fn new(
        instances: watch::Receiver<Arc<Instances>>,
        config: TcpEventConfig,
    ) -> TcpEventSubscriber {
        TcpEventSubscriber {
            instances,
            config,
            tasks: TaskTracker::new(),
            resyncs: Resyncs::default(),
        }
    }
}

#[async_trait]
impl EventSubscriber for TcpEventSubscriber {
    async fn subscribe(&self) -> Result<EventStream> {
        let (tx, rx) = mpsc::channel(self.config.buffer.max(1));
        let stop = CancellationToken::new();
        let follower = Follower {
            instances: self.instances.clone(),
            config: self.config.clone(),
            events: tx,
            followed: HashMap::new(),
            streams: JoinSet::new(),
            resyncs: self.resyncs.clone(),
        };
        self.tasks.spawn(follower.run(stop.clone()));
        // Dropping the stream stops the follower, which aborts every stream it opened.
        let guard = stop.drop_guard();
        let events = ReceiverStream::new(rx).map(move |event| {
            let _held = &guard;
            event
        });
        Ok(Box::pin(events))
    }

    /// Reopens the instance's stream: every `Events` call asks for a snapshot first. An
    /// instance with no stream yet gets its snapshot when the stream opens.
    async fn request_snapshot(&self, instance_id: &str) -> Result<()> {
        let resyncs = self.resyncs.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(signal) = resyncs.get(instance_id) {
            signal.notify_one();
        }
        Ok(())
    }
}

/// Keeps one stream task per listed TCP instance.
struct Follower {
    instances: watch::Receiver<Arc<Instances>>,
    config: TcpEventConfig,
    events: mpsc::Sender<WorkerEvent>,
    /// Instance id → (address, stop token) of its stream task.
    followed: HashMap<String, (String, CancellationToken)>,
    streams: JoinSet<()>,
    resyncs: Resyncs,
}

impl Follower {
    async fn run(mut self, stop: CancellationToken) {
        loop {
            let snapshot = self.instances.borrow_and_update().clone();
            self.reconcile(&snapshot, &stop);
            tokio::select! {
                () = stop.cancelled() => break,
                () = self.events.closed() => break,
                changed = self.instances.changed() => {
                    if changed.is_err() {
                        debug!("discovery stopped; ending the event stream");
                        break;
                    }
                }
                Some(_) = self.streams.join_next() => {}
            }
        }
        for (_, (_, token)) in self.followed.drain() {
            token.cancel();
        }
        self.streams.shutdown().await;
    }

    /// Starts a stream for each new TCP instance (or one whose address changed) and stops the
    /// streams of instances no longer listed.
    fn reconcile(&mut self, instances: &Instances, stop: &CancellationToken) {
        let listed: HashMap<&str, &Arc<InstanceRecord>> = instances
            .models()
            .flat_map(|(_, records)| records.iter())
            .filter(|record| record.transport == TCP_TRANSPORT)
            .map(|record| (record.instance_id.as_str(), record))
            .collect();
        let resyncs = &self.resyncs;
        self.followed.retain(|id, (address, token)| {
            let keep = listed.get(id.as_str()).is_some_and(|record| record.address == *address);
            if !keep {
                token.cancel();
                resyncs.lock().unwrap_or_else(PoisonError::into_inner).remove(id);
            }
            keep
        });
        for (id, record) in listed {
            if self.followed.contains_key(id) {
                continue;
            }
            let token = stop.child_token();
            self.followed.insert(id.to_owned(), (record.address.clone(), token.clone()));
            let stream = InstanceStream {
                instance_id: id.to_owned(),
                address: record.address.clone(),
                config: self.config.clone(),
                events: self.events.clone(),
                resync: resync_signal(&self.resyncs, id),
            };
            self.streams.spawn(stream.run(token));
        }
    }
}

/// The `Events` stream of one instance, reopened with backoff until stopped.
struct InstanceStream {
    instance_id: String,
    address: String,
    config: TcpEventConfig,
    events: mpsc::Sender<WorkerEvent>,
    /// Fires when a router asks for this instance's snapshot: the stream is reopened.
    resync: Arc<Notify>,
}

/// How one attempt at an instance's stream ended.
enum Ended {
    /// Stopped, or the reader is gone: no more attempts.
    Stopped,
    /// The stream was open and then ended: reopen soon.
    WasOpen,
    /// A snapshot was asked for: reopen at once.
    Resync,
    /// The stream could not be opened.
    Failed(Error),
}

impl InstanceStream {
    async fn run(self, stop: CancellationToken) {
        let mut delay = self.config.retry_min;
        let mut failures = 0_u32;
        loop {
            match self.attempt(&stop).await {
                Ended::Stopped => return,
                Ended::Resync => {
                    failures = 0;
                    delay = self.config.retry_min;
                    continue;
                }
                Ended::WasOpen => {
                    delay = self.config.retry_min;
                    failures = 0;
                }
                Ended::Failed(e) => {
                    failures += 1;
                    // The first failure of a run is worth a line; the retries that follow
                    // while the worker is away are not.
                    if failures == 1 {
                        warn!(instance = %self.instance_id, address = %self.address, error = %e,
                            "cannot open the worker's event stream; retrying");
                    }
                    delay = if failures == 1 {
                        self.config.retry_min
                    } else {
                        (delay * 2).min(self.config.retry_max)
                    };
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn attempt(&self, stop: &CancellationToken) -> Ended {
        let mut stream = tokio::select! {
            () = stop.cancelled() => return Ended::Stopped,
            opened = self.open() => match opened {
                Ok(stream) => stream,
                Err(e) => return Ended::Failed(e),
            },
        };
        debug!(instance = %self.instance_id, "worker event stream open");
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return Ended::Stopped,
                () = self.resync.notified() => return Ended::Resync,
                message = stream.message() => message,
            };
            match message {
                Ok(Some(mut event)) => {
                    // The record in discovery names the worker, whatever the worker says.
                    event.instance_id.clone_from(&self.instance_id);
                    let sent = tokio::select! {
                        () = stop.cancelled() => return Ended::Stopped,
                        sent = self.events.send(event) => sent,
                    };
                    if sent.is_err() {
                        return Ended::Stopped;
                    }
                }
                Ok(None) => return Ended::WasOpen,
                Err(status) => {
                    debug!(instance = %self.instance_id, %status, "worker event stream broke");
                    return Ended::WasOpen;
                }
            }
        }
    }

    /// Connects and starts the `Events` call, within the connect timeout (twice: connection,
    /// then the call's response headers).
    async fn open(&self) -> Result<tonic::codec::Streaming<WorkerEvent>> {
        let connect_error =
            |reason: String| Error::Connect { address: self.address.clone(), reason };
        let limit = self.config.connect_timeout;
        let endpoint = crate::plane::tls::endpoint(&self.address, self.config.tls.as_ref())?
            .connect_timeout(limit)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        let channel = match tokio::time::timeout(limit * 2, endpoint.connect()).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(e)) => return Err(connect_error(e.to_string())),
            Err(_) => return Err(connect_error(format!("no connection within {limit:?}"))),
        };
        let mut client = WorkerClient::new(channel);
        match tokio::time::timeout(limit, client.events(EventsRequest { snapshot: true })).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) if status.code() == Code::Unimplemented => Err(Error::Transport(
                format!("the worker publishes no events: {}", status.message()),
            )),
            Ok(Err(status)) => {
                Err(connect_error(format!("{:?}: {}", status.code(), status.message())))
            }
            Err(_) => Err(Error::Timeout { what: "worker events call", after: limit }),
        }
    }
}
