//! Operational endpoints: `/health` (ready: can this frontend serve anything?), `/live`
//! (the process answers), `/v1/models`, and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::error::Error;
use crate::handlers::AppState;
use crate::models::ModelEntry;
use crate::openai::response::{ModelList, ModelObject};
use crate::stream::json_response;

#[derive(Serialize)]
struct Health<'a> {
    status: &'static str,
    /// Registered instances per model (all roles).
    instances: BTreeMap<&'a str, usize>,
    /// Every registered instance and what this frontend thinks of it: requests skip the
    /// suspect and draining ones.
    workers: Vec<WorkerHealth<'a>>,
}

#[derive(Serialize)]
struct WorkerHealth<'a> {
    model: &'a str,
    instance_id: &'a str,
    address: &'a str,
    role: &'static str,
    /// `serving`, `suspect` (failed lately, skipped for a back-off) or `draining`.
    state: &'static str,
}

/// 200 when at least one model has an instance that takes requests; else 503, so a load
/// balancer sends nothing to a frontend that could only answer 503s. `/live` stays 200.
pub(crate) async fn health(State(state): State<Arc<AppState>>) -> Response {
    let table = state.registry.table();
    let ready = table.iter().any(|m| !m.instances.is_empty());
    let mut workers = Vec::new();
    for model in table.iter() {
        for instance in model.all_instances() {
            let record = &instance.record;
            workers.push(WorkerHealth {
                model: &model.name,
                instance_id: &record.instance_id,
                address: &record.address,
                role: record.role().name(),
                state: state.breakers.state(&record.instance_id).name(),
            });
        }
    }
    let health = Health {
        status: if ready { "healthy" } else { "no_instances" },
        instances: table.iter().map(|m| (m.name.as_str(), m.live_instances)).collect(),
        workers,
    };
    let status = if ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    to_json(status, &health)
}

pub(crate) async fn live() -> Response {
    json_response(StatusCode::OK, br#"{"status":"live"}"#.to_vec())
}

#[utoipa::path(get, path = "/v1/models", responses((status = 200, description = "The models served now")))]
/// The models served now (live instances, files loaded or loading), in OpenAI's list shape.
pub(crate) async fn models(State(state): State<Arc<AppState>>) -> Response {
    let table = state.registry.table();
    let list = ModelList {
        object: "list",
        data: table.iter().filter(|m| is_served(m)).map(|m| model_object(m)).collect(),
    };
    to_json(StatusCode::OK, &list)
}

#[utoipa::path(get, path = "/v1/models/{id}", params(("id" = String, Path, description = "Model name")),
    responses((status = 200, description = "The model"),
              (status = 404, description = "Unknown model", body = crate::openapi::ErrorResponse)))]
/// `GET /v1/models/{id}`: one served model, or 404.
pub(crate) async fn model(State(state): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    let table = state.registry.table();
    match table.get(&id).filter(|m| is_served(m)) {
        Some(entry) => to_json(StatusCode::OK, &model_object(entry)),
        None => Error::ModelNotFound { model: id }.into_response(),
    }
}

/// A model is listed while it has live instances and its files did not fail to load (a
/// template that does not compile keeps it out).
fn is_served(entry: &ModelEntry) -> bool {
    entry.live_instances > 0 && entry.preprocessor.failure().is_none()
}

fn model_object(entry: &ModelEntry) -> ModelObject<'_> {
    ModelObject {
        id: &entry.name,
        object: "model",
        created: entry.created,
        owned_by: "switchyard",
        root: entry.preprocessor.source(),
        max_model_len: entry.context_length,
    }
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
