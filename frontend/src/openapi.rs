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

/// A chat message (the request keeps the client's object whole; this documents its usual
/// shape).
#[derive(ToSchema)]
#[allow(dead_code)]
pub(crate) struct MessageDoc {
    role: RoleDoc,
    /// Text, or a list of `{"type": "text", "text": …}` parts.
    content: Option<String>,
    name: Option<String>,
    tool_call_id: Option<String>,
}

#[derive(ToSchema)]
#[allow(dead_code)]
#[schema(rename_all = "lowercase")]
enum RoleDoc {
    System,
    User,
    Assistant,
    Tool,
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
        MessageDoc,
    ))
)]
struct ApiDoc;

/// `GET /openapi.json`.
pub(crate) async fn openapi_json() -> Response {
    static DOC: OnceLock<Vec<u8>> = OnceLock::new();
    let body = DOC.get_or_init(|| ApiDoc::openapi().to_json().unwrap_or_default().into_bytes());
    json_response(StatusCode::OK, body.clone())
}
