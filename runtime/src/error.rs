//! The runtime's one error type.

use std::time::Duration;

/// Errors from discovery stores and request planes.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The lease expired (or was revoked) before it was kept alive; its keys are gone.
    #[error("lease {0} expired or does not exist")]
    LeaseExpired(u64),
    /// The store could not be read or written.
    #[error("store error: {0}")]
    Store(String),
    /// A value in the store is not what it should be.
    #[error("malformed value under {key}: {reason}")]
    Malformed { key: String, reason: String },
    /// The peer could not be reached.
    #[error("cannot reach {address}: {reason}")]
    Connect { address: String, reason: String },
    /// The connection broke or the peer answered outside the protocol.
    #[error("transport error: {0}")]
    Transport(String),
    /// A wait ran past its limit.
    #[error("{what} timed out after {after:?}")]
    Timeout { what: &'static str, after: Duration },
    /// The response stream ended without its final chunk, or skipped a chunk.
    #[error("response stream broken: {0}")]
    StreamBroken(String),
    /// Configuration given at start-up is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
