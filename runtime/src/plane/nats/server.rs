//! The worker's side of the NATS request plane: [`NatsListener`] holds the subscriptions, and
//! [`serve_listener`] runs a [`GenerateHandler`] for each request until shutdown.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, HeaderMap, Message, PublishErrorKind, StatusCode, Subject, Subscriber};
use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use prost::Message as _;
use switchyard_proto::{ErrorKind, GenerateChunk, GenerateRequest};
use tokio::sync::mpsc;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::early_cancels::EarlyCancels;
use super::{
    CONTROL_ACCEPTED, CONTROL_HEARTBEAT, PUBLISH_TIMEOUT, cancel_subject, check_subject,
    control_headers, error_chunk,
};
use crate::plane::is_final;
use crate::plane::{ChunkStream, GenerateHandler};
use crate::{Error, Result};

/// How long in-flight requests may run on after shutdown is asked for.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How often a request that sends no chunks says it is still alive.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// How long requests get to send their `SHUTTING_DOWN` chunk once the grace is over.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Server settings.
#[derive(Debug, Clone)]
pub struct NatsServerConfig {
    /// After shutdown is asked for, how long in-flight requests may run on before they are ended
    /// with a `SHUTTING_DOWN` error chunk (so the frontend can retry elsewhere).
    pub shutdown_grace: Duration,
    /// Silence after which a request sends a heartbeat; clients treat a much longer silence as
    /// a dead worker (see [`super::NatsClientConfig::idle_timeout`]).
    pub heartbeat_interval: Duration,
}

impl Default for NatsServerConfig {
    fn default() -> Self {
        NatsServerConfig {
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
        }
    }
}

/// A worker's subscriptions, in place at the NATS server once [`NatsListener::bind`] returns:
/// a worker binds, then registers its subject in discovery, so no router sends to it early.
pub struct NatsListener {
    client: Client,
    subject: String,
    requests: Subscriber,
    cancels: Subscriber,
    bounces: Subscriber,
    /// `<inbox>.`: a bounced message arrives on this prefix followed by the client's reply
    /// subject, which identifies the request.
    bounce_prefix: String,
}

impl std::fmt::Debug for NatsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsListener").field("subject", &self.subject).finish_non_exhaustive()
    }
}

impl NatsListener {
    /// Subscribes to `subject` (requests), its cancel subject and an inbox for bounces, and
    /// waits until the NATS server has them.
    pub async fn bind(client: Client, subject: impl Into<String>) -> Result<NatsListener> {
        let subject = subject.into();
        check_subject(&subject)?;
        let inbox = client.new_inbox();
        let requests = subscribe(&client, subject.clone()).await?;
        let cancels = subscribe(&client, cancel_subject(&subject)).await?;
        let bounces = subscribe(&client, format!("{inbox}.>")).await?;
        // A message to ourselves comes back only after the server has processed everything this
        // connection sent before it, the subscriptions included; a flush alone does not wait
        // for the server, so a request from another connection could still find no responder.
        let mut bounces = bounces;
        let probe = format!("{inbox}.bound");
        let echoed = async {
            client
                .publish(probe.clone(), Bytes::new())
                .await
                .map_err(|e| Error::Transport(format!("publish to NATS failed: {e}")))?;
            while let Some(message) = bounces.next().await {
                if message.subject.as_str() == probe {
                    return Ok(());
                }
            }
            Err(Error::Transport("NATS subscription ended while binding".to_owned()))
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, echoed).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Timeout {
                    what: "NATS subscriptions to take effect",
                    after: PUBLISH_TIMEOUT,
                });
            }
        }
        Ok(NatsListener {
            client,
            subject,
            requests,
            cancels,
            bounces,
            bounce_prefix: format!("{inbox}."),
        })
    }

    /// The subject requests are taken on: the instance's request-plane address.
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

async fn subscribe(client: &Client, subject: String) -> Result<Subscriber> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, client.subscribe(subject.clone())).await {
        Ok(Ok(subscriber)) => Ok(subscriber),
        Ok(Err(e)) => Err(Error::Transport(format!("cannot subscribe to {subject}: {e}"))),
        Err(_) => Err(Error::Timeout { what: "NATS subscribe", after: PUBLISH_TIMEOUT }),
    }
}

/// Binds `subject` and serves `handler` on it until `shutdown`, with the default settings.
pub async fn serve(
    client: Client,
    subject: String,
    handler: Arc<dyn GenerateHandler>,
    shutdown: CancellationToken,
) -> Result<()> {
    let listener = NatsListener::bind(client, subject).await?;
    serve_listener(listener, handler, shutdown, NatsServerConfig::default()).await
}

/// Serves `handler` on `listener` until `shutdown` fires. Then it unsubscribes (new requests
/// get "no responders", so their clients turn to another worker at once), lets in-flight
/// requests finish for up to `config.shutdown_grace`, ends the rest with a `SHUTTING_DOWN` error
/// chunk, and returns once they are gone (or [`DRAIN_LIMIT`] later at most). Dropping the
/// returned future cancels every request it started.
pub async fn serve_listener(
    listener: NatsListener,
    handler: Arc<dyn GenerateHandler>,
    shutdown: CancellationToken,
    config: NatsServerConfig,
) -> Result<()> {
    let NatsListener { client, subject, mut requests, mut cancels, mut bounces, bounce_prefix } =
        listener;
    let root = CancellationToken::new();
    let _cancel_on_drop = root.clone().drop_guard();
    let drain = CancellationToken::new();
    let tracker = TaskTracker::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let context = Arc::new(RequestContext {
        client: client.clone(),
        handler,
        heartbeat_interval: config.heartbeat_interval,
        drain: drain.clone(),
        done: done_tx,
    });
    let mut live = LiveRequests {
        context,
        tokens: HashMap::new(),
        early_cancels: EarlyCancels::default(),
        bounce_prefix,
        root: root.clone(),
        tracker: tracker.clone(),
    };
    let ended =
        |what: &str| Error::Transport(format!("NATS {what} subscription of {subject} ended"));

    let mut accepting = true;
    let mut grace_end = None;
    let served = loop {
        let grace_over = async {
            match grace_end {
                Some(end) => tokio::time::sleep_until(end).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown.cancelled(), if accepting => {
                accepting = false;
                stop_accepting(&mut requests, &mut live).await;
                tracker.close();
                grace_end = Some(Instant::now() + config.shutdown_grace);
                info!(%subject, in_flight = tracker.len(), "stopped taking requests; draining");
            }
            message = requests.next(), if accepting => match message {
                Some(message) => live.accept(message).await,
                None => break Err(ended("request")),
            },
            message = cancels.next() => match message {
                Some(message) => live.cancel_requested(&message),
                None => break Err(ended("cancel")),
            },
            message = bounces.next() => match message {
                Some(message) => live.bounced(&message),
                None => break Err(ended("bounce")),
            },
            Some(key) = done_rx.recv() => live.finished(&key),
            () = tracker.wait(), if !accepting => break Ok(()),
            () = grace_over => break Ok(()),
        }
    };
    if served.is_err() {
        // The NATS client was closed: nothing more can reach the clients.
        root.cancel();
    }
    tracker.close();
    if !tracker.is_empty() {
        drain.cancel();
        if tokio::time::timeout(DRAIN_LIMIT, tracker.wait()).await.is_err() {
            warn!(%subject, left = tracker.len(), "requests still running after the drain; cancelling");
            root.cancel();
            let _ = tokio::time::timeout(DRAIN_LIMIT, tracker.wait()).await;
        }
    }
    // Final chunks are queued in the client; send them before the caller may close it.
    if let Err(e) = tokio::time::timeout(PUBLISH_TIMEOUT, client.flush()).await {
        debug!(error = %e, "no flush after shutdown");
    }
    served
}

/// Unsubscribes from requests, then serves the ones that arrived before: they were sent before
/// shutdown, so they get the grace like the others.
async fn stop_accepting(requests: &mut Subscriber, live: &mut LiveRequests) {
    match tokio::time::timeout(PUBLISH_TIMEOUT, requests.unsubscribe()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "cannot unsubscribe from requests"),
        Err(_) => warn!("unsubscribing from requests timed out"),
    }
    while let Some(Some(message)) = requests.next().now_or_never() {
        live.accept(message).await;
    }
}

/// What every request task shares.
struct RequestContext {
    client: Client,
    handler: Arc<dyn GenerateHandler>,
    heartbeat_interval: Duration,
    /// Fires when the shutdown grace is over: open requests end with an error chunk.
    drain: CancellationToken,
    /// Where a request task reports its end (its key), so the serve loop forgets its token.
    done: mpsc::UnboundedSender<String>,
}

/// The serve loop's own state: a cancel token per running request, keyed by the client's
/// reply subject. Only the serve loop touches it, so it needs no lock.
struct LiveRequests {
    context: Arc<RequestContext>,
    tokens: HashMap<String, CancellationToken>,
    early_cancels: EarlyCancels,
    bounce_prefix: String,
    /// Parent of every request's token: fired when the server must stop everything.
    root: CancellationToken,
    tracker: TaskTracker,
}

impl LiveRequests {
    /// Acknowledges a request and starts it on its own task.
    async fn accept(&mut self, message: Message) {
        let Some(reply) = message.reply else {
            warn!(subject = %message.subject, "request without a reply subject; dropped");
            return;
        };
        let key = reply.to_string();
        if self.early_cancels.take(&key) {
            debug!(%key, "request cancelled before it was read; dropped");
            return;
        }
        if self.tokens.contains_key(&key) {
            warn!(%key, "a second request on a live reply subject; dropped");
            return;
        }
        let responder = Responder {
            client: self.context.client.clone(),
            reply,
            bounce: Subject::from(format!("{}{key}", self.bounce_prefix)),
        };
        if !responder.control(CONTROL_ACCEPTED).await {
            return;
        }
        let request = GenerateRequest::decode(message.payload).map_err(|e| e.to_string());
        let cancel = self.root.child_token();
        self.tokens.insert(key.clone(), cancel.clone());
        let done = DoneGuard { key, done: self.context.done.clone() };
        let context = Arc::clone(&self.context);
        self.tracker.spawn(run_request(context, responder, request, cancel, done));
    }

    /// A client gave up on a request: its payload is the request's reply subject.
    fn cancel_requested(&mut self, message: &Message) {
        let Ok(key) = std::str::from_utf8(&message.payload) else {
            warn!("a cancel that names no request; ignored");
            return;
        };
        match self.tokens.remove(key) {
            Some(token) => {
                debug!(%key, "request cancelled by its client");
                token.cancel();
            }
            // Either the request ended already or it has not been read yet.
            None => self.early_cancels.insert(key.to_owned()),
        }
    }

    /// NATS found nobody on a request's reply subject: the client is gone.
    fn bounced(&mut self, message: &Message) {
        if message.status != Some(StatusCode::NO_RESPONDERS) {
            return;
        }
        let Some(key) = message.subject.as_str().strip_prefix(&self.bounce_prefix) else {
            return;
        };
        if let Some(token) = self.tokens.remove(key) {
            debug!(%key, "the client's inbox is gone; cancelling its request");
            token.cancel();
        }
    }

    fn finished(&mut self, key: &str) {
        self.tokens.remove(key);
    }
}

/// Tells the serve loop that a request task ended, however it ended.
struct DoneGuard {
    key: String,
    done: mpsc::UnboundedSender<String>,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        // The loop is gone only after every task ended; nothing to tell it then.
        let _ = self.done.send(std::mem::take(&mut self.key));
    }
}

/// Sends one request's messages to its client's reply subject.
struct Responder {
    client: Client,
    reply: Subject,
    /// Reply subject of every message: NATS bounces a 503 here when the client is gone.
    bounce: Subject,
}

impl Responder {
    async fn control(&self, value: &'static str) -> bool {
        self.send(Some(control_headers(value)), Bytes::new()).await
    }

    /// Sends `chunk`; one too big for NATS is replaced by an error chunk saying so.
    async fn chunk(&self, chunk: &GenerateChunk) -> bool {
        match self.publish(None, chunk.encode_to_vec().into()).await {
            Ok(()) => true,
            Err(Some(PublishErrorKind::MaxPayloadExceeded)) => {
                let message =
                    format!("chunk {} is larger than the NATS server's max payload", chunk.seq);
                let error = error_chunk(chunk.seq, ErrorKind::Internal, message);
                self.send(None, error.encode_to_vec().into()).await;
                false
            }
            Err(_) => false,
        }
    }

    async fn send(&self, headers: Option<HeaderMap>, payload: Bytes) -> bool {
        self.publish(headers, payload).await.is_ok()
    }

    /// Publishes within [`PUBLISH_TIMEOUT`]; the error's kind when NATS refused it.
    async fn publish(
        &self,
        headers: Option<HeaderMap>,
        payload: Bytes,
    ) -> Result<(), Option<PublishErrorKind>> {
        let (reply, bounce) = (self.reply.clone(), self.bounce.clone());
        let publish = async {
            match headers {
                Some(headers) => {
                    self.client
                        .publish_with_reply_and_headers(reply, bounce, headers, payload)
                        .await
                }
                None => self.client.publish_with_reply(reply, bounce, payload).await,
            }
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                warn!(reply = %self.reply, error = %e, "cannot publish a response; ending it");
                Err(Some(e.kind()))
            }
            Err(_) => {
                warn!(reply = %self.reply, "publishing a response timed out; ending it");
                Err(None)
            }
        }
    }
}

/// Runs one request: forwards the handler's chunks (with the handler's `seq`, so the client
/// sees any gap), heartbeats while it is silent, and stops when cancelled. A handler error
/// and the end of the shutdown grace become a final error chunk, so they cross with a kind.
async fn run_request(
    context: Arc<RequestContext>,
    responder: Responder,
    request: Result<GenerateRequest, String>,
    cancel: CancellationToken,
    _done: DoneGuard,
) {
    let mut chunks: ChunkStream = match request {
        Ok(request) => tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            chunks = context.handler.generate(request) => chunks,
        },
        Err(reason) => {
            let message = format!("the request is not a valid GenerateRequest: {reason}");
            responder.chunk(&error_chunk(0, ErrorKind::InvalidRequest, message)).await;
            return;
        }
    };
    let every = context.heartbeat_interval;
    let mut heartbeat = tokio::time::interval_at(Instant::now() + every, every);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut next_seq = 0_u64;
    loop {
        let item = tokio::select! {
            biased;
            () = cancel.cancelled() => return,
            () = context.drain.cancelled() => {
                let message = "the worker is shutting down".to_owned();
                responder.chunk(&error_chunk(next_seq, ErrorKind::ShuttingDown, message)).await;
                return;
            }
            item = chunks.next() => item,
            _ = heartbeat.tick() => {
                if !responder.control(CONTROL_HEARTBEAT).await {
                    return;
                }
                continue;
            }
        };
        match item {
            Some(Ok(chunk)) => {
                let last = is_final(&chunk);
                next_seq = chunk.seq.saturating_add(1);
                if !responder.chunk(&chunk).await || last {
                    return;
                }
                heartbeat.reset();
            }
            Some(Err(e)) => {
                let chunk = error_chunk(next_seq, ErrorKind::Internal, e.to_string());
                responder.chunk(&chunk).await;
                return;
            }
            // The client reports the missing final chunk.
            None => return,
        }
    }
}
