//! HTTP handlers. The two generation endpoints share everything after their own parsing and
//! preprocessing: model lookup, dispatch to a worker, and the response.

pub(crate) mod chat;
pub(crate) mod completions;
pub(crate) mod embeddings;
pub(crate) mod responses;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::http::{Method, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use switchyard_proto::{GenerateRequest, SamplingParams};
use switchyard_router::{Policy, block_hashes};
use switchyard_runtime::RequestClient;
use tokio::time::Instant;

use crate::admission::{Permit, Queue};
use crate::breaker::Breakers;
use crate::chat_output::ChatOutput;
use crate::config::FrontendConfig;
use crate::error::Error;
use crate::generation::{Generation, GenerationSetup, Step};
use crate::kv_router::KvRouter;
use crate::logprobs::LogprobsOut;
use crate::metrics::RequestTracker;
use crate::migration::Migration;
use crate::models::{ModelEntry, ModelRegistry};
use crate::openai::params::{RequestParams, resolve_max_tokens};
use crate::openai::response::ResponseMeta;
use crate::preprocess::Preprocessor;
use crate::routing::Dispatch;
use crate::stream::{ApiKind, Shaping, collect_response, sse_response};

/// What every handler shares.
pub(crate) struct AppState {
    pub config: FrontendConfig,
    pub registry: ModelRegistry,
    pub client: Arc<dyn RequestClient>,
    pub policy: Arc<dyn Policy>,
    pub kv: Arc<KvRouter>,
    pub breakers: Arc<Breakers>,
    /// Admission control's queue.
    pub queue: Queue,
}

impl AppState {
    /// A place for one request to `entry`: at once, after a wait, or 429.
    pub(crate) async fn admit(&self, entry: &ModelEntry) -> Result<Permit, Error> {
        entry.gate.admit(entry.instances.len(), &self.config.admission, &self.queue).await
    }

    /// How a request for `entry` is sent, under this frontend's settings.
    pub(crate) fn dispatch(&self, entry: &Arc<ModelEntry>, deadline: Instant) -> Dispatch {
        Dispatch {
            model: entry.clone(),
            policy: self.policy.clone(),
            kv: self.kv.clone(),
            client: self.client.clone(),
            max_attempts: self.config.max_attempts,
            deadline,
            timeout: self.config.request_timeout,
            prefill_timeout: self.config.prefill_timeout,
            breakers: self.breakers.clone(),
            remote_prefill: true,
            registry: self.registry.clone(),
        }
    }
}

/// A request ready for a worker.
pub(crate) struct Prepared {
    pub entry: Arc<ModelEntry>,
    pub preprocessor: Arc<Preprocessor>,
    pub token_ids: Vec<u32>,
    pub params: RequestParams,
    /// The field holding the prompt, for errors about its length.
    pub prompt_param: &'static str,
    /// How the output text becomes the response's fields (chat: the model's parsers).
    pub output: ChatOutput,
    /// The client asked for the timing extension.
    pub nvext: bool,
}

/// The body's bytes; a body over the limit is a 413.
pub(crate) fn body_bytes(
    body: Result<Bytes, BytesRejection>,
    limit: usize,
) -> Result<Bytes, Error> {
    body.map_err(|rejection| match rejection {
        BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
            Error::BodyTooLarge { limit }
        }
        other => Error::InvalidRequest {
            message: format!("cannot read the request body: {other}"),
            param: None,
        },
    })
}

/// The model a request names: 404 when discovery never had it, 503 when it has no instance
/// that can take the request now.
pub(crate) fn lookup(state: &AppState, model: Option<&str>) -> Result<Arc<ModelEntry>, Error> {
    let model = model.ok_or_else(|| Error::invalid("model", "`model` is required"))?;
    let table = state.registry.table();
    let entry = table.get(model).ok_or_else(|| Error::ModelNotFound { model: model.to_owned() })?;
    if entry.instances.is_empty() {
        return Err(Error::NoInstance { model: model.to_owned() });
    }
    Ok(entry.clone())
}

/// Answers a request that failed before reaching a worker, recording it.
pub(crate) fn reject(error: Error, mut tracker: RequestTracker) -> Response {
    tracker.finish(error.status().as_u16());
    error.into_response()
}

/// The request's deadline.
pub(crate) fn deadline(state: &AppState, tracker: &RequestTracker) -> Instant {
    Instant::from_std(tracker.started_at()) + state.config.request_timeout
}

/// A request a worker accepted: its generation, and how to shape its response.
pub(crate) struct Launched {
    pub generation: Generation,
    pub shaping: Shaping,
    pub stream: bool,
}

/// Sends a prepared request to a worker and answers with its response, streamed or whole.
pub(crate) async fn respond(
    state: &AppState,
    prepared: Prepared,
    tracker: RequestTracker,
    deadline: Instant,
    kind: ApiKind,
) -> Response {
    let Launched { mut generation, shaping, stream } =
        match launch(state, prepared, tracker, deadline, kind).await {
            Ok(launched) => launched,
            Err(response) => return response,
        };
    if !stream {
        return collect_response(generation, shaping).await;
    }
    // The first step is awaited before answering, so a request that fails before any output
    // still gets a plain error status rather than a 200 stream holding an error.
    match generation.next_step().await {
        Some(Step::Failed(error)) => error.into_response(),
        Some(first) => sse_response(generation, first, shaping),
        None => Error::Internal("response ended before it began".into()).into_response(),
    }
}

/// Sends a prepared request to a worker; the error response when none takes it.
pub(crate) async fn launch(
    state: &AppState,
    prepared: Prepared,
    tracker: RequestTracker,
    deadline: Instant,
    kind: ApiKind,
) -> Result<Launched, Response> {
    let Prepared { entry, preprocessor, token_ids, params, prompt_param, output, nvext } = prepared;
    let prompt_tokens = token_ids.len();
    let max_tokens = match resolve_max_tokens(
        &params,
        prompt_tokens,
        entry.context_length.or(preprocessor.context_length()),
        state.config.default_max_tokens,
        prompt_param,
    ) {
        Ok(max) => max,
        Err(e) => return Err(reject(e, tracker)),
    };
    let meta = ResponseMeta { id: new_id(kind), model: entry.name.clone(), created: unix_now() };
    let request = GenerateRequest {
        request_id: meta.id.clone(),
        model: entry.name.clone(),
        block_hashes: block_hashes(&token_ids, entry.kv_block_size),
        token_ids,
        sampling: Some(SamplingParams {
            max_tokens,
            min_tokens: params.min_tokens.min(max_tokens),
            temperature: params.temperature,
            top_p: params.top_p,
            top_k: params.top_k,
            seed: params.seed,
            stop: params.stop.clone(),
            stop_token_ids: params.stop_token_ids,
            ignore_eos: params.ignore_eos,
            presence_penalty: params.presence_penalty,
            frequency_penalty: params.frequency_penalty,
            repetition_penalty: params.repetition_penalty,
            min_p: params.min_p,
            logit_bias: params.logit_bias,
            logprobs: params.logprobs,
            response_format: params.response_format,
        }),
        disaggregated: None,
        deadline_ms: 0,
        embed: false,
    };
    let place = match state.admit(&entry).await {
        Ok(place) => place,
        Err(e) => return Err(reject(e, tracker)),
    };
    let dispatch = state.dispatch(&entry, deadline);
    let dispatched_at = std::time::Instant::now();
    let dispatched = match dispatch.clone().send(&request).await {
        Ok(dispatched) => dispatched,
        Err(e) => return Err(reject(e, tracker)),
    };
    let migration = Migration::new(dispatch, request, state.config.migration_limit);
    tracker.prompt_sent(prompt_tokens);
    let setup = GenerationSetup {
        detokenizer: preprocessor.detokenizer(entry.parsers.special_tokens()),
        stop: params.stop,
        prompt_tokens: u32::try_from(prompt_tokens).unwrap_or(u32::MAX),
        deadline,
        timeout: state.config.request_timeout,
        dispatched_at,
        migration,
        stall_timeout: state.config.stall_timeout,
        breakers: state.breakers.clone(),
        place,
    };
    let generation = Generation::new(dispatched, setup, tracker);
    let logprobs = params.logprobs.map(|_| LogprobsOut::new(preprocessor.clone(), kind));
    let shaping =
        Shaping { meta, kind, include_usage: params.include_usage, nvext, output, logprobs };
    Ok(Launched { generation, shaping, stream: params.stream })
}

fn new_id(kind: ApiKind) -> String {
    let prefix = match kind {
        ApiKind::Chat => "chatcmpl",
        ApiKind::Completion => "cmpl",
        ApiKind::Responses => "resp",
    };
    format!("{prefix}-{:032x}", rand::random::<u128>())
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Any path without a route: 404 in OpenAI's shape.
pub(crate) async fn not_found(method: Method, uri: Uri) -> Response {
    Error::RouteNotFound { method: method.to_string(), path: uri.path().to_owned() }.into_response()
}

/// A known path with the wrong method: 405 in OpenAI's shape.
pub(crate) async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    Error::MethodNotAllowed { method: method.to_string(), path: uri.path().to_owned() }
        .into_response()
}
