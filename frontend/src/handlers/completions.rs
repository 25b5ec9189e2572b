//! `POST /v1/completions`: parse, tokenize the prompt (or take its token ids), then the shared
//! dispatch and response.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use bytes::Bytes;
use tokio::time::timeout_at;

use super::{AppState, Prepared, body_bytes, deadline, lookup, reject, respond};
use crate::chat_output::ChatOutput;
use crate::error::Error;
use crate::metrics::{Endpoint, RequestTracker};
use crate::openai::params::{RequestParams, validate};
use crate::openai::request::{CompletionRequest, Prompt, PromptItem, parse};
use crate::stream::ApiKind;

#[utoipa::path(post, path = "/v1/completions", request_body = CompletionRequest,
    responses((status = 200, description = "A completion, or its stream of chunks"),
              (status = 400, description = "Invalid request", body = crate::openapi::ErrorResponse),
              (status = 404, description = "Unknown model", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut tracker = RequestTracker::start(Endpoint::Completions);
    let deadline = deadline(&state, &tracker);
    let prepared = match timeout_at(deadline, prepare(&state, body, &mut tracker)).await {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(e)) => return reject(e, tracker),
        Err(_) => {
            return reject(Error::Timeout { after: state.config.request_timeout }, tracker);
        }
    };
    respond(&state, prepared, tracker, deadline, ApiKind::Completion).await
}

async fn prepare(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    tracker: &mut RequestTracker,
) -> Result<Prepared, Error> {
    let body = body_bytes(body, state.config.max_body_bytes)?;
    let (request, params, prompt) = parse_completion(&body)?;
    let entry = lookup(state, request.model.as_deref())?;
    tracker.set_model(entry.metrics.clone());
    let preprocessor = entry.preprocessor.get().await?;
    let token_ids = preprocessor.prompt_ids(prompt, "prompt")?;
    if token_ids.is_empty() {
        return Err(Error::invalid("prompt", "the prompt must not be empty"));
    }
    Ok(Prepared {
        entry,
        preprocessor,
        token_ids,
        params,
        prompt_param: "prompt",
        output: ChatOutput::default(),
        nvext: request.nvext.is_some_and(|n| n.timing),
    })
}

/// The body of a completion request, parsed, its parameters checked, and its one prompt.
pub(crate) fn parse_completion(
    body: &[u8],
) -> Result<(CompletionRequest, RequestParams, PromptItem), Error> {
    let mut request: CompletionRequest = parse(body)?;
    let params = validate(request.take_params(), None)?;
    let prompt = single_prompt(request.prompt.take())?;
    Ok((request, params, prompt))
}

/// The one prompt of the request; a list of several is refused (one request per prompt).
fn single_prompt(prompt: Option<Prompt>) -> Result<PromptItem, Error> {
    match prompt {
        None => Err(Error::invalid("prompt", "`prompt` is required")),
        Some(Prompt::Text(text)) => Ok(PromptItem::Text(text)),
        Some(Prompt::Tokens(ids)) => Ok(PromptItem::Tokens(ids)),
        Some(Prompt::Batch(mut items)) if items.len() == 1 => {
            items.pop().ok_or_else(|| Error::invalid("prompt", "`prompt` is required"))
        }
        Some(Prompt::Batch(items)) => Err(Error::invalid(
            "prompt",
            format!(
                "a list of {} prompts is not supported; send one request per prompt",
                items.len()
            ),
        )),
    }
}
