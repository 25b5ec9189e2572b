//! Operational endpoints: `/health` (ready: can this frontend serve anything?), `/live`
//! (the process answers), `/v1/models`, and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;
use crate::handlers::AppState;
use crate::openai::response::{ModelList, ModelObject};
use crate::stream::json_response;

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    /// Live instances per model (all roles).
    instances: BTreeMap<&'a str, usize>,
}

/// 200 when at least one model has an instance that takes requests; else 503, so a load
/// balancer sends nothing to a frontend that could only answer 503s. `/live` stays 200.
pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Response {
    let table = state.registry.table();
    let ready = table.iter().any(|m| !m.instances.is_empty());
    let health = Health {
        status: if ready { "healthy" } else { "no_instances" },
        instances: table.iter().map(|m| (m.name.as_str(), m.live_instances)).collect(),
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    to_json(status, &health)
}

pub(crate) async fn live() -> Response {
    json_response(StatusCode::OK, br#"{"status":"live"}"#.to_vec())
}

/// The models with live instances, in OpenAI's list shape.
pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Response {
    let table = state.registry.table();
    let list = ModelList {
        object: "list",
        data: table
            .iter()
            .filter(|m| m.live_instances > 0)
            .map(|m| ModelObject {
                id: &m.name,
                object: "model",
                created: m.created,
                owned_by: "switchyard",
                root: m.preprocessor.source(),
                max_model_len: m.context_length,
            })
            .collect(),
    };
    to_json(StatusCode::OK, &list)
}

pub(crate) async fn metrics() -> Response {
    let mut response = crate::metrics::render().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn to_json<T: Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_response(status, body),
        Err(e) => Error::Internal(format!("serializing a response: {e}")).into_response(),
    }
}
