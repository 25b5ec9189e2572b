//! The tokenizer prompts are measured and made with: a `tokenizer.json`, a model directory, a
//! Hugging Face repo id in the local cache, or `builtin:tiny` (the embedded default model).

use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

use crate::Error;

/// A loaded tokenizer, shared by the dataset builders and the re-tokenizing of outputs.
#[derive(Clone)]
pub struct TokenCounter {
    inner: Arc<Tokenizer>,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCounter").finish_non_exhaustive()
    }
}

impl TokenCounter {
    /// Loads `source`: a path to a `tokenizer.json` file, else whatever
    /// [`switchyard_model::ModelFiles::resolve`] accepts.
    pub fn load(source: &str) -> Result<TokenCounter, Error> {
        let path = Path::new(source);
        let bytes: Arc<[u8]> = if path.is_file() {
            std::fs::read(path).map_err(|e| Error::io(path, e))?.into()
        } else {
            switchyard_model::ModelFiles::resolve(source)
                .map_err(|e| Error::Tokenizer(format!("{source}: {e}")))?
                .tokenizer_json
        };
        let tokenizer = Tokenizer::from_bytes(&*bytes)
            .map_err(|e| Error::Tokenizer(format!("{source}: {e}")))?;
        Ok(TokenCounter { inner: Arc::new(tokenizer) })
    }

    /// Number of tokens of `text`, special tokens parsed but none added (as the servers count
    /// a completion's text, and as bench_serving re-tokenizes outputs).
    pub fn count(&self, text: &str) -> Result<usize, Error> {
        self.ids(text).map(|ids| ids.len())
    }

    pub fn ids(&self, text: &str) -> Result<Vec<u32>, Error> {
        // Offsets are never used here: the fast path skips computing them.
        let encoding =
            self.inner.encode_fast(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Counts of many texts at once (the tokenizer parallelises batches where it may).
    pub fn count_batch(&self, texts: Vec<&str>) -> Result<Vec<usize>, Error> {
        let encodings = self
            .inner
            .encode_batch_fast(texts, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encodings.iter().map(|e| e.get_ids().len()).collect())
    }

    /// Token ids of many texts at once.
    pub fn ids_batch(&self, texts: Vec<&str>) -> Result<Vec<Vec<u32>>, Error> {
        let encodings = self
            .inner
            .encode_batch_fast(texts, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// Words (a space, then 2–12 ASCII letters) that are one token each, alone and after
    /// another such word. Concatenating N of them gives a text of exactly N tokens on
    /// byte-level BPE tokenizers; [`crate::dataset::random`] checks and corrects otherwise.
    pub fn word_pool(&self, limit: usize) -> Result<Vec<String>, Error> {
        let size = u32::try_from(self.inner.get_vocab_size(true)).unwrap_or(u32::MAX);
        let mut words = Vec::new();
        for id in 0..size {
            let Some(piece) = self.inner.decode(&[id], true).ok() else {
                continue;
            };
            let letters = piece.strip_prefix(' ').unwrap_or("");
            if !(2..=12).contains(&letters.len())
                || !letters.bytes().all(|b| b.is_ascii_alphabetic())
            {
                continue;
            }
            if self.ids(&piece)? == [id] && self.count(&format!("{piece}{piece}"))? == 2 {
                words.push(piece);
                if words.len() >= limit {
                    break;
                }
            }
        }
        if words.len() < 8 {
            return Err(Error::Tokenizer(format!(
                "found only {} single-token words in a vocabulary of {size}; random prompts \
                 of exact lengths need at least 8",
                words.len()
            )));
        }
        Ok(words)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_tokenizer_has_a_word_pool() {
        let t = TokenCounter::load("builtin:tiny").unwrap();
        let words = t.word_pool(4096).unwrap();
        assert!(words.len() >= 8, "{words:?}");
        let text: String = words.iter().take(50).cloned().collect();
        assert_eq!(t.count(&text).unwrap(), 50.min(words.len()));
    }
}
