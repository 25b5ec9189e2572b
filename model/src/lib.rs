//! Model directories: where a model's tokenizer, chat template and config come from.
//!
//! A source is `builtin:<name>` (a small model embedded in the binary, so everything runs
//! offline), a local directory, or a Hugging Face repo id found in the local HF cache
//! (`$HF_HOME/hub/models--ORG--NAME/snapshots/*/`; nothing is downloaded).

#[derive(Debug, thiserror::Error)]
pub enum Error {}
