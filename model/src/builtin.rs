//! Models embedded in the binary, so a default model works offline with no files around.

use std::path::PathBuf;

use crate::{Error, ModelFiles, parse};

/// Name of the tiny default model (`builtin:tiny`).
pub(crate) const TINY_NAME: &str = "tiny";

const TINY_FILES: &[(&str, &[u8])] = &[
    (parse::TOKENIZER_JSON, include_bytes!("../builtin/tiny/tokenizer.json")),
    (parse::TOKENIZER_CONFIG, include_bytes!("../builtin/tiny/tokenizer_config.json")),
    (parse::CONFIG, include_bytes!("../builtin/tiny/config.json")),
    (parse::GENERATION_CONFIG, include_bytes!("../builtin/tiny/generation_config.json")),
];

/// The embedded files of builtin model `name`, as (file name, bytes).
pub(crate) fn files(name: &str) -> Option<&'static [(&'static str, &'static [u8])]> {
    match name {
        TINY_NAME => Some(TINY_FILES),
        _ => None,
    }
}

/// Parses the embedded files of builtin model `name`.
pub(crate) fn load(source: &str, name: &str) -> Result<ModelFiles, Error> {
    let files = files(name).ok_or_else(|| Error::UnknownBuiltin {
        name: name.to_string(),
        known: crate::BUILTIN_NAMES.join(", "),
    })?;
    let get = |file: &str| {
        files
            .iter()
            .find(|(f, _)| *f == file)
            .map(|(f, bytes)| (PathBuf::from(format!("{source}/{f}")), bytes.to_vec()))
    };
    let tokenizer_json = files
        .iter()
        .find(|(f, _)| *f == parse::TOKENIZER_JSON)
        .map(|(_, bytes)| *bytes)
        .ok_or_else(|| Error::MissingFile {
            path: PathBuf::from(format!("{source}/{}", parse::TOKENIZER_JSON)),
        })?;
    let raw = parse::RawFiles {
        tokenizer_config: get(parse::TOKENIZER_CONFIG),
        config: get(parse::CONFIG),
        generation_config: get(parse::GENERATION_CONFIG),
        chat_template_jinja: get(parse::CHAT_TEMPLATE_JINJA),
        chat_template_json: get(parse::CHAT_TEMPLATE_JSON),
    };
    let (tokenizer_config, config) = parse::parse(&raw)?;
    Ok(ModelFiles {
        source: source.to_string(),
        dir: None,
        tokenizer_json: tokenizer_json.into(),
        tokenizer_config,
        config,
    })
}
