//! Token ids ↔ text with the model's own tokenizer, for engines that take or return only text
//! (the prompt goes as the text its ids decode to; generated text comes back as ids again).

use tokenizers::Tokenizer;

use crate::Error;

/// The model's tokenizer, loaded once.
pub(crate) struct TextCodec {
    tokenizer: Tokenizer,
}

impl TextCodec {
    pub fn new(tokenizer_json: &[u8]) -> Result<TextCodec, Error> {
        let tokenizer = Tokenizer::from_bytes(tokenizer_json)
            .map_err(|e| Error::Config(format!("loading the model's tokenizer: {e}")))?;
        Ok(TextCodec { tokenizer })
    }

    /// The text of `ids`, special tokens included (they are part of a rendered prompt).
    pub fn decode(&self, ids: &[u32]) -> Result<String, Error> {
        self.tokenizer.decode(ids, false).map_err(|e| {
            Error::InvalidRequest(format!("the prompt's token ids do not decode: {e}"))
        })
    }

    /// Token ids of a piece of generated text.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        self.tokenizer
            .encode_fast(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| Error::Engine(format!("tokenizing the engine's output: {e}")))
    }
}
