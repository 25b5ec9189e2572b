//! The mocker: a simulated GPU inference engine, the default wherever no GPU is present.
//!
//! It models vLLM's engine closely enough for benchmarks and routing studies: a paged KV
//! cache with a fixed number of blocks and prefix caching (ref-counted blocks found by
//! chained block hash, LRU eviction), a continuous-batching scheduler with a token budget
//! per step, chunked prefill and recompute preemption, and a time model per step (see
//! [`TimingProfile`]) slept out on the tokio clock, so paused-time tests see exact times.
//! Tokens are pseudo-random but deterministic per seed. It publishes real KV events and
//! load reports.
//!
//! Prefill/decode split: a prefill-only request holds its prompt's blocks after its first
//! token until a decode worker pulls them or a lease expires; the pull carries real bytes
//! (the model's KV size scaled down) and the importing side waits out the modelled time of
//! the full size over the configured link (see [`HandoffConfig`]). Imported blocks enter the
//! cache like computed ones: KV events, load, later prefix hits.

mod actor;
mod config;
mod handoff;
mod kv_cache;
mod lru;
mod sampler;
mod scheduler;
mod sequence;
mod stream;
mod timing;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use switchyard_proto::{GenerateRequest, KvEvent, KvHandle, LoadReport, ModelCard};
use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::MockerConfig;
pub use handoff::{HandoffConfig, KvLink};
pub use timing::{Quadratic, TimingProfile};

use crate::engine::{Engine, EngineStream, KvExport, KvTransferEngine};
use crate::{Error, Result};
use actor::{Actor, Command};
use scheduler::Scheduler;
use sequence::Sequence;
use stream::OutputStream;

/// KV events a slow subscriber may fall behind by before it sees a gap in event ids.
const KV_EVENT_BUFFER: usize = 16_384;

/// The engine kind published in the model card.
pub const ENGINE_KIND: &str = "mocker";

/// A simulated engine. Its scheduler runs as one task that stops when the shutdown token
/// given to [`MockerEngine::start`] fires or the engine is dropped; requests still in it
/// then end with a `ShuttingDown` error chunk.
pub struct MockerEngine {
    card: ModelCard,
    config: MockerConfig,
    commands: mpsc::UnboundedSender<Command>,
    next_id: AtomicU64,
    events: broadcast::Sender<KvEvent>,
    snapshot: Arc<Notify>,
    load: watch::Receiver<LoadReport>,
    preemptions: Arc<AtomicU64>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl MockerEngine {
    /// Validates `config` and starts the scheduler; call inside a tokio runtime.
    ///
    /// The card's `context_length`, `kv_block_size`, `kv_total_blocks` and `engine` are
    /// replaced by what this engine simulates, so routers see the real geometry.
    pub fn start(
        config: MockerConfig,
        mut card: ModelCard,
        shutdown: CancellationToken,
    ) -> Result<Self> {
        config.validate()?;
        card.context_length = config.context_length;
        card.kv_block_size = config.block_size;
        card.kv_total_blocks = config.num_gpu_blocks;
        card.engine = ENGINE_KIND.to_owned();

        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(KV_EVENT_BUFFER);
        let scheduler = Scheduler::new(config.clone());
        let (load_tx, load) = watch::channel(scheduler.load());
        let preemptions = Arc::new(AtomicU64::new(0));
        let snapshot = Arc::new(Notify::new());
        let actor = Actor {
            scheduler,
            speedup_ratio: config.speedup_ratio,
            lease: config.handoff.lease,
            commands: commands_rx,
            events: events.clone(),
            snapshot: snapshot.clone(),
            load: load_tx,
            preemptions: preemptions.clone(),
            shutdown: shutdown.clone(),
        };
        let tracker = TaskTracker::new();
        tracker.spawn(actor.run());
        tracker.close();
        Ok(Self {
            card,
            config,
            commands,
            next_id: AtomicU64::new(0),
            events,
            snapshot,
            load,
            preemptions,
            shutdown,
            tracker,
        })
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &MockerConfig {
        &self.config
    }

    /// KV events from now on: `Stored` when blocks become cached, `Removed` when cached
    /// blocks are evicted, `Cleared` when the engine stops. `event_id` grows by one per
    /// event of this engine; a gap means the receiver lagged and should resynchronise.
    pub fn kv_events(&self) -> broadcast::Receiver<KvEvent> {
        self.events.subscribe()
    }

    /// Sequences preempted (and later recomputed) since start: a sign the cache is too
    /// small for the load, as vLLM's `num_preemptions`.
    pub fn preemptions(&self) -> u64 {
        self.preemptions.load(Ordering::Relaxed)
    }

    /// Waits until the scheduler task has stopped (after the shutdown token fired).
    pub async fn stopped(&self) {
        self.tracker.wait().await;
    }
}

/// The mocker emits pseudo-random tokens: parameters that shape a real model's distribution
/// (or ask for its probabilities) cannot be honoured, so they are refused by name rather than
/// silently ignored.
fn refuse_unsimulated(s: &switchyard_proto::SamplingParams) -> Result<()> {
    let refused = [
        ("logprobs", s.logprobs.is_some()),
        ("response_format", !s.response_format.is_empty()),
        ("logit_bias", !s.logit_bias.is_empty()),
        ("presence_penalty", s.presence_penalty.is_some_and(|p| p != 0.0)),
        ("frequency_penalty", s.frequency_penalty.is_some_and(|p| p != 0.0)),
        ("repetition_penalty", s.repetition_penalty.is_some_and(|p| p != 1.0)),
        ("min_p", s.min_p.is_some_and(|p| p != 0.0)),
    ];
    match refused.into_iter().find(|(_, set)| *set) {
        Some((param, _)) => Err(Error::param(
            param,
            format!("{param} is not supported by the simulated engine (its tokens are random)"),
        )),
        None => Ok(()),
    }
}

#[async_trait]
impl Engine for MockerEngine {
    fn card(&self) -> &ModelCard {
        &self.card
    }

    async fn generate(
        &self,
        request: GenerateRequest,
        cancel: CancellationToken,
    ) -> Result<EngineStream, Error> {
        if self.shutdown.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        if let Some(sampling) = &request.sampling {
            refuse_unsimulated(sampling)?;
        }
        let (output, output_rx) = mpsc::unbounded_channel();
        // A child: dropping the stream cancels it without touching the caller's token.
        let abort = cancel.child_token();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let seq = Sequence::new(id, &self.config, request, output, abort.clone())?;
        self.commands.send(Command::Add(Box::new(seq))).map_err(|_| Error::ShuttingDown)?;
        Ok(Box::pin(OutputStream::new(output_rx, abort)))
    }

    fn load(&self) -> Option<LoadReport> {
        Some(*self.load.borrow())
    }

    fn kv_events(&self) -> Option<broadcast::Receiver<KvEvent>> {
        Some(self.events.subscribe())
    }

    fn request_kv_snapshot(&self) -> bool {
        // Requests that arrive before the actor takes the first collapse into one snapshot.
        self.snapshot.notify_one();
        true
    }

    fn serves_prefill(&self) -> bool {
        true
    }

    fn kv_transfer(&self) -> Option<&dyn KvTransferEngine> {
        Some(self)
    }
}

/// Frees a pulled hand-off's held blocks when its export stream ends or is dropped.
struct ReleaseOnDrop {
    commands: mpsc::UnboundedSender<Command>,
    transfer_id: String,
}

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        let transfer_id = std::mem::take(&mut self.transfer_id);
        let _ = self.commands.send(Command::Release { transfer_id });
    }
}

#[async_trait]
impl KvTransferEngine for MockerEngine {
    async fn export_kv(&self, handle: &KvHandle) -> Result<KvExport> {
        let (reply, answer) = oneshot::channel();
        let transfer_id = handle.transfer_id.clone();
        self.commands
            .send(Command::Export { transfer_id: transfer_id.clone(), reply })
            .map_err(|_| Error::ShuttingDown)?;
        let held = answer.await.map_err(|_| Error::ShuttingDown)?.ok_or_else(|| {
            Error::InvalidRequest(format!(
                "no KV held under transfer id {transfer_id:?} (unknown, pulled already, or its \
                 lease expired)"
            ))
        })?;
        let release = ReleaseOnDrop { commands: self.commands.clone(), transfer_id };
        let data =
            self.config.handoff.encode(held.tokens, self.config.block_tokens(), &held.hashes);
        let total_bytes = data.len() as u64;
        let chunks = crate::kv_transfer::chunked(data).map(move |chunk| {
            let _held_until_read = &release;
            chunk
        });
        Ok(KvExport { total_bytes, chunks: Box::pin(chunks) })
    }

    async fn import_kv(&self, handle: &KvHandle, data: Vec<u8>, pulled_in: Duration) -> Result<()> {
        let tokens = handle.tokens as usize;
        let bs = self.config.block_tokens();
        if handle.block_hashes.len() != tokens / bs {
            return Err(Error::InvalidRequest(format!(
                "a KV handle of {tokens} tokens names {} blocks; blocks of {bs} tokens make {}",
                handle.block_hashes.len(),
                tokens / bs
            )));
        }
        self.config.handoff.verify(&data, tokens, bs, &handle.block_hashes)?;
        // The full size over the modelled link, less what the real pull already took.
        let link_ms = self.config.handoff.link.transfer_ms(handle.bytes);
        let modelled = timing::scaled(link_ms, self.config.speedup_ratio);
        tokio::time::sleep(modelled.saturating_sub(pulled_in)).await;
        let (done, imported) = oneshot::channel();
        let hashes = handle.block_hashes.clone();
        self.commands.send(Command::Import { hashes, done }).map_err(|_| Error::ShuttingDown)?;
        let cached = imported.await.map_err(|_| Error::ShuttingDown)?;
        if cached < handle.block_hashes.len() {
            return Err(Error::Overloaded(format!(
                "only {cached} of {} handed-over blocks fit in the KV cache",
                handle.block_hashes.len()
            )));
        }
        Ok(())
    }
}
