//! Workloads: the prompts a benchmark sends and how many tokens each asks for, built before the
//! run (random, ShareGPT file, generated shared prefix, JSONL file, multi-turn conversations).

mod gsp;
mod jsonl;
mod multiturn;
pub mod random;
mod sharegpt;

use std::path::PathBuf;
use std::str::FromStr;

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::{Error, TokenCounter};

/// The `--dataset-name` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatasetKind {
    Random,
    ShareGpt,
    GeneratedSharedPrefix,
    Jsonl,
    MultiTurn,
}

impl DatasetKind {
    /// The name written to the JSONL `dataset_name` key.
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Random => "random",
            DatasetKind::ShareGpt => "sharegpt",
            DatasetKind::GeneratedSharedPrefix => "generated-shared-prefix",
            DatasetKind::Jsonl => "jsonl",
            DatasetKind::MultiTurn => "multi-turn",
        }
    }
}

impl FromStr for DatasetKind {
    type Err = Error;

    fn from_str(s: &str) -> Result<DatasetKind, Error> {
        Ok(match s {
            "random" => DatasetKind::Random,
            "sharegpt" => DatasetKind::ShareGpt,
            "generated-shared-prefix" => DatasetKind::GeneratedSharedPrefix,
            "jsonl" => DatasetKind::Jsonl,
            "multi-turn" => DatasetKind::MultiTurn,
            _ => {
                return Err(Error::Config(format!(
                    "--dataset-name {s:?}: expected random, sharegpt, generated-shared-prefix, \
                     jsonl or multi-turn"
                )));
            }
        })
    }
}

/// The dataset flags, named as sglang.bench_serving names them.
#[derive(Debug, Clone)]
pub struct DatasetConfig {
    pub kind: DatasetKind,
    pub path: Option<PathBuf>,
    pub num_prompts: usize,
    pub random_input_len: u32,
    pub random_output_len: u32,
    /// Lengths are drawn uniformly from `[len * ratio, len]` (bench_serving's meaning; 1 makes
    /// every length exact).
    pub random_range_ratio: f64,
    /// Fixed output length for ShareGPT (else the dataset's reply length).
    pub sharegpt_output_len: Option<u32>,
    /// ShareGPT pairs longer than this (prompt + output tokens) are skipped.
    pub sharegpt_context_len: Option<usize>,
    pub gsp_num_groups: usize,
    pub gsp_prompts_per_group: usize,
    pub gsp_system_prompt_len: u32,
    pub gsp_question_len: u32,
    pub gsp_output_len: u32,
    /// Turns per conversation of the multi-turn dataset.
    pub multi_turn_turns: usize,
    pub seed: u64,
    /// `--prompt-suffix`: appended to every text prompt.
    pub prompt_suffix: String,
    /// `--apply-chat-template`: every text prompt rendered as one user turn of the model's chat
    /// template (for text-completion backends).
    pub apply_chat_template: bool,
    /// `--dataset-offset`: entries of a dataset file skipped (rotated to the end) before
    /// sampling, so successive runs start on fresh prompts.
    pub dataset_offset: usize,
}

impl Default for DatasetConfig {
    /// bench_serving's defaults.
    fn default() -> DatasetConfig {
        DatasetConfig {
            kind: DatasetKind::Random,
            path: None,
            num_prompts: 1000,
            random_input_len: 1024,
            random_output_len: 1024,
            random_range_ratio: 0.0,
            sharegpt_output_len: None,
            sharegpt_context_len: None,
            gsp_num_groups: 64,
            gsp_prompts_per_group: 16,
            gsp_system_prompt_len: 2048,
            gsp_question_len: 128,
            gsp_output_len: 256,
            multi_turn_turns: 4,
            seed: 1,
            prompt_suffix: String::new(),
            apply_chat_template: false,
            dataset_offset: 0,
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// What a request sends: a text prompt, or chat messages.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Text(String),
    Messages(Vec<Message>),
}

/// One request of a workload: its prompt, the prompt's token count, the output tokens asked.
#[derive(Debug, Clone, PartialEq)]
pub struct DatasetRequest {
    pub prompt: Prompt,
    pub prompt_len: usize,
    pub output_len: u32,
}

/// What the arrival process schedules: one request, or a conversation whose turns are sent one
/// after another, each resending the history (the earlier turns and the server's replies).
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub turns: Vec<DatasetRequest>,
}

impl Session {
    fn single(request: DatasetRequest) -> Session {
        Session { turns: vec![request] }
    }

    pub fn is_conversation(&self) -> bool {
        self.turns.len() > 1
    }
}

/// A built workload.
#[derive(Debug, Clone)]
pub struct Dataset {
    pub kind: DatasetKind,
    pub sessions: Vec<Session>,
    /// The warmup requests' prompt: as long as the first prompt and of the same shape, but its
    /// own text, so the measured run finds nothing of it cached.
    pub warmup: DatasetRequest,
}

impl Dataset {
    /// Builds the workload of `config`, measuring prompts with `tokenizer`.
    pub fn build(config: &DatasetConfig, tokenizer: &TokenCounter) -> Result<Dataset, Error> {
        if config.num_prompts == 0 && config.kind != DatasetKind::GeneratedSharedPrefix {
            return Err(Error::Config("--num-prompts must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&config.random_range_ratio) {
            return Err(Error::Config(format!(
                "--random-range-ratio {} must be within [0, 1]",
                config.random_range_ratio
            )));
        }
        let mut rng = StdRng::seed_from_u64(config.seed);
        let sessions = match config.kind {
            DatasetKind::Random => random::dataset(config, tokenizer, &mut rng)?
                .into_iter()
                .map(Session::single)
                .collect(),
            DatasetKind::ShareGpt => sharegpt::dataset(config, tokenizer, &mut rng)?
                .into_iter()
                .map(Session::single)
                .collect(),
            DatasetKind::GeneratedSharedPrefix => gsp::dataset(config, tokenizer, &mut rng)?
                .into_iter()
                .map(Session::single)
                .collect(),
            DatasetKind::Jsonl => {
                jsonl::dataset(config, tokenizer)?.into_iter().map(Session::single).collect()
            }
            DatasetKind::MultiTurn => multiturn::dataset(config, tokenizer, &mut rng)?,
        };
        let mut sessions = sessions;
        if !config.prompt_suffix.is_empty() || config.apply_chat_template {
            if config.kind == DatasetKind::MultiTurn {
                return Err(Error::Config(
                    "--prompt-suffix and --apply-chat-template apply to single-turn prompts; \
                     multi-turn conversations resend their history as it was"
                        .into(),
                ));
            }
            shape_prompts(&mut sessions, config, tokenizer)?;
        }
        let first = sessions
            .first()
            .and_then(|s| s.turns.first())
            .ok_or_else(|| Error::Config("the dataset is empty".into()))?;
        let warmup = warmup_request(first, tokenizer, config.seed)?;
        Ok(Dataset { kind: config.kind, sessions, warmup })
    }

    /// Requests the workload sends (turns of every conversation included).
    pub fn num_requests(&self) -> usize {
        self.sessions.iter().map(|s| s.turns.len()).sum()
    }
}

/// `--prompt-suffix` and `--apply-chat-template` on every text prompt, counted again.
fn shape_prompts(
    sessions: &mut [Session],
    config: &DatasetConfig,
    tokenizer: &TokenCounter,
) -> Result<(), Error> {
    for turn in sessions.iter_mut().flat_map(|s| s.turns.iter_mut()) {
        let Prompt::Text(text) = &mut turn.prompt else { continue };
        text.push_str(&config.prompt_suffix);
        if config.apply_chat_template {
            *text = tokenizer.apply_chat_template(text)?;
        }
        turn.prompt_len = tokenizer.count(text)?;
    }
    Ok(())
}

/// A prompt of the first one's length and shape, of random words the workload does not use
/// (drawn from a stream of its own).
fn warmup_request(
    first: &DatasetRequest,
    tokenizer: &TokenCounter,
    seed: u64,
) -> Result<DatasetRequest, Error> {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x3a7d_0f17_u64.rotate_left(32));
    let len = first.prompt_len.max(1);
    let text = match random::ExactText::new(tokenizer) {
        Ok(maker) => maker.make(&mut rng, len)?,
        // A tokenizer without single-token words: a plain sentence does.
        Err(_) => "Warm up: reply with anything.".to_owned(),
    };
    let prompt_len = tokenizer.count(&text)?;
    let prompt = match &first.prompt {
        Prompt::Text(_) => Prompt::Text(text),
        Prompt::Messages(_) => {
            Prompt::Messages(vec![Message { role: "user".into(), content: text }])
        }
    };
    Ok(DatasetRequest { prompt, prompt_len, output_len: first.output_len })
}

/// A length drawn as bench_serving draws it: uniform in `[max(len * ratio, 1), len]`.
pub(crate) fn draw_len(rng: &mut StdRng, len: u32, ratio: f64) -> u32 {
    use rand::Rng;
    // Truncation is what bench_serving's int() does.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let low = ((f64::from(len) * ratio) as u32).max(1);
    if low >= len { len.max(1) } else { rng.random_range(low..=len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_stay_in_range_and_ratio_one_is_exact() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            let n = draw_len(&mut rng, 100, 0.5);
            assert!((50..=100).contains(&n), "{n}");
        }
        assert_eq!(draw_len(&mut rng, 100, 1.0), 100);
        assert!(draw_len(&mut rng, 100, 0.0) >= 1);
    }

    #[test]
    fn dataset_names_round_trip() {
        for kind in [
            DatasetKind::Random,
            DatasetKind::ShareGpt,
            DatasetKind::GeneratedSharedPrefix,
            DatasetKind::Jsonl,
            DatasetKind::MultiTurn,
        ] {
            assert_eq!(kind.name().parse::<DatasetKind>().unwrap(), kind);
        }
        assert!("nope".parse::<DatasetKind>().is_err());
    }
}
