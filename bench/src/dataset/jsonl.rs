//! `--dataset-name jsonl`: one request per line, `{"prompt": "…"}` or `{"messages": [...]}`,
//! with the output length in `output_len` (or `max_tokens`; default `--random-output-len`).

use std::io::BufRead;

use serde::Deserialize;

use super::{DatasetConfig, DatasetRequest, Message, Prompt};
use crate::{Error, TokenCounter};

#[derive(Deserialize)]
struct Line {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
    #[serde(alias = "max_tokens", alias = "output_tokens")]
    output_len: Option<u32>,
}

pub(super) fn dataset(
    config: &DatasetConfig,
    tokenizer: &TokenCounter,
) -> Result<Vec<DatasetRequest>, Error> {
    let path = config
        .path
        .as_deref()
        .ok_or_else(|| Error::Config("--dataset-name jsonl needs --dataset-path FILE".into()))?;
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate().skip(config.dataset_offset) {
        if out.len() == config.num_prompts {
            break;
        }
        let line = line.map_err(|e| Error::io(path, e))?;
        if line.trim().is_empty() {
            continue;
        }
        let at = |m: String| Error::dataset(path, format!("line {}: {m}", i + 1));
        let parsed: Line = serde_json::from_str(&line).map_err(|e| at(e.to_string()))?;
        let (prompt, prompt_len) = match (parsed.prompt, parsed.messages) {
            (Some(text), None) => {
                let n = tokenizer.count(&text)?;
                (Prompt::Text(text), n)
            }
            (None, Some(messages)) if !messages.is_empty() => {
                let mut n = 0;
                for m in &messages {
                    n += tokenizer.count(&m.content)?;
                }
                (Prompt::Messages(messages), n)
            }
            _ => {
                return Err(
                    at("expected exactly one of `prompt` or a non-empty `messages`".into()),
                );
            }
        };
        let output_len = parsed.output_len.unwrap_or(config.random_output_len);
        out.push(DatasetRequest { prompt, prompt_len, output_len });
    }
    if out.is_empty() {
        return Err(Error::dataset(path, "no requests"));
    }
    Ok(out)
}
