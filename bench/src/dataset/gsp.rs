//! `--dataset-name generated-shared-prefix`: groups of prompts sharing one long system prompt
//! (the prefix-caching workload of bench_serving), shuffled across groups.

use rand::rngs::StdRng;
use rand::seq::SliceRandom;

use super::random::ExactText;
use super::{DatasetConfig, DatasetRequest, Prompt};
use crate::{Error, TokenCounter};

pub(super) fn dataset(
    config: &DatasetConfig,
    tokenizer: &TokenCounter,
    rng: &mut StdRng,
) -> Result<Vec<DatasetRequest>, Error> {
    if config.gsp_num_groups == 0 || config.gsp_prompts_per_group == 0 {
        return Err(Error::Config(
            "--gsp-num-groups and --gsp-prompts-per-group must be at least 1".into(),
        ));
    }
    let maker = ExactText::new(tokenizer)?;
    let systems = maker
        .make_many(rng, &vec![config.gsp_system_prompt_len as usize; config.gsp_num_groups])?;
    let questions = config.gsp_num_groups * config.gsp_prompts_per_group;
    let questions = maker.make_many(rng, &vec![config.gsp_question_len as usize; questions])?;
    let prompts: Vec<String> = questions
        .iter()
        .enumerate()
        .map(|(i, q)| format!("{}\n\n{q}", systems[i / config.gsp_prompts_per_group]))
        .collect();
    let lens = tokenizer.count_batch(prompts.iter().map(String::as_str).collect())?;
    let mut out: Vec<DatasetRequest> = prompts
        .into_iter()
        .zip(lens)
        .map(|(text, prompt_len)| DatasetRequest {
            prompt: Prompt::Text(text),
            prompt_len,
            output_len: config.gsp_output_len,
        })
        .collect();
    out.shuffle(rng);
    Ok(out)
}
