//! API keys: with keys configured, every API route wants `Authorization: Bearer KEY` (the
//! OpenAI SDKs send it) with one of them, else 401 in OpenAI's shape. The operational routes
//! (`/health`, `/live`, `/metrics`) stay open for probes and scrapers unless asked otherwise.
//!
//! Keys are compared in constant time, and every configured key is compared, so the time an
//! answer takes says nothing about how much of a key was right.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::error::Error;

/// The keys a frontend accepts.
#[derive(Clone, Default)]
pub struct ApiKeys {
    keys: Arc<[Vec<u8>]>,
    /// The operational routes want a key too.
    pub protect_ops: bool,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("ApiKeys")
            .field("keys", &self.keys.len())
            .field("protect_ops", &self.protect_ops)
            .finish()
    }
}

impl ApiKeys {
    /// Accepts any of `keys` (empty ones are dropped); none at all turns checking off.
    pub fn new(keys: impl IntoIterator<Item = String>, protect_ops: bool) -> ApiKeys {
        let keys: Vec<Vec<u8>> = keys
            .into_iter()
            .map(|k| k.trim().as_bytes().to_vec())
            .filter(|k| !k.is_empty())
            .collect();
        ApiKeys { keys: keys.into(), protect_ops }
    }

    /// Keys one per line; blank lines and lines starting with `#` are skipped.
    pub fn parse_file(text: &str) -> Vec<String> {
        text.lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect()
    }

    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether `headers` carry an accepted key.
    fn check(&self, headers: &HeaderMap) -> Result<(), Error> {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
            .map(<[u8]>::trim_ascii)
            .ok_or(Error::Unauthorized(
                "an API key is required: send it as `Authorization: Bearer KEY`",
            ))?;
        let mut accepted = subtle::Choice::from(0);
        for key in self.keys.iter() {
            accepted |= key.as_slice().ct_eq(given);
        }
        if bool::from(accepted) {
            Ok(())
        } else {
            Err(Error::Unauthorized("the API key is not valid"))
        }
    }
}

/// Paths open to everyone unless [`ApiKeys::protect_ops`].
fn is_ops(path: &str) -> bool {
    matches!(path, "/health" | "/live" | "/metrics")
}

/// The middleware: passes a request on when its key is accepted (or none is needed).
pub(crate) async fn require_key(
    State(keys): State<ApiKeys>,
    request: Request,
    next: Next,
) -> Response {
    if !keys.enabled() || (!keys.protect_ops && is_ops(request.uri().path())) {
        return next.run(request).await;
    }
    match keys.check(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn any_configured_key_is_accepted_and_nothing_else() {
        let keys = ApiKeys::new(["k1".to_owned(), " k2 ".to_owned(), String::new()], false);
        assert!(keys.check(&headers("Bearer k1")).is_ok());
        assert!(keys.check(&headers("Bearer k2")).is_ok());
        assert!(keys.check(&headers("Bearer k3")).is_err());
        assert!(keys.check(&headers("Bearer k")).is_err());
        assert!(keys.check(&headers("Bearer k12")).is_err());
        assert!(keys.check(&headers("Bearer ")).is_err(), "the empty key is never accepted");
        assert!(keys.check(&headers("k1")).is_err(), "the scheme is required");
        assert!(keys.check(&HeaderMap::new()).is_err());
    }

    #[test]
    fn a_key_file_skips_blank_lines_and_comments() {
        let text = "# keys\nalpha\n\n  beta  \n#gamma\n";
        assert_eq!(ApiKeys::parse_file(text), ["alpha", "beta"]);
    }
}
