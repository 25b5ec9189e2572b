//! Switchyard's wire types, generated from `switchyard.proto` at build time.

#![allow(clippy::pedantic, missing_docs)]

tonic::include_proto!("switchyard.v1");

impl FinishReason {
    /// The name OpenAI uses in `finish_reason`, or `None` while the stream goes on.
    pub fn openai_name(self) -> Option<&'static str> {
        match self {
            FinishReason::Unspecified => None,
            FinishReason::Length => Some("length"),
            FinishReason::Stop => Some("stop"),
            // A response its worker gave up on did not end well: never "stop".
            FinishReason::Error | FinishReason::Cancelled => Some("error"),
        }
    }
}

impl Role {
    /// The role's name as flags and reports spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Aggregated => "aggregated",
            Role::Prefill => "prefill",
            Role::Decode => "decode",
        }
    }
}
