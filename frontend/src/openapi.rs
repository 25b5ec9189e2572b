//! The OpenAPI document of the API, derived from the request types, served at
//! `/openapi.json` (built once, on first request).

use std::sync::OnceLock;

use axum::http::StatusCode;
use axum::response::Response;
use utoipa::{OpenApi, ToSchema};

use crate::handlers::{chat, completions, embeddings, responses};
use crate::health;
use crate::openai::request::{
    ChatCompletionRequest, CompletionRequest, NvextRequest, StreamOptions,
};
use crate::stream::json_response;

/// OpenAI's error body.
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct ErrorResponse {
    error: ErrorDetail,
}

#[derive(ToSchema)]
#[allow(dead_code)]
struct ErrorDetail {
    message: String,
    #[schema(rename = "type")]
    kind: String,
    param: Option<String>,
    code: Option<String>,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Switchyard", description = "OpenAI-compatible API of a Switchyard frontend"),
    paths(
        chat::chat_completions,
        completions::completions,
        responses::responses,
        embeddings::embeddings,
        health::models,
        health::model,
    ),
    components(schemas(
        ChatCompletionRequest,
        CompletionRequest,
        responses::ResponsesRequest,
        embeddings::EmbeddingsRequest,
        StreamOptions,
        NvextRequest,
        ErrorResponse,
    ))
)]
struct ApiDoc;

/// `GET /openapi.json`.
pub(crate) async fn openapi_json() -> Response {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    let body = DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default().into_bytes());
    json_response(StatusCode::OK, body.clone())
}
