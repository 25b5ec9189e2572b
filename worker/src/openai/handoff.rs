//! Prefill/decode through engine servers, the way each engine does it. The prefill side
//! computes the prompt, returns its first token and a [`KvHandle`] whose `engine_params` say
//! how the decode side finds the KV; the decode side continues after the first token.
//!
//! - llama.cpp: the prompt is computed in a slot and saved with `POST /slots/N?action=save`
//!   into the servers' shared `--slot-save-path`; the decode server restores the file into a
//!   slot and continues with `id_slot` and `cache_prompt`, so the prompt shows as cached.
//! - vLLM: `kv_transfer_params` with `do_remote_decode` on a `max_tokens: 1` prefill; the
//!   decode request passes back what the prefill returned, with the same prompt (its
//!   connector finds the KV by it), and the already-sent first token is dropped from its output.
//! - TensorRT-LLM: `disaggregated_params` (`context_only`, then `generation_only` with what the
//!   context phase returned), the same way as vLLM.
//! - SGLang: both servers meet through the prefill server's bootstrap port: the prefill
//!   request runs in the background carrying `bootstrap_host/port/room`, the handle carries
//!   them to the decode request, which produces every token.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Map, Value, json};
use switchyard_proto::{FinishReason, GenerateChunk, GenerateRequest, KvHandle, SamplingParams};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::decode::{Decoder, Piece};
use super::{Flavour, OpenAiEngine, body};
use crate::engine::EngineStream;
use crate::{Error, Result};

/// SGLang's default `--disaggregation-bootstrap-port`.
const SGLANG_BOOTSTRAP_PORT: u16 = 8998;
/// Longest a background SGLang prefill may wait for its decode side.
const SGLANG_PREFILL_TIMEOUT: Duration = Duration::from_secs(600);

/// A flavour's prefill/decode state.
pub(crate) struct Handoff {
    flavour: Flavour,
    /// llama.cpp: the shared slot directory (decode servers delete restored files from it).
    slot_dir: Option<std::path::PathBuf>,
    /// llama.cpp: the slots, handed to one hand-off at a time.
    slots: tokio::sync::OnceCell<SlotPool>,
}

/// What a generation request sends, after any hand-off.
pub(crate) struct DecodePlan {
    pub prompt_ids: Vec<u32>,
    pub max_tokens: u32,
    /// Fields merged into the engine request body.
    pub extra: Map<String, Value>,
    /// Output tokens to drop from the start (the engine produces the first token again).
    pub skip: u32,
    /// Output tokens generated before this request, counted in its usage.
    pub generated_before: u32,
    /// Held while the request runs (a llama.cpp slot).
    pub hold: Option<SlotGuard>,
}

impl Handoff {
    pub fn new(flavour: Flavour, slot_dir: Option<std::path::PathBuf>) -> Handoff {
        Handoff { flavour, slot_dir, slots: tokio::sync::OnceCell::new() }
    }

    /// Whether this engine can serve `prefill_only` requests.
    pub fn supported(&self) -> bool {
        self.flavour != Flavour::Openai
    }

    /// A `prefill_only` request: the first token and the handle, as a one-chunk stream.
    pub async fn prefill(
        &self,
        engine: &OpenAiEngine,
        request: &GenerateRequest,
        sampling: &SamplingParams,
        cancel: CancellationToken,
    ) -> Result<EngineStream> {
        if !self.supported() {
            return Err(Error::InvalidRequest(
                "this engine does not do prefill/decode; run it with --engine vllm, sglang, trtllm or llamacpp".into(),
            ));
        }
        let prompt = engine.prompt(&request.token_ids)?;
        let mut body = body::build(self.flavour, &engine.model_id, &prompt, sampling, 1, false)?;
        let run = async {
            match self.flavour {
                Flavour::Llamacpp => self.llamacpp_prefill(engine, request, body).await,
                Flavour::Sglang => Ok(self.sglang_prefill(engine, request, body)),
                Flavour::Vllm | Flavour::Trtllm | Flavour::Openai => {
                    let (key, params) = if self.flavour == Flavour::Vllm {
                        (
                            "kv_transfer_params",
                            json!({"do_remote_decode": true, "do_remote_prefill": false}),
                        )
                    } else {
                        ("disaggregated_params", json!({"request_type": "context_only"}))
                    };
                    merge(&mut body, [(key.to_owned(), params)].into_iter().collect());
                    let (piece, first) = self.one_shot(engine, &body).await?;
                    let params = json!({"engine": self.flavour.name(), key: piece.transfer});
                    Ok(prefill_chunk(request, piece, first, params, 0))
                }
            }
        };
        let chunk = tokio::select! {
            chunk = run => chunk?,
            () = cancel.cancelled() => return Err(Error::Engine("prefill cancelled".into())),
        };
        Ok(Box::pin(futures::stream::iter([chunk])))
    }

    /// The request a generation sends: plain, or continuing from a prefill's handle.
    pub async fn decode_prompt(
        &self,
        engine: &OpenAiEngine,
        request: &GenerateRequest,
        sampling: &SamplingParams,
    ) -> Result<DecodePlan> {
        let mut plan = DecodePlan {
            prompt_ids: request.token_ids.clone(),
            max_tokens: sampling.max_tokens,
            extra: Map::new(),
            skip: 0,
            generated_before: 0,
            hold: None,
        };
        let Some(d) = &request.disaggregated else { return Ok(plan) };
        let generated = &d.generated_token_ids;
        let n = u32::try_from(generated.len()).unwrap_or(u32::MAX);
        let params: Value = d
            .kv_handle
            .as_ref()
            .and_then(|h| serde_json::from_str(&h.engine_params).ok())
            .unwrap_or_default();
        let from = params.get("engine").and_then(Value::as_str).unwrap_or_default();
        let same_engine = from == self.flavour.name();
        match self.flavour {
            Flavour::Vllm | Flavour::Trtllm if same_engine => {
                // Same prompt, the transfer parameters back; the engine makes the first
                // token again, which the client already has.
                let key = if self.flavour == Flavour::Vllm {
                    "kv_transfer_params"
                } else {
                    "disaggregated_params"
                };
                let mut transfer = params.get(key).cloned().unwrap_or(Value::Null);
                if self.flavour == Flavour::Trtllm
                    && let Some(t) = transfer.as_object_mut()
                {
                    t.insert("request_type".into(), json!("generation_only"));
                }
                if !transfer.is_null() {
                    plan.extra.insert(key.into(), transfer);
                }
                plan.skip = n;
                return Ok(plan);
            }
            Flavour::Sglang if same_engine => {
                for key in ["bootstrap_host", "bootstrap_port", "bootstrap_room"] {
                    if let Some(v) = params.get(key) {
                        plan.extra.insert(key.into(), v.clone());
                    }
                }
                plan.skip = n;
                return Ok(plan);
            }
            Flavour::Llamacpp if same_engine => {
                let guard = self.slot(engine).await?;
                let file = params.get("filename").and_then(Value::as_str).unwrap_or_default();
                match self.restore(engine, guard.id, file).await {
                    Ok(()) => debug!(slot = guard.id, file, "restored the prompt's KV"),
                    // The prompt is computed here instead; the tokens are the same.
                    Err(e) => {
                        warn!(error = %e, "restoring the prefill's KV failed; computing the prompt")
                    }
                }
                plan.extra.insert("id_slot".into(), json!(guard.id));
                plan.hold = Some(guard);
            }
            _ => {}
        }
        // Continue after the tokens already generated: they join the prompt.
        plan.prompt_ids.extend_from_slice(generated);
        plan.max_tokens = plan.max_tokens.saturating_sub(n).max(1);
        plan.generated_before = n;
        Ok(plan)
    }

    /// llama.cpp: the prompt and first token in a slot of our own, then the slot saved.
    async fn llamacpp_prefill(
        &self,
        engine: &OpenAiEngine,
        request: &GenerateRequest,
        mut body: Value,
    ) -> Result<GenerateChunk> {
        let guard = self.slot(engine).await?;
        merge(&mut body, [("id_slot".to_owned(), json!(guard.id))].into_iter().collect());
        let (piece, first) = self.one_shot(engine, &body).await?;
        let filename = format!("switchyard-{}.bin", sanitize(&request.request_id));
        let saved: Value = engine
            .post(&format!("/slots/{}?action=save", guard.id), &json!({"filename": filename}))
            .await?
            .json()
            .await
            .map_err(|e| Error::Engine(format!("saving slot {}: {e}", guard.id)))?;
        drop(guard);
        let bytes = saved.get("n_written").and_then(Value::as_u64).unwrap_or(0);
        let params = json!({"engine": "llamacpp", "filename": filename});
        Ok(prefill_chunk(request, piece, first, params, bytes))
    }

    /// SGLang: the prefill runs in the background until the decode side has pulled the KV.
    fn sglang_prefill(
        &self,
        engine: &OpenAiEngine,
        request: &GenerateRequest,
        mut body: Value,
    ) -> GenerateChunk {
        let host = reqwest::Url::parse(&engine.base)
            .ok()
            .and_then(|u| u.host_str().map(str::to_owned))
            .unwrap_or_else(|| "127.0.0.1".into());
        let room: u64 = rand::random::<u64>() >> 1;
        let bootstrap = [
            ("bootstrap_host".to_owned(), json!(host)),
            ("bootstrap_port".to_owned(), json!(SGLANG_BOOTSTRAP_PORT)),
            ("bootstrap_room".to_owned(), json!(room)),
        ];
        merge(&mut body, bootstrap.iter().cloned().collect());
        let (http, url) = (engine.http.clone(), format!("{}/generate", engine.base));
        let stop = engine.stop.clone();
        engine.tasks.spawn(async move {
            let call = http.post(&url).json(&body).timeout(SGLANG_PREFILL_TIMEOUT).send();
            tokio::select! {
                result = call => if let Err(e) = result.and_then(reqwest::Response::error_for_status) {
                    warn!(error = %e, "SGLang prefill failed");
                },
                () = stop.cancelled() => {}
            }
        });
        let mut params: Map<String, Value> = bootstrap.into_iter().collect();
        params.insert("engine".into(), json!("sglang"));
        let piece = Piece { finish: Some(FinishReason::Length), ..Piece::default() };
        prefill_chunk(request, piece, Vec::new(), Value::Object(params), 0)
    }

    /// A non-streamed request; its decoded body and its output ids.
    async fn one_shot(&self, engine: &OpenAiEngine, body: &Value) -> Result<(Piece, Vec<u32>)> {
        let text = engine
            .post(body::generate_path(self.flavour), body)
            .await?
            .text()
            .await
            .map_err(|e| Error::Engine(format!("reading the prefill response: {e}")))?;
        let mut piece = Decoder::new(self.flavour, None).decode(&text)?;
        let mut ids = std::mem::take(&mut piece.token_ids);
        if ids.is_empty()
            && !piece.text.is_empty()
            && let Some(codec) = &engine.codec
        {
            ids = codec.encode(&piece.text)?;
        }
        ids.truncate(1);
        Ok((piece, ids))
    }

    async fn restore(&self, engine: &OpenAiEngine, slot: u32, file: &str) -> Result<()> {
        if file.is_empty() {
            return Err(Error::InvalidRequest("the KV handle names no slot file".into()));
        }
        engine.post(&format!("/slots/{slot}?action=restore"), &json!({"filename": file})).await?;
        if let Some(dir) = &self.slot_dir {
            // Restored once; the directory would otherwise grow with every hand-off.
            let _ = tokio::fs::remove_file(dir.join(file)).await;
        }
        Ok(())
    }

    /// A llama.cpp slot of our own until the guard drops.
    async fn slot(&self, engine: &OpenAiEngine) -> Result<SlotGuard> {
        let pool = self
            .slots
            .get_or_try_init(|| async {
                let props: Value = engine
                    .http
                    .get(format!("{}/props", engine.base))
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| Error::Engine(format!("GET /props: {e}")))?
                    .json()
                    .await
                    .map_err(|e| Error::Engine(format!("GET /props: {e}")))?;
                let n = props.get("total_slots").and_then(Value::as_u64).unwrap_or(1);
                Ok::<_, Error>(SlotPool::new(u32::try_from(n).unwrap_or(1).max(1)))
            })
            .await?;
        pool.take().await
    }
}

/// The prefill's one chunk: its first token, finish and usage, and the handle.
fn prefill_chunk(
    request: &GenerateRequest,
    piece: Piece,
    first: Vec<u32>,
    engine_params: Value,
    bytes: u64,
) -> GenerateChunk {
    let finish = match piece.finish {
        Some(FinishReason::Stop) => FinishReason::Stop,
        _ => FinishReason::Length,
    };
    let mut usage = piece.usage.unwrap_or_default();
    if usage.prompt_tokens == 0 {
        usage.prompt_tokens = u32::try_from(request.token_ids.len()).unwrap_or(u32::MAX);
    }
    usage.completion_tokens = u32::try_from(first.len()).unwrap_or(0);
    let logprobs = piece.logprobs.into_iter().take(first.len()).collect();
    GenerateChunk {
        token_ids: first,
        logprobs,
        finish_reason: finish.into(),
        usage: Some(usage),
        kv_handle: Some(KvHandle {
            block_hashes: request.block_hashes.clone(),
            bytes,
            engine_params: engine_params.to_string(),
            tokens: u32::try_from(request.token_ids.len()).unwrap_or(u32::MAX),
            ..KvHandle::default()
        }),
        ..GenerateChunk::default()
    }
}

/// Adds `extra`'s fields to a request body.
pub(crate) fn merge(body: &mut Value, extra: Map<String, Value>) {
    if let Some(object) = body.as_object_mut() {
        object.extend(extra);
    }
}

/// A request id made safe as a file name (llama.cpp refuses paths).
fn sanitize(id: &str) -> String {
    id.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// llama.cpp's slots, each held by one hand-off at a time.
struct SlotPool {
    free: Arc<Mutex<Vec<u32>>>,
    permits: Arc<Semaphore>,
}

/// A slot held; returned to the pool on drop.
pub(crate) struct SlotGuard {
    id: u32,
    free: Arc<Mutex<Vec<u32>>>,
    _permit: OwnedSemaphorePermit,
}

impl SlotPool {
    fn new(n: u32) -> SlotPool {
        SlotPool {
            free: Arc::new(Mutex::new((0..n).rev().collect())),
            permits: Arc::new(Semaphore::new(n as usize)),
        }
    }

    async fn take(&self) -> Result<SlotGuard> {
        let permit = self.permits.clone().acquire_owned().await.map_err(|_| Error::ShuttingDown)?;
        let id = self
            .free
            .lock()
            .map_err(|_| Error::Engine("slot pool poisoned".into()))?
            .pop()
            .ok_or_else(|| Error::Engine("no free slot despite a permit".into()))?;
        Ok(SlotGuard { id, free: self.free.clone(), _permit: permit })
    }
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        if let Ok(mut free) = self.free.lock() {
            free.push(self.id);
        }
    }
}

/// Keeps `hold` alive as long as `stream`, and drops the first `skip` output tokens.
pub(crate) fn finish_stream(
    stream: EngineStream,
    hold: Option<SlotGuard>,
    skip: u32,
) -> EngineStream {
    let mut skip = skip as usize;
    Box::pin(stream.map(move |mut chunk| {
        let _held = &hold;
        if skip > 0 {
            let n = skip.min(chunk.token_ids.len());
            chunk.token_ids.drain(..n);
            let m = n.min(chunk.logprobs.len());
            chunk.logprobs.drain(..m);
            skip -= n;
        }
        chunk
    }))
}
