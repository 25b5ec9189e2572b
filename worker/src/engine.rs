//! The engine seam: what a worker needs from an inference engine. Engines know nothing about
//! discovery or transport.

use std::pin::Pin;

use async_trait::async_trait;
use futures::Stream;
use switchyard_proto::{GenerateChunk, GenerateRequest, KvEvent, LoadReport, ModelCard};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Output of one request. Each chunk carries new token ids; the last one carries a finish
/// reason and usage (its `seq` is set by the worker service, not the engine).
pub type EngineStream = Pin<Box<dyn Stream<Item = GenerateChunk> + Send>>;

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// What the engine serves; published in the instance record.
    fn card(&self) -> &ModelCard;

    /// Admits `request`. The stream ends after a chunk with a finish reason. Cancelling
    /// `cancel` or dropping the stream stops the request and frees what it held. An engine
    /// whose card says `embeddings` answers a request with `embed` set by one final chunk
    /// carrying the prompt's `embedding` (the worker refuses `embed` for the others).
    async fn generate(
        &self,
        request: GenerateRequest,
        cancel: CancellationToken,
    ) -> Result<EngineStream, Error>;

    /// Current load, for routers; `None` when the engine cannot tell.
    fn load(&self) -> Option<LoadReport> {
        None
    }

    /// The engine's KV events (blocks stored, removed, cache cleared), for routers; `None`
    /// when the engine cannot tell.
    fn kv_events(&self) -> Option<broadcast::Receiver<KvEvent>> {
        None
    }

    /// Asks for a `KvSnapshot` event (every cached block) in the `kv_events` sequence, for a
    /// router that lost track; false when the engine cannot give one.
    fn request_kv_snapshot(&self) -> bool {
        false
    }
}
