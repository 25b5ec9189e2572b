//! The engine seam: what a worker needs from an inference engine. Engines know nothing about
//! discovery or transport.

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use switchyard_proto::{GenerateChunk, GenerateRequest, KvEvent, KvHandle, LoadReport, ModelCard};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use crate::Error;

/// Output of one request. Each chunk carries new token ids; the last one carries a finish
/// reason and usage (its `seq` is set by the worker service, not the engine).
pub type EngineStream = Pin<Box<dyn Stream<Item = GenerateChunk> + Send>>;

/// The bytes of held KV blocks, in order, as a prefill engine exports them.
pub type KvBytesStream = Pin<Box<dyn Stream<Item = Result<Vec<u8>, Error>> + Send>>;

/// A prefill engine's export of the blocks one handle names.
pub struct KvExport {
    /// Bytes the stream yields in all.
    pub total_bytes: u64,
    /// The bytes; the blocks are freed once it is read to the end or dropped.
    pub chunks: KvBytesStream,
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// What the engine serves; published in the instance record.
    fn card(&self) -> &ModelCard;

    /// Admits `request`. The stream ends after a chunk with a finish reason. Cancelling
    /// `cancel` or dropping the stream stops the request and frees what it held.
    ///
    /// Prefill/decode split (`request.disaggregated`): a `prefill_only` request computes the
    /// prompt, sends its first token and ends with a chunk carrying a [`KvHandle`] (finish
    /// reason LENGTH, or STOP when that token ended the sequence); the engine fills the
    /// handle's `block_hashes`, `bytes`, `tokens`, `transfer_id`, `lease_ms` and
    /// `engine_params`, the worker service its `instance_id` and `address`. A request with
    /// a `kv_handle` continues after `generated_token_ids` from the prompt's KV: imported
    /// beforehand through [`KvTransferEngine::import_kv`] when the engine has one, otherwise
    /// moved by the engine itself from `engine_params`; without that KV it computes the
    /// prompt itself, with the same output.
    ///
    /// An engine whose card says `embeddings` answers a request with `embed` set by one final
    /// chunk carrying the prompt's `embedding` (the worker refuses `embed` for the others).
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

    /// Whether the engine can serve now, as it changes (an engine server that died, or came
    /// back); `None` for an engine that is up as long as the worker runs. The worker leaves
    /// discovery while this reads false and registers again when it reads true.
    fn up(&self) -> Option<watch::Receiver<bool>> {
        None
    }

    /// Whether the engine serves `prefill_only` requests (a worker with the prefill role
    /// refuses to start on one that does not).
    fn serves_prefill(&self) -> bool {
        false
    }

    /// The engine's side of Switchyard's own KV transfer, when it uses it (the mocker);
    /// `None` for engines whose connectors move the KV themselves.
    fn kv_transfer(&self) -> Option<&dyn KvTransferEngine> {
        None
    }
}

/// KV blocks moved between workers by Switchyard's `KvTransfer` service: the prefill worker's
/// engine exports what a handle names, the decode worker's engine imports what was pulled.
#[async_trait]
pub trait KvTransferEngine: Send + Sync {
    /// Prefill side: the bytes of the blocks held under `handle.transfer_id`. An unknown id
    /// or an expired lease is an `InvalidRequest`.
    async fn export_kv(&self, handle: &KvHandle) -> Result<KvExport, Error>;

    /// Decode side: puts `data`, pulled for `handle` in `pulled_in`, into the cache as the
    /// prompt's blocks, so the request carrying the handle finds them cached. Returns once
    /// they are there (a simulated engine also waits out the modelled link time).
    async fn import_kv(
        &self,
        handle: &KvHandle,
        data: Vec<u8>,
        pulled_in: Duration,
    ) -> Result<(), Error>;
}
