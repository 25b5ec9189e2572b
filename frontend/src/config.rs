//! The frontend's configuration: a plain struct the binary fills from its flags.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use switchyard_router::{DisaggConfig, PolicyConfig, PolicyKind};
use switchyard_runtime::events::EventSubscriber;

use crate::admission::AdmissionConfig;
use crate::auth::ApiKeys;
use crate::http_server::HttpLimits;
use crate::https::HttpTls;

/// Everything [`crate::serve`] needs besides its listener, discovery and request client.
#[derive(Clone)]
pub struct FrontendConfig {
    /// Which policy picks an instance among the live ones of a model.
    pub router_mode: PolicyKind,
    /// The policies' settings (the `kv` policy's cost knobs).
    pub policy: PolicyConfig,
    /// Where the workers' KV events and load reports come from; `None` routes on this
    /// frontend's own decisions alone.
    pub events: Option<Arc<dyn EventSubscriber>>,
    /// How long a routing decision stands in for the KV events of a worker that sends none.
    pub kv_decision_ttl: Duration,
    /// When a model with prefill instances has a request prefilled on its decode instance.
    pub disagg: DisaggConfig,
    /// Longest wait for a prefill instance's first token and KV handle; after it the decode
    /// instance prefills the request itself.
    pub prefill_timeout: Duration,
    /// Largest request body accepted; bigger ones get 413 before they are parsed.
    pub max_body_bytes: usize,
    /// Bound on a whole request, from the body read to the last streamed byte, so nothing
    /// waits forever on a stuck worker.
    pub request_timeout: Duration,
    /// Instances tried for one request when an instance cannot be reached or turns the request
    /// away (overloaded, shutting down) before its first token.
    pub max_attempts: usize,
    /// Times one response may move to another instance when its instance fails mid-way
    /// (0: it fails with the instance).
    pub migration_limit: u32,
    /// Longest silence between two chunks of a response before its instance is taken for
    /// stuck and the response moves on.
    pub stall_timeout: Duration,
    /// The HTTP server's connection cap and header timeout.
    pub http: HttpLimits,
    /// HTTPS: the server's certificate and key (`None`: plain HTTP).
    pub tls: Option<HttpTls>,
    /// Places per instance and the queue in front of them.
    pub admission: AdmissionConfig,
    /// API keys the frontend accepts (none: no key needed).
    pub api_keys: ApiKeys,
    /// `max_tokens` when a request gives none: the rest of the context, but at most this, so a
    /// request without a limit cannot hold a worker for a model's whole context.
    pub default_max_tokens: u32,
}

impl Default for FrontendConfig {
    fn default() -> Self {
        FrontendConfig {
            router_mode: PolicyKind::Kv,
            policy: PolicyConfig::default(),
            events: None,
            kv_decision_ttl: Duration::from_secs(120),
            disagg: DisaggConfig::default(),
            prefill_timeout: Duration::from_secs(30),
            max_body_bytes: 16 * 1024 * 1024,
            request_timeout: Duration::from_secs(600),
            max_attempts: 3,
            migration_limit: 3,
            stall_timeout: Duration::from_secs(30),
            api_keys: ApiKeys::default(),
            admission: AdmissionConfig::default(),
            http: HttpLimits::default(),
            tls: None,
            default_max_tokens: 8192,
        }
    }
}

impl fmt::Debug for FrontendConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FrontendConfig")
            .field("router_mode", &self.router_mode)
            .field("policy", &self.policy)
            .field("events", &self.events.as_ref().map(|_| "subscriber"))
            .field("kv_decision_ttl", &self.kv_decision_ttl)
            .field("disagg", &self.disagg)
            .field("prefill_timeout", &self.prefill_timeout)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("max_attempts", &self.max_attempts)
            .field("migration_limit", &self.migration_limit)
            .field("stall_timeout", &self.stall_timeout)
            .field("api_keys", &self.api_keys)
            .field("admission", &self.admission)
            .field("http", &self.http)
            .field("tls", &self.tls.is_some())
            .field("default_max_tokens", &self.default_max_tokens)
            .finish()
    }
}
