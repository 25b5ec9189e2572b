//! The frontend's one error type, and the one place that turns it into OpenAI's error JSON
//! (`{"error":{"message","type","param","code"}}`) with its HTTP status, for plain responses
//! and for the error event of a stream alike. 5xx details are logged, never sent.

use std::borrow::Cow;
use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Everything that can go wrong in the frontend.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or asks for something out of range.
    #[error("{message}")]
    InvalidRequest { message: String, param: Option<String> },
    /// The body is over [`crate::FrontendConfig::max_body_bytes`].
    #[error("the request body is larger than the limit of {limit} bytes")]
    BodyTooLarge { limit: usize },
    /// No live or past instance in discovery serves this model name.
    #[error("the model `{model}` does not exist")]
    ModelNotFound { model: String },
    /// The model is known but has no instance that can take requests right now.
    #[error("no live instance serves the model `{model}`; retry later")]
    NoInstance { model: String },
    /// Every instance tried was unreachable or turned the request away.
    #[error(
        "no instance of the model `{model}` could take the request ({tried} tried); retry later"
    )]
    Unavailable { model: String, tried: usize },
    /// The request carries no API key, or one the frontend does not accept.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// The model's instances are busy and the frontend's queue is full or was waited in too
    /// long: retry after `retry_after` seconds.
    #[error("the model's instances are busy ({why}); retry after {retry_after}s")]
    Overloaded { why: &'static str, retry_after: u64 },
    /// No route for this path.
    #[error("invalid URL ({method} {path})")]
    RouteNotFound { method: String, path: String },
    /// The path exists, the method does not.
    #[error("method {method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    /// The request ran past [`crate::FrontendConfig::request_timeout`].
    #[error("the request timed out after {}s", after.as_secs_f32())]
    Timeout { after: Duration },
    /// The worker refused the request as given (e.g. a prompt its engine cannot take).
    #[error("{message}")]
    WorkerRejected { message: String },
    /// The model exists but its engines do not offer this endpoint (e.g. embeddings).
    #[error("the model `{model}` does not serve {what}")]
    NotOffered { model: String, what: &'static str },
    /// The worker or the request plane failed while serving the request.
    #[error("worker failure: {0}")]
    Worker(String),
    /// A model's tokenizer or chat template could not be loaded: the model is not served.
    #[error("the model is not served: cannot load the model files of `{source_name}`: {reason}")]
    ModelLoad { source_name: String, reason: String },
    /// Discovery could not be followed at start-up.
    #[error("discovery: {0}")]
    Discovery(#[source] switchyard_runtime::Error),
    /// The event plane could not be subscribed to at start-up.
    #[error("event plane: {0}")]
    Events(#[source] switchyard_runtime::Error),
    /// Settings that cannot be used (found at start-up).
    #[error("{0}")]
    Config(String),
    /// The listener failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A bug or an unexpected state; the detail goes to the log only.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A 400 naming the offending field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Error {
        Error::InvalidRequest { message: message.into(), param: Some(param.into()) }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::InvalidRequest { .. }
            | Error::WorkerRejected { .. }
            | Error::NotOffered { .. } => StatusCode::BAD_REQUEST,
            Error::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Overloaded { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::ModelNotFound { .. } | Error::RouteNotFound { .. } => StatusCode::NOT_FOUND,
            Error::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Error::NoInstance { .. } | Error::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Timeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Error::Worker(_) => StatusCode::BAD_GATEWAY,
            // The model is not served until its files load; the reason is the operator's.
            Error::ModelLoad { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Discovery(_)
            | Error::Events(_)
            | Error::Config(_)
            | Error::Io(_)
            | Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `type` and `code` for this error.
    fn kind(&self) -> (&'static str, Option<&'static str>) {
        match self {
            Error::InvalidRequest { .. } => ("invalid_request_error", None),
            Error::WorkerRejected { .. } => ("invalid_request_error", Some("rejected_by_worker")),
            Error::NotOffered { .. } => ("invalid_request_error", Some("not_offered_by_model")),
            Error::BodyTooLarge { .. } => ("invalid_request_error", Some("request_too_large")),
            Error::Unauthorized(_) => ("invalid_request_error", Some("invalid_api_key")),
            Error::Overloaded { .. } => ("rate_limit_error", Some("overloaded")),
            Error::ModelNotFound { .. } => ("invalid_request_error", Some("model_not_found")),
            Error::RouteNotFound { .. } => ("invalid_request_error", Some("not_found")),
            Error::MethodNotAllowed { .. } => ("invalid_request_error", Some("method_not_allowed")),
            Error::NoInstance { .. } => ("server_error", Some("no_instance")),
            Error::Unavailable { .. } => ("server_error", Some("overloaded")),
            Error::Timeout { .. } => ("server_error", Some("timeout")),
            Error::Worker(_) => ("server_error", Some("worker_error")),
            Error::ModelLoad { .. } => ("server_error", Some("model_not_served")),
            Error::Discovery(_)
            | Error::Events(_)
            | Error::Config(_)
            | Error::Io(_)
            | Error::Internal(_) => ("server_error", Some("internal_error")),
        }
    }

    /// What the client is told: the full message for 4xx and for 5xx that reveal nothing
    /// internal; a generic line for the rest.
    fn public_message(&self) -> Cow<'_, str> {
        match self {
            Error::Worker(_) => Cow::Borrowed("the worker failed while serving the request"),
            Error::Discovery(_)
            | Error::Events(_)
            | Error::Config(_)
            | Error::Io(_)
            | Error::Internal(_) => Cow::Borrowed("internal server error"),
            other => Cow::Owned(other.to_string()),
        }
    }

    /// Logs what is hidden from the client; the one place 5xx details are recorded.
    fn log(&self) {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request rejected");
        }
    }

    /// Appends the OpenAI error JSON to `out` (also the `data:` of a stream's error event),
    /// logging what it hides.
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) {
        self.log();
        let (kind, code) = self.kind();
        let param = match self {
            Error::InvalidRequest { param, .. } => param.as_deref(),
            _ => None,
        };
        let message = self.public_message();
        let body = ErrorBody { error: ErrorDetail { message: &message, kind, param, code } };
        if serde_json::to_writer(&mut *out, &body).is_err() {
            // Unreachable: the body holds only strings; keep the output valid JSON anyway.
            out.extend_from_slice(br#"{"error":{"message":"internal server error","type":"server_error","param":null,"code":null}}"#);
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let mut body = Vec::with_capacity(160);
        self.write_json(&mut body);
        let mut response = (self.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Error::Overloaded { retry_after, .. } = self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(error: &Error) -> serde_json::Value {
        let mut out = Vec::new();
        error.write_json(&mut out);
        serde_json::from_slice(&out).expect("valid JSON")
    }

    #[test]
    fn client_errors_name_the_field() {
        let error = Error::invalid("temperature", "temperature must be in [0, 2]");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        let body = json(&error);
        assert_eq!(body["error"]["param"], "temperature");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["message"], "temperature must be in [0, 2]");
        assert!(body["error"]["code"].is_null());
    }

    #[test]
    fn server_errors_hide_their_detail() {
        let error = Error::Internal("tokenizer state at 0xdeadbeef".into());
        assert_eq!(error.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = json(&error);
        assert_eq!(body["error"]["message"], "internal server error");
        assert_eq!(body["error"]["type"], "server_error");
        let worker = json(&Error::Worker("10.0.0.7:9000 reset".into()));
        assert!(!worker["error"]["message"].as_str().unwrap_or("").contains("10.0.0.7"));
    }

    #[test]
    fn unknown_model_is_404_with_code() {
        let body = json(&Error::ModelNotFound { model: "gpt-9".into() });
        assert_eq!(body["error"]["code"], "model_not_found");
        assert!(body["error"]["message"].as_str().unwrap_or("").contains("gpt-9"));
    }
}
