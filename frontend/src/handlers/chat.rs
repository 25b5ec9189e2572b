//! `POST /v1/chat/completions`: parse, render the chat template, tokenize, then the shared
//! dispatch and response.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use bytes::Bytes;
use tokio::time::timeout_at;

use super::{AppState, Prepared, body_bytes, deadline, lookup, reject, respond};
use crate::error::Error;
use crate::metrics::{Endpoint, RequestTracker};
use crate::openai::params::validate;
use crate::openai::request::{ChatCompletionRequest, parse};
use crate::stream::ApiKind;

pub(crate) async fn chat_completions(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let mut tracker = RequestTracker::start(Endpoint::Chat);
    let deadline = deadline(&state, &tracker);
    let prepared = match timeout_at(deadline, prepare(&state, body, &mut tracker)).await {
        Ok(Ok(prepared)) => prepared,
        Ok(Err(e)) => return reject(e, tracker),
        Err(_) => {
            return reject(Error::Timeout { after: state.config.request_timeout }, tracker);
        }
    };
    respond(&state, prepared, tracker, deadline, ApiKind::Chat).await
}

async fn prepare(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
    tracker: &mut RequestTracker,
) -> Result<Prepared, Error> {
    let body = body_bytes(body, state.config.max_body_bytes)?;
    let mut request: ChatCompletionRequest = parse(&body)?;
    let params = validate(request.take_params()?, request.max_completion_tokens)?;
    let messages = request
        .messages
        .as_deref()
        .ok_or_else(|| Error::invalid("messages", "`messages` is required"))?;
    let entry = lookup(state, request.model.as_deref())?;
    tracker.set_model(entry.metrics.clone());
    let preprocessor = entry.preprocessor.get().await?;
    let prompt = preprocessor.render_chat(
        messages,
        request.tools.as_ref(),
        request.chat_template_kwargs.as_ref(),
    )?;
    let token_ids = preprocessor.encode(&prompt, false)?;
    if token_ids.is_empty() {
        return Err(Error::invalid("messages", "the rendered prompt is empty"));
    }
    Ok(Prepared { entry, preprocessor, token_ids, params, prompt_param: "messages" })
}
