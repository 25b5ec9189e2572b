//! Carrying a response on after its instance failed mid-way. The frontend keeps the request
//! as first sent and the tokens received since; when a stream breaks, stalls, or its worker
//! gives up on it (shutting down, drain timeout), the request goes to another instance with
//! those tokens as already generated (as a decode instance continues after a prefill). The
//! client's stream carries on from the next token: nothing repeated, nothing missing.

use std::sync::Arc;

use switchyard_proto::{DisaggregatedParams, GenerateRequest};

use crate::error::Error;
use crate::metrics::MIGRATIONS_TOTAL;
use crate::routing::{Dispatch, Dispatched};

/// What a response needs to move to another instance.
pub(crate) struct Migration {
    dispatch: Dispatch,
    /// The request as first sent (its prompt, its whole budget).
    request: GenerateRequest,
    /// Tokens the client has been given (or will be) since.
    generated: Vec<u32>,
    /// Moves left.
    left: u32,
    /// Instances that failed this request.
    failed: Vec<Arc<str>>,
}

impl Migration {
    /// `None` with a limit of 0: the response ends with its instance.
    pub fn new(dispatch: Dispatch, request: GenerateRequest, limit: u32) -> Option<Migration> {
        (limit > 0 && !request.embed).then(|| Migration {
            dispatch,
            request: GenerateRequest { disaggregated: None, ..request },
            generated: Vec::new(),
            left: limit,
            failed: Vec::new(),
        })
    }

    /// Notes tokens handed towards the client.
    pub fn record(&mut self, tokens: &[u32]) {
        self.generated.extend_from_slice(tokens);
    }

    /// Sends the rest of the request to another instance than `failed` (and those that failed
    /// it before); `None` when no move is left or nothing is left to generate.
    pub async fn resume(
        &mut self,
        failed: Arc<str>,
        cause: &'static str,
    ) -> Option<Result<Dispatched, Error>> {
        if self.left == 0 {
            return None;
        }
        let max_tokens = self.request.sampling.as_ref().map_or(0, |s| s.max_tokens);
        let done = u32::try_from(self.generated.len()).unwrap_or(u32::MAX);
        if done >= max_tokens {
            return None;
        }
        self.left -= 1;
        self.failed.push(failed);
        tracing::info!(
            request_id = %self.request.request_id,
            from = %self.failed.last().map_or("", |f| f.as_ref()),
            cause,
            generated = done,
            "moving the response to another instance"
        );
        // The continuation a decode instance gets after a prefill, without a KV handle: the
        // instance computes prompt and output so far itself and generates on from there, with
        // the same request id (the same seed) and the whole budget, so its usage counts the
        // whole output.
        let mut request = self.request.clone();
        request.disaggregated = Some(DisaggregatedParams {
            prefill_only: false,
            kv_handle: None,
            generated_token_ids: self.generated.clone(),
        });
        let dispatch = Dispatch { remote_prefill: false, ..self.dispatch.clone() }.refreshed();
        let sent = dispatch.send_patiently(&request, self.failed.clone()).await;
        if sent.is_ok() {
            metrics::counter!(MIGRATIONS_TOTAL, "cause" => cause).increment(1);
        }
        Some(sent)
    }
}
