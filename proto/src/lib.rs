//! Switchyard's wire types, generated from `switchyard.proto` at build time.

#![allow(clippy::pedantic, missing_docs)]

tonic::include_proto!("switchyard.v1");

impl FinishReason {
    /// The name OpenAI uses in `finish_reason`, or `None` while the stream goes on.
    pub fn openai_name(self) -> Option<&'static str> {
        match self {
            FinishReason::Unspecified => None,
            FinishReason::Length => Some("length"),
            FinishReason::Stop | FinishReason::Cancelled => Some("stop"),
            FinishReason::Error => Some("error"),
        }
    }
}
