//! Reading the JSON files of a model directory into [`TokenizerConfig`] and [`ModelConfig`],
//! tolerating the shapes Hugging Face files take in the wild.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::{Error, ModelConfig, TokenizerConfig};

pub(crate) const TOKENIZER_JSON: &str = "tokenizer.json";
pub(crate) const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
pub(crate) const CONFIG: &str = "config.json";
pub(crate) const GENERATION_CONFIG: &str = "generation_config.json";
pub(crate) const CHAT_TEMPLATE_JINJA: &str = "chat_template.jinja";
pub(crate) const CHAT_TEMPLATE_JSON: &str = "chat_template.json";

/// The optional files of a model, each as (path for error messages, bytes) when present.
pub(crate) struct RawFiles {
    pub tokenizer_config: Option<(PathBuf, Vec<u8>)>,
    pub config: Option<(PathBuf, Vec<u8>)>,
    pub generation_config: Option<(PathBuf, Vec<u8>)>,
    pub chat_template_jinja: Option<(PathBuf, Vec<u8>)>,
    pub chat_template_json: Option<(PathBuf, Vec<u8>)>,
}

/// Parses whichever files are present; a missing file leaves its fields at their defaults.
pub(crate) fn parse(raw: &RawFiles) -> Result<(TokenizerConfig, ModelConfig), Error> {
    let mut tokenizer = match &raw.tokenizer_config {
        Some((path, bytes)) => tokenizer_config(path, &object(path, bytes)?)?,
        None => TokenizerConfig::default(),
    };
    // A separate template file overrides the one in tokenizer_config.json, as in transformers,
    // which writes the template there in newer versions.
    if let Some((path, bytes)) = &raw.chat_template_jinja {
        let text = std::str::from_utf8(bytes).map_err(|e| json_err(path, format!("{e}")))?;
        tokenizer.chat_template = Some(text.to_string());
    } else if let Some((path, bytes)) = &raw.chat_template_json {
        let obj = object(path, bytes)?;
        if let Some(t) = chat_template(path, obj.get("chat_template"))? {
            tokenizer.chat_template = Some(t);
        }
    }

    let mut config = match &raw.config {
        Some((path, bytes)) => model_config(path, &object(path, bytes)?)?,
        None => ModelConfig::default(),
    };
    if let Some((path, bytes)) = &raw.generation_config {
        let obj = object(path, bytes)?;
        for id in token_ids(path, &obj, "eos_token_id")? {
            if !config.eos_token_ids.contains(&id) {
                config.eos_token_ids.push(id);
            }
        }
        if config.bos_token_id.is_none() {
            config.bos_token_id = token_ids(path, &obj, "bos_token_id")?.first().copied();
        }
    }
    Ok((tokenizer, config))
}

fn json_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Json { file: path.to_path_buf(), reason: reason.into() }
}

fn object(path: &Path, bytes: &[u8]) -> Result<Map<String, Value>, Error> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(json_err(path, format!("expected a JSON object, got {}", kind(&other)))),
        Err(e) => Err(json_err(path, format!("invalid JSON: {e}"))),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn tokenizer_config(path: &Path, obj: &Map<String, Value>) -> Result<TokenizerConfig, Error> {
    Ok(TokenizerConfig {
        chat_template: chat_template(path, obj.get("chat_template"))?,
        bos_token: token_text(path, obj, "bos_token")?,
        eos_token: token_text(path, obj, "eos_token")?,
        add_bos_token: match obj.get("add_bos_token") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                return Err(json_err(
                    path,
                    format!("`add_bos_token`: expected a boolean, got {}", kind(other)),
                ));
            }
        },
        model_max_length: match obj.get("model_max_length") {
            None | Some(Value::Null) => None,
            // HF writes int(1e30) (or other huge values) for "no limit"; those do not fit u32.
            Some(Value::Number(n)) => n.as_u64().and_then(|n| u32::try_from(n).ok()),
            Some(other) => {
                return Err(json_err(
                    path,
                    format!("`model_max_length`: expected a number, got {}", kind(other)),
                ));
            }
        },
    })
}

/// A chat template: a string, or a list of `{name, template}` of which the `default` one is
/// used (the others are selected by name in transformers, which serving does not need).
fn chat_template(path: &Path, value: Option<&Value>) -> Result<Option<String>, Error> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Array(entries)) => {
            for entry in entries {
                let name = entry.get("name").and_then(Value::as_str);
                let template = entry.get("template").and_then(Value::as_str);
                match (name, template) {
                    (Some("default"), Some(t)) => return Ok(Some(t.to_string())),
                    (Some(_), Some(_)) => {}
                    _ => {
                        return Err(json_err(
                            path,
                            "`chat_template`: list entries must be {\"name\": ..., \"template\": ...}",
                        ));
                    }
                }
            }
            Ok(None)
        }
        Some(other) => Err(json_err(
            path,
            format!(
                "`chat_template`: expected a string or a list of {{name, template}}, got {}",
                kind(other)
            ),
        )),
    }
}

/// A special token's text: a string or an AddedToken object `{"content": "...", ...}`.
fn token_text(path: &Path, obj: &Map<String, Value>, key: &str) -> Result<Option<String>, Error> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => Ok(Some(s.clone())),
            _ => Err(json_err(path, format!("`{key}`: token object without a string \"content\""))),
        },
        Some(other) => Err(json_err(
            path,
            format!("`{key}`: expected a string or a token object, got {}", kind(other)),
        )),
    }
}

/// Looks `key` up at the top level, else in `text_config` (multimodal configs nest it there).
fn lookup<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    match obj.get(key) {
        Some(Value::Null) | None => obj
            .get("text_config")
            .and_then(Value::as_object)
            .and_then(|t| t.get(key))
            .filter(|v| !v.is_null()),
        some => some,
    }
}

fn as_u32(path: &Path, key: &str, v: &Value) -> Result<u32, Error> {
    v.as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .ok_or_else(|| json_err(path, format!("`{key}`: expected a non-negative integer, got {v}")))
}

fn opt_u32(path: &Path, obj: &Map<String, Value>, key: &str) -> Result<Option<u32>, Error> {
    lookup(obj, key).map(|v| as_u32(path, key, v)).transpose()
}

/// A token id field that may be a number, a list of numbers, or null.
fn token_ids(path: &Path, obj: &Map<String, Value>, key: &str) -> Result<Vec<u32>, Error> {
    match lookup(obj, key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items.iter().map(|v| as_u32(path, key, v)).collect(),
        Some(v) => Ok(vec![as_u32(path, key, v)?]),
    }
}

fn model_config(path: &Path, obj: &Map<String, Value>) -> Result<ModelConfig, Error> {
    let mut eos_token_ids = Vec::new();
    for id in token_ids(path, obj, "eos_token_id")? {
        if !eos_token_ids.contains(&id) {
            eos_token_ids.push(id);
        }
    }
    Ok(ModelConfig {
        vocab_size: opt_u32(path, obj, "vocab_size")?,
        max_position_embeddings: opt_u32(path, obj, "max_position_embeddings")?,
        eos_token_ids,
        bos_token_id: token_ids(path, obj, "bos_token_id")?.first().copied(),
    })
}
