//! `--dataset-name sharegpt`: the first human turn of each conversation as the prompt, the
//! reply's token count (or `--sharegpt-output-len`) as the output length, as bench_serving does.

use std::path::Path;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Deserialize;

use super::{DatasetConfig, DatasetRequest, Prompt};
use crate::{Error, TokenCounter};

#[derive(Deserialize)]
struct Entry {
    #[serde(default)]
    conversations: Vec<Turn>,
}

#[derive(Deserialize)]
struct Turn {
    #[serde(default)]
    value: String,
}

/// The (first human turn, reply) pairs of a ShareGPT file, shuffled as bench_serving samples
/// them, then rotated by `--dataset-offset` (the same seed with a larger offset starts on pairs
/// the smaller one did not use first).
pub(super) fn load_pairs(
    path: &Path,
    offset: usize,
    rng: &mut StdRng,
) -> Result<Vec<(String, String)>, Error> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let entries: Vec<Entry> = serde_json::from_reader(std::io::BufReader::new(file))
        .map_err(|e| Error::dataset(path, format!("not a ShareGPT JSON list: {e}")))?;
    let mut pairs: Vec<(String, String)> = entries
        .into_iter()
        .filter(|e| e.conversations.len() >= 2)
        .map(|mut e| {
            let reply = std::mem::take(&mut e.conversations[1].value);
            (std::mem::take(&mut e.conversations[0].value), reply)
        })
        .collect();
    if pairs.is_empty() {
        return Err(Error::dataset(path, "no conversation with a prompt and a reply"));
    }
    pairs.shuffle(rng);
    let len = pairs.len();
    pairs.rotate_left(offset % len);
    Ok(pairs)
}

pub(super) fn dataset(
    config: &DatasetConfig,
    tokenizer: &TokenCounter,
    rng: &mut StdRng,
) -> Result<Vec<DatasetRequest>, Error> {
    let path = config.path.as_deref().ok_or_else(|| {
        Error::Config(
            "--dataset-name sharegpt needs --dataset-path FILE (ShareGPT's JSON: a list of \
             {\"conversations\": [{\"from\", \"value\"}, …]})"
                .into(),
        )
    })?;
    let pairs = load_pairs(path, config.dataset_offset, rng)?;
    let mut out = Vec::with_capacity(config.num_prompts.min(pairs.len()));
    for (prompt, reply) in pairs {
        if out.len() == config.num_prompts {
            break;
        }
        let prompt_len = tokenizer.count(&prompt)?;
        let output_len = match config.sharegpt_output_len {
            Some(n) => n as usize,
            None => tokenizer.count(&reply)?,
        };
        if prompt_len < 2 || output_len < 2 {
            continue;
        }
        if config.sharegpt_context_len.is_some_and(|max| prompt_len + output_len > max) {
            continue;
        }
        let output_len = u32::try_from(output_len).unwrap_or(u32::MAX);
        out.push(DatasetRequest { prompt: Prompt::Text(prompt), prompt_len, output_len });
    }
    if out.is_empty() {
        return Err(Error::dataset(path, "no conversation with a prompt and a reply of 2+ tokens"));
    }
    if out.len() < config.num_prompts {
        tracing::warn!(
            usable = out.len(),
            asked = config.num_prompts,
            "the ShareGPT file has fewer usable conversations than --num-prompts; sending those"
        );
    }
    Ok(out)
}
