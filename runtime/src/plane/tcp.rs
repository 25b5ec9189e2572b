//! The TCP request plane: the tonic gRPC `Worker` service with its server-streaming `Generate`,
//! the server that runs a [`GenerateHandler`] behind it, and the [`TcpClient`] that calls it.
//!
//! Cancellation rides on HTTP/2: dropping the client's stream resets the HTTP/2 stream, and the
//! server then drops the handler's stream, which cancels the work.
//!
//! The same service carries the event plane in TCP mode: its server-streaming `Events` call
//! serves an [`EventHub`] (see [`serve_with_events`]).

use std::collections::HashMap;
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use futures::{Stream, StreamExt, stream};
use switchyard_proto::worker_client::WorkerClient;
use switchyard_proto::worker_server::{Worker, WorkerServer};
use switchyard_proto::{ErrorKind, EventsRequest, GenerateChunk, GenerateRequest, WorkerEvent};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;
use tonic::codec::Streaming;
use tonic::transport::{Channel, Server};
use tonic::{Code, Request, Response, Status};

use super::{ChunkStream, GenerateHandler, RequestClient};
use crate::events::EventHub;
use crate::{Error, Result};

/// How long in-flight streams may run on after shutdown is asked for.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// How long the server waits for connections to close once their streams were told to end.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);
/// HTTP/2 pings on both sides find a peer that vanished without closing its connection (a host
/// gone, a cable pulled), so its streams end instead of waiting for a TCP timeout.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// A client pings its workers more often: a worker frozen or cut off mid-stream is noticed
/// within about 3 s, and its streams move elsewhere.
const CLIENT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
const CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

use super::error_chunk;
pub use super::is_final;
use super::tls::PlaneTls;

/// Server settings.
#[derive(Debug, Clone)]
pub struct TcpServerConfig {
    /// After shutdown is asked for, how long in-flight streams may run on before they are ended
    /// with a `SHUTTING_DOWN` error chunk (so the frontend can retry elsewhere).
    pub shutdown_grace: Duration,
    /// Serve over TLS.
    pub tls: Option<PlaneTls>,
}

impl Default for TcpServerConfig {
    fn default() -> Self {
        TcpServerConfig { shutdown_grace: DEFAULT_SHUTDOWN_GRACE, tls: None }
    }
}

/// Serves `handler` on `listener` until `shutdown` fires, with the default settings.
pub async fn serve(
    listener: TcpListener,
    handler: Arc<dyn GenerateHandler>,
    shutdown: CancellationToken,
) -> Result<()> {
    serve_with_config(listener, handler, shutdown, TcpServerConfig::default()).await
}

/// Serves `handler` on `listener` until `shutdown` fires. Then it stops accepting, lets in-flight
/// streams finish for up to `config.shutdown_grace`, ends the rest with a `SHUTTING_DOWN` error
/// chunk, and returns once the connections are closed (or [`DRAIN_LIMIT`] later at most).
pub async fn serve_with_config(
    listener: TcpListener,
    handler: Arc<dyn GenerateHandler>,
    shutdown: CancellationToken,
    config: TcpServerConfig,
) -> Result<()> {
    serve_service(listener, handler, None, shutdown, config).await
}

/// [`serve_with_config`], and the `Events` call serves `events`: each call streams the events
/// published on the hub from then on, until `shutdown` fires (so open event streams never hold
/// the shutdown up). Without it, `Events` answers `UNIMPLEMENTED`.
pub async fn serve_with_events(
    listener: TcpListener,
    handler: Arc<dyn GenerateHandler>,
    events: EventHub,
    shutdown: CancellationToken,
    config: TcpServerConfig,
) -> Result<()> {
    serve_service(listener, handler, Some(events), shutdown, config).await
}

async fn serve_service(
    listener: TcpListener,
    handler: Arc<dyn GenerateHandler>,
    events: Option<EventHub>,
    shutdown: CancellationToken,
    config: TcpServerConfig,
) -> Result<()> {
    let drain = CancellationToken::new();
    let service =
        WorkerService { handler, drain: drain.clone(), events, shutdown: shutdown.clone() };
    // The accept stream ends at shutdown, and tonic then closes its connections gracefully.
    // tonic's own shutdown signal is not used: it would keep the listener bound while the
    // connections drain, so new connections would sit in the backlog unanswered instead of
    // being refused, and their callers could not turn to another worker at once.
    let never = std::future::pending::<()>();
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        builder = builder
            .tls_config(tls.server())
            .map_err(|e| Error::Config(format!("the plane's TLS settings: {e}")))?;
    }
    let server = builder
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .add_service(WorkerServer::new(service))
        .serve_with_incoming_shutdown(accept_until(listener, shutdown.clone()), never);
    let mut server = pin!(server);
    let served = tokio::select! {
        served = &mut server => served,
        () = shutdown.cancelled() => {
            match tokio::time::timeout(config.shutdown_grace, &mut server).await {
                Ok(served) => served,
                Err(_) => {
                    drain.cancel();
                    match tokio::time::timeout(DRAIN_LIMIT, &mut server).await {
                        Ok(served) => served,
                        Err(_) => {
                            tracing::warn!("connections still open after shutdown; leaving them");
                            Ok(())
                        }
                    }
                }
            }
        }
    };
    served.map_err(|e| Error::Transport(format!("server failed: {}", error_chain(&e))))
}

/// Connections accepted on `listener`, with `TCP_NODELAY` set, until `shutdown` fires; the
/// listener is closed then.
pub fn accept_until(
    listener: TcpListener,
    shutdown: CancellationToken,
) -> impl Stream<Item = std::io::Result<TcpStream>> {
    stream::unfold(listener, move |listener| {
        let shutdown = shutdown.clone();
        async move {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return None,
                accepted = listener.accept() => accepted,
            };
            let connection = match accepted {
                Ok((connection, _)) => connection.set_nodelay(true).map(|()| connection),
                Err(e) => {
                    // Accept fails when out of file descriptors, say: pause instead of spinning.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Err(e)
                }
            };
            Some((connection, listener))
        }
    })
}

/// The gRPC face of a [`GenerateHandler`].
struct WorkerService {
    handler: Arc<dyn GenerateHandler>,
    /// Fires when the shutdown grace is over: open streams end with an error chunk.
    drain: CancellationToken,
    /// What the `Events` call serves, if the worker publishes events.
    events: Option<EventHub>,
    /// Ends the `Events` streams at once when shutdown begins.
    shutdown: CancellationToken,
}

type WireStream = Pin<Box<dyn Stream<Item = Result<GenerateChunk, Status>> + Send>>;
type EventWireStream = Pin<Box<dyn Stream<Item = Result<WorkerEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Worker for WorkerService {
    type GenerateStream = WireStream;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<WireStream>, Status> {
        let chunks = self.handler.generate(request.into_inner()).await;
        Ok(Response::new(wire_stream(chunks, self.drain.clone())))
    }

    type EventsStream = EventWireStream;

    async fn events(
        &self,
        request: Request<EventsRequest>,
    ) -> Result<Response<EventWireStream>, Status> {
        let Some(hub) = &self.events else {
            return Err(Status::unimplemented("this worker publishes no events"));
        };
        // Subscribed first, so the snapshot the request asks for is on this stream.
        let events = hub.stream(self.shutdown.clone());
        if request.into_inner().snapshot {
            hub.request_snapshot();
        }
        Ok(Response::new(Box::pin(events.map(Ok))))
    }
}

/// Forwards the handler's chunks until the final one. A handler error becomes a final error
/// chunk, and so does the end of the shutdown grace, so failures cross the wire with a kind.
fn wire_stream(chunks: ChunkStream, drain: CancellationToken) -> WireStream {
    let state = Some((chunks, drain, 0_u64));
    Box::pin(stream::unfold(state, |state| async move {
        let (mut chunks, drain, next_seq) = state?;
        let item = tokio::select! {
            biased;
            item = chunks.next() => item,
            () = drain.cancelled() => {
                let message = "the worker is shutting down".to_owned();
                let chunk = error_chunk(next_seq, ErrorKind::ShuttingDown, message);
                return Some((Ok(chunk), None));
            }
        };
        match item {
            Some(Ok(chunk)) => {
                let next = (!is_final(&chunk)).then(|| (chunks, drain, chunk.seq + 1));
                Some((Ok(chunk), next))
            }
            Some(Err(e)) => {
                Some((Ok(error_chunk(next_seq, ErrorKind::Internal, e.to_string())), None))
            }
            // The client reports the missing final chunk.
            None => None,
        }
    }))
}

/// Client settings.
#[derive(Debug, Clone)]
pub struct TcpClientConfig {
    /// Longest wait to open a connection to a worker.
    pub connect_timeout: Duration,
    /// Longest wait for the response to start, and then for each next chunk. Generous: a worker
    /// may queue a request or prefill a long prompt before its first token.
    pub chunk_timeout: Duration,
    /// Reach workers over TLS.
    pub tls: Option<PlaneTls>,
}

impl Default for TcpClientConfig {
    fn default() -> Self {
        TcpClientConfig {
            connect_timeout: Duration::from_secs(2),
            chunk_timeout: Duration::from_secs(60),
            tls: None,
        }
    }
}

/// A [`RequestClient`] over gRPC. It keeps one HTTP/2 connection per worker address, opened on
/// first use; all requests to that worker share it.
pub struct TcpClient {
    config: TcpClientConfig,
    /// One cell per address, so that concurrent first requests open one connection together.
    channels: Mutex<HashMap<String, Arc<OnceCell<Channel>>>>,
}

impl std::fmt::Debug for TcpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpClient").field("config", &self.config).finish_non_exhaustive()
    }
}

impl TcpClient {
    pub fn new(config: TcpClientConfig) -> TcpClient {
        TcpClient { config, channels: Mutex::new(HashMap::new()) }
    }

    /// The channel to `address`, connecting on first use.
    async fn channel(&self, address: &str) -> Result<Channel> {
        let cell = {
            let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(channels.entry(address.to_owned()).or_default())
        };
        let channel = cell.get_or_try_init(|| self.connect(address)).await.cloned();
        if channel.is_err() {
            self.forget(address);
        }
        channel
    }

    /// Drops the channel to a worker that could not be reached, so that the map does not keep
    /// one per dead worker; a later request to it connects afresh.
    fn forget(&self, address: &str) {
        let mut channels = self.channels.lock().unwrap_or_else(PoisonError::into_inner);
        channels.remove(address);
    }

    async fn connect(&self, address: &str) -> Result<Channel> {
        let connect_error = |reason: String| Error::Connect { address: address.to_owned(), reason };
        let endpoint = super::tls::endpoint(address, self.config.tls.as_ref())?
            .connect_timeout(self.config.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(CLIENT_KEEPALIVE_INTERVAL)
            .keep_alive_timeout(CLIENT_KEEPALIVE_TIMEOUT);
        // tonic bounds the TCP connect; this bounds the HTTP/2 handshake after it too.
        let limit = self.config.connect_timeout * 2;
        match tokio::time::timeout(limit, endpoint.connect()).await {
            Ok(Ok(channel)) => Ok(channel),
            Ok(Err(e)) => Err(connect_error(error_chain(&e))),
            Err(_) => Err(connect_error(format!("no connection within {limit:?}"))),
        }
    }
}

#[async_trait]
impl RequestClient for TcpClient {
    async fn generate(&self, address: &str, request: GenerateRequest) -> Result<ChunkStream> {
        let channel = self.channel(address).await?;
        let after = self.config.chunk_timeout;
        let mut client = WorkerClient::new(channel);
        let response = match tokio::time::timeout(after, client.generate(request)).await {
            Ok(Ok(response)) => response,
            // The worker did not answer: it is unreachable, or the kept connection died under
            // the request (a status with a source was made here from a transport error, not
            // sent by the worker). Either way no work goes on there, so the caller may try
            // another worker; the next request to this one connects afresh.
            Ok(Err(status))
                if status.code() == Code::Unavailable
                    || std::error::Error::source(&status).is_some() =>
            {
                self.forget(address);
                return Err(Error::Connect {
                    address: address.to_owned(),
                    reason: error_chain(&status),
                });
            }
            // The worker answered with an error status.
            Ok(Err(status)) => return Err(status_error(&status)),
            Err(_) => {
                return Err(Error::Timeout { what: "response from the worker", after });
            }
        };
        Ok(checked_stream(response.into_inner(), after))
    }
}

fn status_error(status: &Status) -> Error {
    Error::Transport(format!("{:?}: {}", status.code(), status.message()))
}

/// The chunks of `inner`, checked: `seq` counts up from 0 by one, and the stream ends with a
/// final chunk. A break in either, a transport error, or a silence longer than `chunk_timeout`
/// becomes the last item, an error. Dropping it resets the HTTP/2 stream, which cancels the work.
fn checked_stream(inner: Streaming<GenerateChunk>, chunk_timeout: Duration) -> ChunkStream {
    let state = Some((inner, 0_u64));
    Box::pin(stream::unfold(state, move |state| async move {
        let (mut inner, expected) = state?;
        let item = match tokio::time::timeout(chunk_timeout, inner.message()).await {
            Err(_) => {
                Err(Error::Timeout { what: "next chunk from the worker", after: chunk_timeout })
            }
            Ok(Err(status)) => Err(status_error(&status)),
            Ok(Ok(None)) => Err(Error::StreamBroken(format!(
                "the worker's stream ended after {expected} chunks without a final chunk"
            ))),
            Ok(Ok(Some(chunk))) if chunk.seq != expected => Err(Error::StreamBroken(format!(
                "chunk {} arrived where chunk {expected} was due",
                chunk.seq
            ))),
            Ok(Ok(Some(chunk))) => {
                let next = (!is_final(&chunk)).then_some((inner, expected + 1));
                return Some((Ok(chunk), next));
            }
        };
        Some((item, None))
    }))
}

/// `error` and its sources, joined: tonic's top-level messages ("transport error") alone do not
/// say what failed.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
