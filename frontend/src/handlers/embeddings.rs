//! `POST /v1/embeddings`: each input tokenized here and sent, as an `embed` request, to an
//! instance whose engine serves embeddings (its card says so); a model whose engines do not
//! is a 400 naming it.

use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;
use switchyard_proto::GenerateRequest;
use switchyard_router::block_hashes;
use utoipa::ToSchema;

use super::{AppState, body_bytes, lookup};
use crate::error::Error;
use crate::openai::request::{Prompt, PromptItem, parse};
use crate::stream::json_response;

/// Inputs accepted in one request.
const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct EmbeddingsRequest {
    #[schema(required)]
    pub model: Option<String>,
    /// Text, token ids, or a list of either.
    #[schema(value_type = String, required)]
    pub input: Option<Prompt>,
    /// `float` (default) or `base64` (little-endian f32s).
    pub encoding_format: Option<String>,
    pub dimensions: Option<u32>,
}

#[utoipa::path(post, path = "/v1/embeddings", request_body = EmbeddingsRequest,
    responses((status = 200, description = "The inputs' embeddings"),
              (status = 400, description = "Invalid request, or a model without embeddings", body = crate::openapi::ErrorResponse),
              (status = 404, description = "Unknown model", body = crate::openapi::ErrorResponse)))]
pub(crate) async fn embeddings(
    State(state): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    match embed(&state, body).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn embed(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Response, Error> {
    let body = body_bytes(body, state.config.max_body_bytes)?;
    let request: EmbeddingsRequest = parse(&body)?;
    let base64 = match request.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(Error::invalid(
                "encoding_format",
                format!("encoding_format must be `float` or `base64`, got `{other}`"),
            ));
        }
    };
    if request.dimensions.is_some() {
        return Err(Error::invalid("dimensions", "`dimensions` is not supported"));
    }
    let inputs = match request.input {
        None => return Err(Error::invalid("input", "`input` is required")),
        Some(Prompt::Text(text)) => vec![PromptItem::Text(text)],
        Some(Prompt::Tokens(ids)) => vec![PromptItem::Tokens(ids)],
        Some(Prompt::Batch(items)) => items,
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(Error::invalid("input", format!("send 1 to {MAX_INPUTS} inputs")));
    }
    let entry = lookup(state, request.model.as_deref())?;
    if !entry.instances.iter().any(|i| i.record.card.as_ref().is_some_and(|c| c.embeddings)) {
        return Err(Error::NotOffered { model: entry.name.clone(), what: "embeddings" });
    }
    let preprocessor = entry.preprocessor.get().await?;
    let deadline = tokio::time::Instant::now() + state.config.request_timeout;
    let mut data = Vec::with_capacity(inputs.len());
    let mut prompt_tokens = 0usize;
    for (index, input) in inputs.into_iter().enumerate() {
        let token_ids = preprocessor.prompt_ids(input, "input")?;
        if token_ids.is_empty() {
            return Err(Error::invalid("input", "an input must not be empty"));
        }
        prompt_tokens += token_ids.len();
        let request = GenerateRequest {
            request_id: format!("embd-{:032x}", rand::random::<u128>()),
            model: entry.name.clone(),
            block_hashes: block_hashes(&token_ids, entry.kv_block_size),
            token_ids,
            embed: true,
            ..GenerateRequest::default()
        };
        let _place = state.admit(&entry).await?;
        let dispatch = state.dispatch(&entry, deadline);
        let dispatched = dispatch.send(&request).await?;
        if let Some(error) = &dispatched.first.error {
            return Err(Error::WorkerRejected { message: error.message.clone() });
        }
        let vector = dispatched.first.embedding;
        let embedding = if base64 { json!(encode_base64(&vector)) } else { json!(vector) };
        data.push(json!({"object": "embedding", "index": index, "embedding": embedding}));
    }
    let body = json!({
        "object": "list",
        "data": data,
        "model": entry.name,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    });
    Ok(json_response(StatusCode::OK, body.to_string().into_bytes()))
}

/// Standard base64 of the vector's little-endian f32 bytes (what OpenAI's clients decode).
fn encode_base64(vector: &[f32]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes: Vec<u8> = vector.iter().flat_map(|f| f.to_le_bytes()).collect();
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let b = [group[0], group.get(1).copied().unwrap_or(0), group.get(2).copied().unwrap_or(0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (i, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if i <= group.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_of_floats() {
        assert_eq!(encode_base64(&[1.0]), "AACAPw==");
        assert_eq!(encode_base64(&[]), "");
        assert_eq!(encode_base64(&[0.0, -2.5]), "AAAAAAAAIMA=");
    }
}
