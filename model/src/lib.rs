//! Model directories: where a model's tokenizer, chat template and config come from.
//!
//! A source is `builtin:<name>` (a small model embedded in the binary, so everything runs
//! offline), a local directory, or a Hugging Face repo id found in the local HF cache
//! (`$HF_HOME/hub/models--ORG--NAME/snapshots/*/`; nothing is ever downloaded).
//!
//! ```
//! let files = switchyard_model::ModelFiles::resolve(switchyard_model::DEFAULT_SOURCE).unwrap();
//! assert_eq!(files.context_length(), Some(2048));
//! assert!(files.tokenizer_config.chat_template.is_some());
//! ```

mod builtin;
mod error;
mod hub;
mod parse;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::Error;
pub use hub::hf_hub_dir;

/// The source of the embedded default model.
pub const DEFAULT_SOURCE: &str = "builtin:tiny";

/// The name the default model is served as unless the user names it otherwise.
pub const DEFAULT_MODEL_NAME: &str = "switchyard-tiny";

/// Prefix of sources that name an embedded model.
pub const BUILTIN_PREFIX: &str = "builtin:";

/// Names of the embedded models (`builtin:<name>`).
pub const BUILTIN_NAMES: &[&str] = &[builtin::TINY_NAME];

/// `model_max_length` values at or above this are Hugging Face's "no limit" sentinels
/// (`int(1e30)` and friends), not real context lengths.
const MAX_LENGTH_SENTINEL: u64 = 1_000_000_000;

/// Files every consumer may need besides `tokenizer.json`; copied by [`ModelFiles::materialize`]
/// when present in a source directory.
const METADATA_FILES: &[&str] = &[
    parse::TOKENIZER_CONFIG,
    parse::CONFIG,
    parse::GENERATION_CONFIG,
    parse::CHAT_TEMPLATE_JINJA,
    parse::CHAT_TEMPLATE_JSON,
    "special_tokens_map.json",
];

/// A model's files, resolved from a source.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// What it was resolved from, as given (`builtin:tiny`, a path, or `ORG/NAME`).
    pub source: String,
    /// The directory holding the files; `None` for a builtin model (its files are embedded).
    pub dir: Option<PathBuf>,
    /// The bytes of `tokenizer.json`, shared so clones are cheap.
    pub tokenizer_json: Arc<[u8]>,
    /// What `tokenizer_config.json` (and a separate chat template file) says.
    pub tokenizer_config: TokenizerConfig,
    /// What `config.json` (and `generation_config.json`) says.
    pub config: ModelConfig,
}

/// The parts of `tokenizer_config.json` that serving needs.
#[derive(Debug, Clone, Default)]
pub struct TokenizerConfig {
    /// The Jinja chat template. A separate `chat_template.jinja` (or `chat_template.json`) in
    /// the directory wins, as in `transformers`; else `chat_template` from
    /// `tokenizer_config.json`: a string, or the `"default"` entry of a list of
    /// `{name, template}`. `None` when the model has none.
    pub chat_template: Option<String>,
    /// The BOS token's text (given as a string or an AddedToken object `{"content": ...}`).
    pub bos_token: Option<String>,
    /// The EOS token's text (string or AddedToken object).
    pub eos_token: Option<String>,
    /// `add_bos_token` as written (false when absent). Most `tokenizer.json` post-processors
    /// already add BOS themselves when the model wants it.
    pub add_bos_token: bool,
    /// `model_max_length`, or `None` when absent or one of HF's huge "no limit" sentinels.
    pub model_max_length: Option<u32>,
}

/// The parts of `config.json` (and `generation_config.json`) that serving needs. Fields are
/// also looked up in a nested `text_config`, where multimodal models keep them.
#[derive(Debug, Clone, Default)]
pub struct ModelConfig {
    /// `vocab_size`: the model's output dimension (may exceed the tokenizer's size).
    pub vocab_size: Option<u32>,
    /// `max_position_embeddings`: the context length the model was built for.
    pub max_position_embeddings: Option<u32>,
    /// Token ids that end generation: `eos_token_id` of `config.json` (a number or a list),
    /// then any more from `generation_config.json`, without duplicates, in that order.
    pub eos_token_ids: Vec<u32>,
    /// `bos_token_id` of `config.json`, else of `generation_config.json`.
    pub bos_token_id: Option<u32>,
}

impl ModelFiles {
    /// Resolves `builtin:<name>`, a local directory, or an HF repo id `ORG/NAME` found in the
    /// local cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `$XDG_CACHE_HOME/huggingface/hub`,
    /// else `~/.cache/huggingface/hub`; `models--ORG--NAME/snapshots/<rev>/`, picking the one
    /// `refs/main` names, else the newest). Never touches the network.
    pub fn resolve(source: &str) -> Result<ModelFiles, Error> {
        Self::resolve_with_hub(source, hf_hub_dir().as_deref())
    }

    /// [`ModelFiles::resolve`] with the HF hub cache directory given explicitly (`None`: no
    /// cache), so callers and tests need not read or set environment variables.
    pub fn resolve_with_hub(source: &str, hub_dir: Option<&Path>) -> Result<ModelFiles, Error> {
        if let Some(name) = source.strip_prefix(BUILTIN_PREFIX) {
            return builtin::load(source, name);
        }
        if source.trim().is_empty() {
            return Err(Error::NotFound { requested: source.to_string(), looked_in: Vec::new() });
        }
        let path = Path::new(source);
        if path.is_dir() {
            return Self::from_dir_with_source(source, path);
        }
        if path.exists() {
            return Err(Error::NotADirectory { path: path.to_path_buf() });
        }
        let mut looked_in = vec![path.to_path_buf()];
        if hub::looks_like_repo_id(source)
            && let Some(hub_dir) = hub_dir
        {
            match hub::snapshot_dir(hub_dir, source) {
                Ok(dir) => return Self::from_dir_with_source(source, &dir),
                Err(repo_dir) => looked_in.push(repo_dir),
            }
        }
        Err(Error::NotFound { requested: source.to_string(), looked_in })
    }

    /// Loads a model directory (which must hold `tokenizer.json`); `source` is set to the path.
    pub fn from_dir(dir: &Path) -> Result<ModelFiles, Error> {
        Self::from_dir_with_source(&dir.to_string_lossy(), dir)
    }

    fn from_dir_with_source(source: &str, dir: &Path) -> Result<ModelFiles, Error> {
        let tokenizer_path = dir.join(parse::TOKENIZER_JSON);
        let tokenizer_json: Arc<[u8]> = match std::fs::read(&tokenizer_path) {
            Ok(bytes) => bytes.into(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::MissingFile { path: tokenizer_path });
            }
            Err(e) => return Err(Error::io(&tokenizer_path, e)),
        };
        let read = |name: &str| -> Result<Option<(PathBuf, Vec<u8>)>, Error> {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(bytes) => Ok(Some((path, bytes))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(Error::io(&path, e)),
            }
        };
        let files = parse::RawFiles {
            tokenizer_config: read(parse::TOKENIZER_CONFIG)?,
            config: read(parse::CONFIG)?,
            generation_config: read(parse::GENERATION_CONFIG)?,
            chat_template_jinja: read(parse::CHAT_TEMPLATE_JINJA)?,
            chat_template_json: read(parse::CHAT_TEMPLATE_JSON)?,
        };
        let (tokenizer_config, config) = parse::parse(&files)?;
        Ok(ModelFiles {
            source: source.to_string(),
            dir: Some(dir.to_path_buf()),
            tokenizer_json,
            tokenizer_config,
            config,
        })
    }

    /// True when the files are embedded in the binary rather than read from a directory.
    pub fn is_builtin(&self) -> bool {
        self.dir.is_none()
    }

    /// Context length: `config.max_position_embeddings`, else
    /// `tokenizer_config.model_max_length` (ignoring HF's huge sentinel values), else `None`.
    pub fn context_length(&self) -> Option<u32> {
        self.config.max_position_embeddings.or(self
            .tokenizer_config
            .model_max_length
            .filter(|&n| u64::from(n) < MAX_LENGTH_SENTINEL))
    }

    /// Writes the model's files into `dir` (created if missing), so other processes or engines
    /// can load them: for a builtin model the embedded files; for a directory, `tokenizer.json`
    /// and whichever of the small metadata files (configs, chat template) it has — never the
    /// weights, which engines read from [`ModelFiles::dir`] directly. Each file is written to a
    /// temporary name and renamed, so a concurrent reader never sees half a file.
    pub fn materialize(&self, dir: &Path) -> Result<(), Error> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        match &self.dir {
            None => {
                let name = self.source.strip_prefix(BUILTIN_PREFIX).unwrap_or(builtin::TINY_NAME);
                for (file, bytes) in builtin::files(name).ok_or_else(|| Error::UnknownBuiltin {
                    name: name.to_string(),
                    known: BUILTIN_NAMES.join(", "),
                })? {
                    write_atomic(&dir.join(file), bytes)?;
                }
            }
            Some(src) => {
                write_atomic(&dir.join(parse::TOKENIZER_JSON), &self.tokenizer_json)?;
                for file in METADATA_FILES {
                    let from = src.join(file);
                    match std::fs::read(&from) {
                        Ok(bytes) => write_atomic(&dir.join(file), &bytes)?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                        Err(e) => return Err(Error::io(&from, e)),
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writes `bytes` to `path` via a sibling temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp.{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        // Best effort: a stray temporary file is harmless but untidy.
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}
