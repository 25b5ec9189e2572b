//! The router crate's one error type.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown router mode {name:?}; known modes: {known}")]
    UnknownPolicy { name: String, known: String },
}
