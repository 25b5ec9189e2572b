//! The router crate's one error type.

use crate::kv_index::InstanceId;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown router mode {name:?}; known modes: {known}")]
    UnknownPolicy { name: String, known: String },
    /// A handle from before its instance was removed, or from another index.
    #[error("unknown instance {id} in the KV index")]
    UnknownInstance { id: InstanceId },
    #[error("invalid router setting {setting}: {reason}")]
    InvalidConfig { setting: &'static str, reason: String },
}
