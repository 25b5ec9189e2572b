//! The KV hand-off between workers: the `KvTransfer` gRPC service a prefill worker serves
//! (its engine's held blocks, streamed in checksummed chunks), and the [`KvPuller`] a decode
//! worker pulls them with. Engine-agnostic: the bytes are whatever the engine exports.
//!
//! Every connection has `TCP_NODELAY`: a hand-off is a request/response exchange on a kept
//! connection, where Nagle's algorithm would hold back the last partial segment for a
//! delayed ACK (~40 ms a hand-off).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::{Stream, StreamExt};
use switchyard_proto::kv_transfer_client::KvTransferClient;
use switchyard_proto::kv_transfer_server::{KvTransfer, KvTransferServer};
use switchyard_proto::{KvHandle, KvPullChunk, KvPullRequest};
use switchyard_runtime::plane::tcp::accept_until;
use switchyard_runtime::plane::tls::PlaneTls;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};
use xxhash_rust::xxh3::xxh3_64;

use crate::{Engine, Error, Result};

/// Largest `data` of one chunk: well under gRPC's 4 MiB message limit, large enough that
/// per-message overhead is noise.
pub const CHUNK_BYTES: usize = 1 << 20;

/// HTTP/2 flow-control windows of KvTransfer connections: a whole chunk in flight without
/// waiting for window updates (HTTP/2's default is 64 KiB).
const WINDOW_BYTES: u32 = 4 << 20;

/// Seconds one pull and import took, on the decode worker.
pub const TRANSFER_SECONDS: &str = "switchyard_worker_kv_transfer_seconds";
/// Bytes pulled from prefill workers (what travelled, not the engine's full size).
pub const TRANSFER_BYTES_TOTAL: &str = "switchyard_worker_kv_transfer_bytes_total";
/// Hand-offs that failed, by `cause`; the request was prefilled locally instead.
pub const TRANSFER_FAILURES_TOTAL: &str = "switchyard_worker_kv_transfer_failures_total";

/// Serves `KvTransfer` for `engine` on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    engine: Arc<dyn Engine>,
    tls: Option<PlaneTls>,
    shutdown: CancellationToken,
) -> Result<()> {
    let service = KvTransferService { engine };
    let mut builder = Server::builder();
    if let Some(tls) = &tls {
        builder = builder
            .tls_config(tls.server())
            .map_err(|e| Error::Config(format!("the plane's TLS settings: {e}")))?;
    }
    // Decode workers keep their connections open between pulls, so after shutdown the
    // server gets a short grace for pulls under way, then is dropped with its connections.
    let server = builder
        .initial_stream_window_size(WINDOW_BYTES)
        .initial_connection_window_size(WINDOW_BYTES)
        .add_service(KvTransferServer::new(service))
        .serve_with_incoming(accept_until(listener, shutdown.clone()));
    let mut server = std::pin::pin!(server);
    let served = tokio::select! {
        served = &mut server => served,
        () = shutdown.cancelled() => match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(served) => served,
            Err(_) => Ok(()),
        },
    };
    served.map_err(|e| Error::Engine(format!("KvTransfer server failed: {e}")))
}

/// How long pulls under way may go on after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

struct KvTransferService {
    engine: Arc<dyn Engine>,
}

type PullStream = std::pin::Pin<Box<dyn Stream<Item = Result<KvPullChunk, Status>> + Send>>;

#[tonic::async_trait]
impl KvTransfer for KvTransferService {
    type PullStream = PullStream;

    async fn pull(&self, request: Request<KvPullRequest>) -> Result<Response<PullStream>, Status> {
        let handle = request.into_inner().handle.unwrap_or_default();
        let Some(transfer) = self.engine.kv_transfer() else {
            return Err(Status::unimplemented("this worker's engine hands off no KV"));
        };
        let export = transfer.export_kv(&handle).await.map_err(|e| match e {
            Error::InvalidRequest(m) => Status::not_found(m),
            other => Status::internal(other.to_string()),
        })?;
        let total_bytes = export.total_bytes;
        let mut offset = 0u64;
        let chunks = export.chunks.map(move |data| {
            let data = data.map_err(|e| Status::internal(e.to_string()))?;
            let chunk = KvPullChunk { offset, checksum: xxh3_64(&data), total_bytes, data };
            offset += chunk.data.len() as u64;
            Ok(chunk)
        });
        Ok(Response::new(Box::pin(chunks)))
    }
}

/// Pulls handed-off KV from prefill workers, keeping one connection per worker.
#[derive(Debug)]
pub struct KvPuller {
    channels: Mutex<HashMap<String, Channel>>,
    /// Bound on one whole pull, connection included.
    timeout: Duration,
    tls: Option<PlaneTls>,
}

impl KvPuller {
    pub fn new(timeout: Duration, tls: Option<PlaneTls>) -> KvPuller {
        KvPuller { channels: Mutex::default(), timeout, tls }
    }

    /// The bytes `handle` names, checked chunk by chunk, and how long the pull took.
    pub async fn pull(&self, handle: &KvHandle) -> Result<(Vec<u8>, Duration)> {
        let started = Instant::now();
        let pulled = tokio::time::timeout(self.timeout, self.pull_once(handle)).await;
        let result = match pulled {
            Ok(result) => result,
            Err(_) => Err(Error::Engine(format!(
                "pulling KV from {} took over {:?}",
                handle.address, self.timeout
            ))),
        };
        if result.is_err() {
            // The next pull from this worker connects afresh.
            self.channels.lock().unwrap_or_else(PoisonError::into_inner).remove(&handle.address);
        }
        result.map(|data| (data, started.elapsed()))
    }

    async fn pull_once(&self, handle: &KvHandle) -> Result<Vec<u8>> {
        let channel = self.channel(&handle.address).await?;
        let mut client = KvTransferClient::new(channel).max_decoding_message_size(CHUNK_BYTES * 2);
        let request = KvPullRequest { handle: Some(handle.clone()) };
        let failed =
            |e: Status| Error::Engine(format!("KV pull from {}: {}", handle.address, e.message()));
        let mut stream = client.pull(request).await.map_err(failed)?.into_inner();
        let mut data = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(failed)? {
            if chunk.offset != data.len() as u64 {
                return Err(Error::Engine(format!(
                    "KV pull from {}: chunk at offset {} after {} bytes",
                    handle.address,
                    chunk.offset,
                    data.len()
                )));
            }
            if xxh3_64(&chunk.data) != chunk.checksum {
                return Err(Error::Engine(format!(
                    "KV pull from {}: checksum mismatch at offset {}",
                    handle.address, chunk.offset
                )));
            }
            if data.is_empty() {
                data.reserve_exact(usize::try_from(chunk.total_bytes).unwrap_or(0));
            }
            data.extend_from_slice(&chunk.data);
            if data.len() as u64 > chunk.total_bytes {
                return Err(Error::Engine(format!(
                    "KV pull from {}: more bytes than the {} announced",
                    handle.address, chunk.total_bytes
                )));
            }
        }
        Ok(data)
    }

    async fn channel(&self, address: &str) -> Result<Channel> {
        if let Some(channel) =
            self.channels.lock().unwrap_or_else(PoisonError::into_inner).get(address)
        {
            return Ok(channel.clone());
        }
        let endpoint = switchyard_runtime::plane::tls::endpoint(address, self.tls.as_ref())
            .map_err(|e| Error::Engine(format!("KV transfer address {address:?}: {e}")))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true)
            .initial_stream_window_size(WINDOW_BYTES)
            .initial_connection_window_size(WINDOW_BYTES);
        let channel = endpoint.connect().await.map_err(|e| {
            Error::Engine(format!("connecting to the KV transfer service at {address}: {e}"))
        })?;
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(address.to_owned(), channel.clone());
        Ok(channel)
    }
}

/// Splits `data` into chunks of at most [`CHUNK_BYTES`], for an engine's export stream.
pub fn chunked(data: Vec<u8>) -> crate::KvBytesStream {
    if data.len() <= CHUNK_BYTES {
        return Box::pin(futures::stream::iter([Ok(data)]));
    }
    let chunks: Vec<Result<Vec<u8>>> = data.chunks(CHUNK_BYTES).map(|c| Ok(c.to_vec())).collect();
    Box::pin(futures::stream::iter(chunks))
}
