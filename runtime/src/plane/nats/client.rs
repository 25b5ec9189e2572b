//! The frontend's side of the NATS request plane: [`NatsClient`], a [`RequestClient`] that
//! sends each request to an instance's subject and reads its chunks from a reply inbox.
//!
//! One wildcard subscription (`<inbox>.*`) takes the replies of every request; a dispatcher
//! task hands each message to its request's channel by the last token of the subject, so a
//! request costs no subscribe/unsubscribe round of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_nats::connection::State;
use async_nats::{Client, Message, PublishErrorKind, StatusCode, Subject, Subscriber};
use async_trait::async_trait;
use bytes::Bytes;
use futures::{StreamExt, stream};
use prost::Message as _;
use switchyard_proto::{GenerateChunk, GenerateRequest};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::{CONTROL_ACCEPTED, CONTROL_HEARTBEAT, PUBLISH_TIMEOUT, cancel_subject, control};
use crate::plane::is_final;
use crate::plane::{ChunkStream, RequestClient};
use crate::{Error, Result};

/// Messages of one response that may wait for its reader; past that the reader is too slow,
/// and its response ends with an error rather than holding the dispatcher up.
const RESPONSE_BUFFER: usize = 1024;

/// Client settings.
#[derive(Debug, Clone)]
pub struct NatsClientConfig {
    /// Longest wait for a worker to accept a request. Past it, or when no worker listens on the
    /// subject, `generate` fails with [`Error::Connect`] so the caller tries another instance.
    pub connect_timeout: Duration,
    /// Longest wait for the next chunk while the worker says it is alive. Generous: a worker
    /// may queue a request or prefill a long prompt before its first token.
    pub chunk_timeout: Duration,
    /// Longest silence (no chunk, no heartbeat) before the worker is taken for dead. Several
    /// heartbeat intervals of the server (1 s by default).
    pub idle_timeout: Duration,
}

impl Default for NatsClientConfig {
    fn default() -> Self {
        NatsClientConfig {
            connect_timeout: Duration::from_secs(3),
            chunk_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(3),
        }
    }
}

/// A [`RequestClient`] over NATS; `address` is the instance's subject. Dropping a response
/// stream before its final chunk cancels the request on the worker.
pub struct NatsClient {
    shared: Arc<Shared>,
    config: NatsClientConfig,
    tasks: TaskTracker,
    /// Stops the dispatcher when the client is dropped.
    _stop: DropGuard,
}

impl std::fmt::Debug for NatsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsClient")
            .field("inbox", &self.shared.inbox)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What the client, its tasks and its response streams share.
struct Shared {
    client: Client,
    /// `<inbox>`: request `n` gets its replies on `<inbox>.<n>`.
    inbox: String,
    next_id: AtomicU64,
    /// The channel of each request waiting for replies, by request number. Locked briefly by
    /// `generate`, the dispatcher and dropped streams, never across an await.
    pending: Mutex<HashMap<u64, mpsc::Sender<Message>>>,
    /// Cancellations to publish: `(cancel subject, reply subject)`. Sent from `Drop`, which
    /// cannot await a publish.
    cancels: mpsc::UnboundedSender<(String, String)>,
}

impl Shared {
    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<Message>>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl NatsClient {
    /// Connects to NATS at `url` (see [`super::connect`]) and starts a client on it.
    pub async fn connect(url: &str, config: NatsClientConfig) -> Result<NatsClient> {
        let client = super::connect(url).await?;
        NatsClient::new(client, config).await
    }

    /// Starts a client on an open NATS connection, which it may share with other users.
    pub async fn new(client: Client, config: NatsClientConfig) -> Result<NatsClient> {
        let inbox = client.new_inbox();
        let replies =
            match tokio::time::timeout(PUBLISH_TIMEOUT, client.subscribe(format!("{inbox}.*")))
                .await
            {
                Ok(Ok(subscriber)) => subscriber,
                Ok(Err(e)) => {
                    return Err(Error::Transport(format!("cannot subscribe to {inbox}: {e}")));
                }
                Err(_) => {
                    return Err(Error::Timeout { what: "NATS subscribe", after: PUBLISH_TIMEOUT });
                }
            };
        let (cancels, cancels_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            client: client.clone(),
            inbox,
            next_id: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            cancels,
        });
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(dispatch(replies, Arc::clone(&shared), stop.clone()));
        tasks.spawn(publish_cancels(client, cancels_rx));
        tasks.close();
        Ok(NatsClient { shared, config, tasks, _stop: stop.drop_guard() })
    }

    /// The NATS connection, for other users of it (e.g. the event plane).
    pub fn nats(&self) -> &Client {
        &self.shared.client
    }

    /// The settings this client runs with.
    pub fn config(&self) -> &NatsClientConfig {
        &self.config
    }

    /// Stops the client: streams still open end with an error. Returns once its tasks are done
    /// (the last cancellations published), or after a bounded wait while streams are held.
    pub async fn close(self) {
        let tasks = self.tasks.clone();
        drop(self);
        if tokio::time::timeout(PUBLISH_TIMEOUT * 2, tasks.wait()).await.is_err() {
            debug!("NATS client tasks still running: response streams are still held");
        }
    }

    /// Requests sent and not yet ended; for tests and metrics.
    pub fn pending_requests(&self) -> usize {
        self.shared.pending().len()
    }
}

#[async_trait]
impl RequestClient for NatsClient {
    async fn generate(&self, address: &str, request: GenerateRequest) -> Result<ChunkStream> {
        let connect_error = |reason: String| Error::Connect { address: address.to_owned(), reason };
        // While NATS is away, fail at once rather than queue a request the worker may run
        // after the caller has moved on.
        if self.shared.client.connection_state() != State::Connected {
            return Err(connect_error("not connected to NATS (reconnecting)".to_owned()));
        }
        let id = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        let reply = format!("{}.{id}", self.shared.inbox);
        let (tx, mut rx) = mpsc::channel(RESPONSE_BUFFER);
        self.shared.pending().insert(id, tx);
        let mut guard = RequestGuard {
            shared: Arc::clone(&self.shared),
            id,
            cancel_subject: cancel_subject(address),
            reply: reply.clone(),
            ended: false,
        };

        let limit = self.config.connect_timeout;
        let deadline = Instant::now() + limit;
        let payload = Bytes::from(request.encode_to_vec());
        let publish = self.shared.client.publish_with_reply(
            address.to_owned(),
            Subject::from(reply),
            payload,
        );
        match tokio::time::timeout_at(deadline, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if e.kind() == PublishErrorKind::MaxPayloadExceeded => {
                guard.ended = true;
                return Err(Error::Transport(format!("request too large for NATS: {e}")));
            }
            Ok(Err(e)) => {
                guard.ended = true;
                return Err(connect_error(format!("cannot publish the request: {e}")));
            }
            Err(_) => return Err(connect_error(format!("request not sent within {limit:?}"))),
        }
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(message)) if message.status == Some(StatusCode::NO_RESPONDERS) => {
                guard.ended = true;
                Err(connect_error("no worker listens on this subject".to_owned()))
            }
            Ok(Some(message)) if control(&message) == Some(CONTROL_ACCEPTED) => {
                Ok(checked_stream(rx, guard, self.config.clone()))
            }
            Ok(Some(message)) => Err(Error::Transport(format!(
                "the worker answered outside the protocol (status {:?}) before accepting",
                message.status
            ))),
            Ok(None) => Err(Error::Transport("the NATS client is closed".to_owned())),
            Err(_) => {
                Err(connect_error(format!("no worker accepted the request within {limit:?}")))
            }
        }
    }
}

/// Forgets a request when its stream ends or is dropped, and cancels it on the worker unless
/// the worker ended it (final chunk) or never had it.
struct RequestGuard {
    shared: Arc<Shared>,
    id: u64,
    cancel_subject: String,
    reply: String,
    ended: bool,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.shared.pending().remove(&self.id);
        if !self.ended {
            let cancel =
                (std::mem::take(&mut self.cancel_subject), std::mem::take(&mut self.reply));
            // Closed only when the client's tasks are gone, and the worker then learns of it
            // by the bounce of its next message.
            let _ = self.shared.cancels.send(cancel);
        }
    }
}

/// The chunks of one response, checked: `seq` counts up from 0 by one, and the stream ends
/// with a final chunk. A gap, a silence past the idle timeout, a wait for a chunk past the
/// chunk timeout, or a broken channel becomes the last item, an error.
fn checked_stream(
    rx: mpsc::Receiver<Message>,
    guard: RequestGuard,
    config: NatsClientConfig,
) -> ChunkStream {
    let now = Instant::now();
    let state = Some(Reader { rx, guard, expected: 0, last_message: now, last_chunk: now });
    Box::pin(stream::unfold(state, move |state| {
        let config = config.clone();
        async move {
            let mut reader = state?;
            match reader.next_chunk(&config).await {
                Ok(chunk) if is_final(&chunk) => {
                    reader.guard.ended = true;
                    Some((Ok(chunk), None))
                }
                Ok(chunk) => Some((Ok(chunk), Some(reader))),
                Err(e) => Some((Err(e), None)),
            }
        }
    }))
}

/// The reading state of one response.
struct Reader {
    rx: mpsc::Receiver<Message>,
    guard: RequestGuard,
    expected: u64,
    last_message: Instant,
    last_chunk: Instant,
}

impl Reader {
    async fn next_chunk(&mut self, config: &NatsClientConfig) -> Result<GenerateChunk> {
        loop {
            let idle_end = self.last_message + config.idle_timeout;
            let chunk_end = self.last_chunk + config.chunk_timeout;
            let message =
                match tokio::time::timeout_at(idle_end.min(chunk_end), self.rx.recv()).await {
                    Ok(Some(message)) => message,
                    Ok(None) => {
                        return Err(Error::StreamBroken(
                            "the reply channel closed: the reader fell behind or the client closed"
                                .to_owned(),
                        ));
                    }
                    Err(_) if chunk_end <= idle_end => {
                        return Err(Error::Timeout {
                            what: "next chunk from the worker",
                            after: config.chunk_timeout,
                        });
                    }
                    Err(_) => {
                        return Err(Error::StreamBroken(format!(
                            "no word from the worker for {:?} after {} chunks; it is gone or \
                         cut off",
                            config.idle_timeout, self.expected
                        )));
                    }
                };
            self.last_message = Instant::now();
            if let Some(status) = message.status {
                return Err(Error::StreamBroken(format!(
                    "NATS status {status} on the reply subject"
                )));
            }
            match control(&message) {
                Some(CONTROL_HEARTBEAT | CONTROL_ACCEPTED) => continue,
                Some(other) => {
                    debug!(control = other, "unknown control message; ignored");
                    continue;
                }
                None => {}
            }
            let chunk = GenerateChunk::decode(message.payload)
                .map_err(|e| Error::StreamBroken(format!("undecodable chunk: {e}")))?;
            if chunk.seq != self.expected {
                return Err(Error::StreamBroken(format!(
                    "chunk {} arrived where chunk {} was due",
                    chunk.seq, self.expected
                )));
            }
            self.expected += 1;
            self.last_chunk = self.last_message;
            return Ok(chunk);
        }
    }
}

/// Hands each reply to its request's channel until `stop`; then drops every channel, so the
/// streams still open end with an error instead of waiting out their timeouts.
async fn dispatch(mut replies: Subscriber, shared: Arc<Shared>, stop: CancellationToken) {
    let prefix = format!("{}.", shared.inbox);
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = replies.next() => match message {
                Some(message) => message,
                None => {
                    warn!(inbox = %shared.inbox, "the reply subscription ended");
                    break;
                }
            },
        };
        let id =
            message.subject.as_str().strip_prefix(&prefix).and_then(|id| id.parse::<u64>().ok());
        let Some(id) = id else { continue };
        let mut pending = shared.pending();
        let Some(tx) = pending.get(&id) else {
            // A late reply to a request that ended.
            continue;
        };
        if let Err(e) = tx.try_send(message) {
            if matches!(e, mpsc::error::TrySendError::Full(_)) {
                warn!(request = id, "response reader fell behind; ending its response");
            }
            pending.remove(&id);
        }
    }
    shared.pending().clear();
}

/// Publishes the cancellations of dropped streams, each within [`PUBLISH_TIMEOUT`], until every
/// sender is gone.
async fn publish_cancels(client: Client, mut cancels: mpsc::UnboundedReceiver<(String, String)>) {
    while let Some((subject, reply)) = cancels.recv().await {
        let publish = client.publish(subject, Bytes::from(reply));
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => debug!(error = %e, "cannot publish a cancel"),
            Err(_) => debug!("publishing a cancel timed out"),
        }
    }
}
