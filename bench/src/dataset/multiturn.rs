//! `--dataset-name multi-turn`: `--num-prompts` conversations of `--multi-turn-turns` user turns
//! of random exact lengths. The runner sends the turns of a conversation one after another,
//! each resending the history with the server's earlier replies, for prefix-reuse studies.

use rand::rngs::StdRng;

use super::random::ExactText;
use super::{DatasetConfig, DatasetRequest, Prompt, Session, draw_len};
use crate::{Error, TokenCounter};

pub(super) fn dataset(
    config: &DatasetConfig,
    tokenizer: &TokenCounter,
    rng: &mut StdRng,
) -> Result<Vec<Session>, Error> {
    if config.multi_turn_turns == 0 {
        return Err(Error::Config("--multi-turn-turns must be at least 1".into()));
    }
    let maker = ExactText::new(tokenizer)?;
    let n = config.num_prompts * config.multi_turn_turns;
    let ratio = config.random_range_ratio;
    let input: Vec<usize> =
        (0..n).map(|_| draw_len(rng, config.random_input_len, ratio) as usize).collect();
    let output: Vec<u32> = (0..n).map(|_| draw_len(rng, config.random_output_len, ratio)).collect();
    let texts = maker.make_many(rng, &input)?;
    let mut turns =
        texts.into_iter().zip(input).zip(output).map(|((text, prompt_len), output_len)| {
            DatasetRequest { prompt: Prompt::Text(text), prompt_len, output_len }
        });
    Ok((0..config.num_prompts)
        .map(|_| Session { turns: turns.by_ref().take(config.multi_turn_turns).collect() })
        .collect())
}
