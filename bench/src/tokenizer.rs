//! The tokenizer prompts are measured and made with: a `tokenizer.json`, a model directory, a
//! Hugging Face repo id in the local cache, or `builtin:tiny` (the embedded default model).
//! Counting takes the frontend's fast BPE path where it reproduces the tokenizer, and the
//! `tokenizers` crate otherwise; `--apply-chat-template` renders with the model's template.

use std::path::Path;
use std::sync::Arc;

use switchyard_frontend::{ChatTemplate, FastBpe};
use switchyard_model::ModelFiles;
use tokenizers::Tokenizer;

use crate::Error;

/// The model's chat template and the special tokens it refers to.
struct Template {
    template: ChatTemplate,
    bos_token: Option<String>,
    eos_token: Option<String>,
}

/// A loaded tokenizer, shared by the dataset builders and the re-tokenizing of outputs.
#[derive(Clone)]
pub struct TokenCounter {
    inner: Arc<Tokenizer>,
    fast: Option<Arc<FastBpe>>,
    template: Option<Arc<Template>>,
    source: String,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCounter")
            .field("source", &self.source)
            .field("fast", &self.fast.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenCounter {
    /// Loads `source`: a path to a `tokenizer.json` file, else whatever
    /// [`switchyard_model::ModelFiles::resolve`] accepts.
    pub fn load(source: &str) -> Result<TokenCounter, Error> {
        let path = Path::new(source);
        let fail = |e: &dyn std::fmt::Display| Error::Tokenizer(format!("{source}: {e}"));
        let (json, files): (Arc<[u8]>, Option<ModelFiles>) = if path.is_file() {
            (std::fs::read(path).map_err(|e| Error::io(path, e))?.into(), None)
        } else {
            let files = ModelFiles::resolve(source).map_err(|e| fail(&e))?;
            (files.tokenizer_json.clone(), Some(files))
        };
        let tokenizer = Tokenizer::from_bytes(&*json).map_err(|e| fail(&e))?;
        let fast = FastBpe::from_tokenizer_json(&json)
            .filter(|fast| fast.agrees_with(&tokenizer, ""))
            .map(Arc::new);
        let template = match files {
            Some(files) => match files.tokenizer_config.chat_template.clone() {
                Some(text) => Some(Arc::new(Template {
                    template: ChatTemplate::compile(&text)
                        .map_err(|e| fail(&format!("chat template: {e}")))?,
                    bos_token: files.tokenizer_config.bos_token.clone(),
                    eos_token: files.tokenizer_config.eos_token.clone(),
                })),
                None => None,
            },
            None => None,
        };
        Ok(TokenCounter { inner: Arc::new(tokenizer), fast, template, source: source.to_owned() })
    }

    /// What it was loaded from, as given.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Whether counting takes the fast path.
    pub fn is_fast(&self) -> bool {
        self.fast.is_some()
    }

    /// Number of tokens of `text`, special tokens parsed but none added (as the servers count
    /// a completion's text, and as bench_serving re-tokenizes outputs).
    pub fn count(&self, text: &str) -> Result<usize, Error> {
        self.ids(text).map(|ids| ids.len())
    }

    pub fn ids(&self, text: &str) -> Result<Vec<u32>, Error> {
        if let Some(fast) = &self.fast {
            let mut ids = Vec::with_capacity(text.len() / 3);
            if fast.encode(text, &mut ids) {
                return Ok(ids);
            }
        }
        // Offsets are never used here: the fast path skips computing them.
        let encoding =
            self.inner.encode_fast(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Counts of many texts. With the fast encoder, one after another on this thread (cheaper
    /// in CPU than the `tokenizers` crate's thread pool); else as a parallel batch.
    pub fn count_batch(&self, texts: Vec<&str>) -> Result<Vec<usize>, Error> {
        if self.fast.is_some() {
            return texts.into_iter().map(|t| self.count(t)).collect();
        }
        let encodings = self
            .inner
            .encode_batch_fast(texts, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encodings.iter().map(|e| e.get_ids().len()).collect())
    }

    /// Token ids of many texts at once.
    pub fn ids_batch(&self, texts: Vec<&str>) -> Result<Vec<Vec<u32>>, Error> {
        if self.fast.is_some() {
            return texts.into_iter().map(|t| self.ids(t)).collect();
        }
        let encodings = self
            .inner
            .encode_batch_fast(texts, false)
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        self.inner.decode(ids, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// `text` as one user turn rendered with the model's chat template (generation prompt
    /// added, the BOS token's text removed since the server adds its own), as bench_serving's
    /// `--apply-chat-template` renders it.
    pub fn apply_chat_template(&self, text: &str) -> Result<String, Error> {
        let t = self.template.as_ref().ok_or_else(|| {
            Error::Config(format!(
                "--apply-chat-template: the tokenizer {} has no chat template",
                self.source
            ))
        })?;
        let ctx = minijinja::context! {
            messages => vec![minijinja::context! { role => "user", content => text }],
            add_generation_prompt => true,
            bos_token => t.bos_token.as_deref().unwrap_or(""),
            eos_token => t.eos_token.as_deref().unwrap_or(""),
        };
        let rendered = t
            .template
            .render(ctx)
            .map_err(|e| Error::Tokenizer(format!("rendering the chat template: {e}")))?;
        Ok(match t.bos_token.as_deref() {
            Some(bos) if !bos.is_empty() => rendered.replace(bos, ""),
            _ => rendered,
        })
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
    fn builtin_tokenizer_is_fast_has_a_word_pool_and_a_template() {
        let t = TokenCounter::load("builtin:tiny").unwrap();
        assert!(t.is_fast(), "the embedded tokenizer is byte-level BPE");
        let words = t.word_pool(4096).unwrap();
        assert!(words.len() >= 8, "{words:?}");
        let text: String = words.iter().take(50).cloned().collect();
        assert_eq!(t.count(&text).unwrap(), 50.min(words.len()));
        // The fast path and `tokenizers` agree on mixed text, one by one and in a batch.
        let mixed = ["Hello, world! 123 ünïcode\n\n  spaces", "", "a\tb"];
        let slow: Vec<usize> =
            mixed.iter().map(|s| t.inner.encode_fast(*s, false).unwrap().get_ids().len()).collect();
        assert_eq!(t.count_batch(mixed.to_vec()).unwrap(), slow);
        let chat = t.apply_chat_template("Hi there").unwrap();
        assert!(chat.contains("Hi there") && chat.len() > "Hi there".len(), "{chat}");
    }
}
