//! The frontend's configuration: a plain struct the binary fills from its flags.

use std::time::Duration;

use switchyard_router::PolicyKind;

/// Everything [`crate::serve`] needs besides its listener, discovery and request client.
#[derive(Debug, Clone)]
pub struct FrontendConfig {
    /// Which policy picks an instance among the live ones of a model.
    pub router_mode: PolicyKind,
    /// Largest request body accepted; bigger ones get 413 before they are parsed.
    pub max_body_bytes: usize,
    /// Bound on a whole request, from the body read to the last streamed byte, so nothing
    /// waits forever on a stuck worker.
    pub request_timeout: Duration,
    /// Instances tried for one request when an instance cannot be reached or turns the request
    /// away (overloaded, shutting down) before its first token.
    pub max_attempts: usize,
    /// `max_tokens` when a request gives none: the rest of the context, but at most this, so a
    /// request without a limit cannot hold a worker for a model's whole context.
    pub default_max_tokens: u32,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            router_mode: PolicyKind::RoundRobin,
            max_body_bytes: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(600),
            max_attempts: 3,
            default_max_tokens: 8192,
        }
    }
}
