//! Errors of model resolution, each naming the file or place involved.

use std::path::{Path, PathBuf};

/// Why a model could not be resolved or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The source is neither a builtin, an existing directory, nor a repo in the local HF cache.
    #[error(
        "model `{requested}` not found (looked in: {}); give a local model directory, an HF repo id present in the local cache, or builtin:tiny",
        display_paths(.looked_in)
    )]
    NotFound {
        /// The source as given.
        requested: String,
        /// The places searched.
        looked_in: Vec<PathBuf>,
    },
    /// `builtin:<name>` with a name that is not embedded.
    #[error("unknown builtin model `{name}` (known: {known})")]
    UnknownBuiltin {
        /// The name after `builtin:`.
        name: String,
        /// The embedded names, comma-separated.
        known: String,
    },
    /// The source path exists but is not a directory.
    #[error("model source {path} is not a directory")]
    NotADirectory {
        /// The path given.
        path: PathBuf,
    },
    /// A required file (`tokenizer.json`) is missing from the model directory.
    #[error("required model file {path} is missing")]
    MissingFile {
        /// The full path expected.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {error}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        error: std::io::Error,
    },
    /// A JSON file is malformed or a field has the wrong type.
    #[error("{file}: {reason}")]
    Json {
        /// The file (for builtin models, `builtin:<name>/<file>`).
        file: PathBuf,
        /// What is wrong, naming the field where there is one.
        reason: String,
    },
}

impl Error {
    pub(crate) fn io(path: &Path, error: std::io::Error) -> Self {
        Error::Io { path: path.to_path_buf(), error }
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nowhere".to_string();
    }
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}
