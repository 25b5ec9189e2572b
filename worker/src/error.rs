//! The worker crate's one error type.

use switchyard_proto::ErrorKind;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request cannot be served as given (e.g. longer than the context).
    #[error("{0}")]
    InvalidRequest(String),
    /// One request field cannot be served as given (e.g. a parameter this engine does not
    /// honour); the client is told which.
    #[error("{message}")]
    InvalidParam { param: String, message: String },
    /// The engine has no room now; the caller may retry elsewhere.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The worker is draining and takes no new requests.
    #[error("worker is shutting down")]
    ShuttingDown,
    /// The engine failed.
    #[error("engine error: {0}")]
    Engine(String),
    /// Configuration given at start-up is unusable.
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Runtime(#[from] switchyard_runtime::Error),
    #[error(transparent)]
    Model(#[from] switchyard_model::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl Error {
    /// The kind this error crosses the wire with.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidRequest(_) | Error::InvalidParam { .. } => ErrorKind::InvalidRequest,
            Error::Overloaded(_) => ErrorKind::Overloaded,
            Error::ShuttingDown => ErrorKind::ShuttingDown,
            Error::Engine(_) => ErrorKind::Engine,
            Error::Config(_) | Error::Runtime(_) | Error::Model(_) | Error::Io(_) => {
                ErrorKind::Internal
            }
        }
    }
}

impl Error {
    /// An [`Error::InvalidParam`] about `param`.
    pub fn param(param: impl Into<String>, message: impl Into<String>) -> Error {
        Error::InvalidParam { param: param.into(), message: message.into() }
    }

    /// The request field this error is about, if any.
    pub fn param_name(&self) -> Option<&str> {
        match self {
            Error::InvalidParam { param, .. } => Some(param),
            _ => None,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
