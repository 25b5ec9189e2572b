//! The crate's one error type: what can stop a benchmark before or after it runs. Failures of
//! single requests are not errors here: they are measured and counted by kind
//! ([`crate::record::FailureKind`]).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag value or a combination of flags that cannot work.
    #[error("{0}")]
    Config(String),

    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A dataset file is not in the expected shape.
    #[error("{path}: {message}")]
    Dataset { path: PathBuf, message: String },

    /// The tokenizer could not be loaded or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// A result file (JSONL) line could not be read.
    #[error("{path}:{line}: {message}")]
    ResultLine { path: PathBuf, line: usize, message: String },

    /// The server could not be asked something the benchmark needs before it starts (e.g. the
    /// model name from `/v1/models`).
    #[error("{0}")]
    Server(String),

    /// Every warmup request failed, so the measured run would measure nothing.
    #[error("warmup failed: every warmup request failed; the first: {0}")]
    Warmup(String),

    /// Drawing the HTML report failed.
    #[error("report: {0}")]
    Report(String),

    /// The run was stopped (Ctrl-C) before it finished.
    #[error("stopped before the benchmark finished")]
    Cancelled,

    /// The client thread could not be started or died.
    #[error("benchmark client: {0}")]
    Client(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { path: path.into(), source }
    }

    pub(crate) fn dataset(path: impl Into<PathBuf>, message: impl Into<String>) -> Error {
        Error::Dataset { path: path.into(), message: message.into() }
    }
}
