//! The request plane seam: send a [`GenerateRequest`] to one instance, get its chunks back.
//!
//! Implementations: [`tcp`] (tonic gRPC, server-streaming `Generate`) and [`nats`] (core NATS
//! subjects). Every implementation passes [`conformance`].

pub mod conformance;
pub mod nats;
pub mod tcp;
pub mod tls;

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use switchyard_proto::{ErrorKind, FinishReason, GenerateChunk, GenerateRequest, WorkerError};

use crate::Result;

/// Chunks of one response. The last chunk carries a finish reason (or an error); dropping the
/// stream before then cancels the work on the worker.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<GenerateChunk>> + Send>>;

/// The frontend's side: reaches an instance by the address in its record.
#[async_trait]
pub trait RequestClient: Send + Sync + 'static {
    /// Sends `request` to the instance at `address`. Connection errors come back here, so the
    /// caller can try another instance; errors after the first chunk come in the stream.
    async fn generate(&self, address: &str, request: GenerateRequest) -> Result<ChunkStream>;
}

/// The worker's side: what a request plane server calls for each request.
#[async_trait]
pub trait GenerateHandler: Send + Sync + 'static {
    /// Starts `request`. Failures are reported as a final chunk with `error` set, so they
    /// cross the wire with their kind. Dropping the stream cancels the request.
    async fn generate(&self, request: GenerateRequest) -> ChunkStream;
}

/// Whether `chunk` is the last of its response: it has a finish reason or an error.
pub fn is_final(chunk: &GenerateChunk) -> bool {
    chunk.finish_reason() != FinishReason::Unspecified || chunk.error.is_some()
}

/// The final chunk that reports a failure of kind `kind` at position `seq`.
pub(crate) fn error_chunk(seq: u64, kind: ErrorKind, message: String) -> GenerateChunk {
    GenerateChunk {
        seq,
        finish_reason: FinishReason::Error.into(),
        error: Some(WorkerError { kind: kind.into(), message, ..Default::default() }),
        ..GenerateChunk::default()
    }
}
