//! Random prompts of exact token lengths: random single-token words, counted again with the
//! real tokenizer and corrected until the count is the one asked for.

use rand::Rng;
use rand::rngs::StdRng;

use super::{DatasetConfig, DatasetRequest, Prompt, draw_len};
use crate::{Error, TokenCounter};

/// Words kept from the vocabulary; more only add variety nobody measures.
const POOL_LIMIT: usize = 4096;

/// Correction rounds before giving up on a prompt (one is enough on byte-level BPE).
const MAX_ROUNDS: usize = 16;

/// Makes texts of exact token counts from one tokenizer's single-token words.
#[derive(Debug)]
pub struct ExactText<'t> {
    tokenizer: &'t TokenCounter,
    words: Vec<String>,
}

impl<'t> ExactText<'t> {
    pub fn new(tokenizer: &'t TokenCounter) -> Result<ExactText<'t>, Error> {
        Ok(ExactText { tokenizer, words: tokenizer.word_pool(POOL_LIMIT)? })
    }

    fn draft(&self, rng: &mut StdRng, tokens: usize) -> Vec<usize> {
        (0..tokens).map(|_| rng.random_range(0..self.words.len())).collect()
    }

    fn text(&self, picks: &[usize]) -> String {
        let mut text = String::with_capacity(picks.len() * 8);
        for &i in picks {
            text.push_str(&self.words[i]);
        }
        text
    }

    /// Corrects a draft whose text counted `count` tokens until it counts `tokens`.
    fn correct(
        &self,
        rng: &mut StdRng,
        mut picks: Vec<usize>,
        mut count: usize,
        tokens: usize,
    ) -> Result<String, Error> {
        for _ in 0..MAX_ROUNDS {
            if count == tokens {
                return Ok(self.text(&picks));
            }
            if count > tokens {
                let drop = (count - tokens).min(picks.len().saturating_sub(1)).max(1);
                picks.truncate(picks.len().saturating_sub(drop));
            } else {
                picks.extend(self.draft(rng, tokens - count));
            }
            count = self.tokenizer.count(&self.text(&picks))?;
        }
        Err(Error::Tokenizer(format!(
            "could not make a text of exactly {tokens} tokens (closest: {count})"
        )))
    }

    /// One text of exactly `tokens` tokens.
    pub fn make(&self, rng: &mut StdRng, tokens: usize) -> Result<String, Error> {
        let picks = self.draft(rng, tokens);
        let count = self.tokenizer.count(&self.text(&picks))?;
        self.correct(rng, picks, count, tokens)
    }

    /// Texts of exactly `lens[i]` tokens each, counted in one batch first.
    pub fn make_many(&self, rng: &mut StdRng, lens: &[usize]) -> Result<Vec<String>, Error> {
        let drafts: Vec<Vec<usize>> = lens.iter().map(|&n| self.draft(rng, n)).collect();
        let texts: Vec<String> = drafts.iter().map(|p| self.text(p)).collect();
        let counts = self.tokenizer.count_batch(texts.iter().map(String::as_str).collect())?;
        let mut out = Vec::with_capacity(lens.len());
        for (((picks, text), count), &n) in drafts.into_iter().zip(texts).zip(counts).zip(lens) {
            out.push(if count == n { text } else { self.correct(rng, picks, count, n)? });
        }
        Ok(out)
    }
}

/// `--dataset-name random`: `--num-prompts` prompts, lengths drawn per bench_serving. With
/// `--dataset-path`, each prompt is the tokens of a ShareGPT prompt, repeated or cut to the
/// drawn length (bench_serving's way); otherwise random single-token words.
pub(super) fn dataset(
    config: &DatasetConfig,
    tokenizer: &TokenCounter,
    rng: &mut StdRng,
) -> Result<Vec<DatasetRequest>, Error> {
    let ratio = config.random_range_ratio;
    let input: Vec<usize> = (0..config.num_prompts)
        .map(|_| draw_len(rng, config.random_input_len, ratio) as usize)
        .collect();
    let output: Vec<u32> =
        (0..config.num_prompts).map(|_| draw_len(rng, config.random_output_len, ratio)).collect();
    if let Some(path) = &config.path {
        return from_sharegpt(path, config, tokenizer, rng, &input, &output);
    }
    let maker = ExactText::new(tokenizer)?;
    let texts = maker.make_many(rng, &input)?;
    Ok(texts
        .into_iter()
        .zip(input)
        .zip(output)
        .map(|((text, prompt_len), output_len)| DatasetRequest {
            prompt: Prompt::Text(text),
            prompt_len,
            output_len,
        })
        .collect())
}

/// Prompts cut from ShareGPT text: each one's tokens repeated or truncated to the drawn length,
/// decoded, and counted again (decoding may merge tokens at the cut).
fn from_sharegpt(
    path: &std::path::Path,
    config: &DatasetConfig,
    tokenizer: &TokenCounter,
    rng: &mut StdRng,
    input: &[usize],
    output: &[u32],
) -> Result<Vec<DatasetRequest>, Error> {
    let pairs = super::sharegpt::load_pairs(path, config.dataset_offset, rng)?;
    let mut sources = Vec::with_capacity(pairs.len());
    for (prompt, _) in &pairs {
        let ids = tokenizer.ids(prompt)?;
        if !ids.is_empty() {
            sources.push(ids);
        }
    }
    if sources.is_empty() {
        return Err(Error::dataset(path, "no non-empty prompt to draw random prompts from"));
    }
    let mut out = Vec::with_capacity(input.len());
    for (i, (&len, &output_len)) in input.iter().zip(output).enumerate() {
        let ids = &sources[i % sources.len()];
        let picked: Vec<u32> = ids.iter().copied().cycle().take(len).collect();
        let text = tokenizer.decode(&picked)?;
        let prompt_len = tokenizer.count(&text)?;
        out.push(DatasetRequest { prompt: Prompt::Text(text), prompt_len, output_len });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn texts_have_exactly_the_asked_token_counts() {
        let tokenizer = TokenCounter::load("builtin:tiny").unwrap();
        let maker = ExactText::new(&tokenizer).unwrap();
        let mut rng = StdRng::seed_from_u64(7);
        let lens = [1, 2, 3, 17, 128, 1000];
        for (text, n) in maker.make_many(&mut rng, &lens).unwrap().iter().zip(lens) {
            assert_eq!(tokenizer.count(text).unwrap(), n);
        }
        // The correction path: a draft counted wrong on purpose is brought to the target.
        let picks = maker.draft(&mut rng, 10);
        let text = maker.correct(&mut rng, picks, 13, 10).unwrap();
        assert_eq!(tokenizer.count(&text).unwrap(), 10);
    }
}
