//! Incremental, UTF-8-safe detokenization: token ids in, text out as soon as it is whole.
//!
//! Byte-level tokenizers (GPT-2 style, most current models) get a table of every token's
//! bytes, built once per model: a token costs a lookup and a UTF-8 check, and a character
//! split across tokens is held only until its last byte arrives. Other tokenizers decode a
//! small window of recent ids each step and hold text back while it ends in U+FFFD, but never
//! for more than a few tokens. Special tokens produce no text. `flush` gives up whatever is
//! held at the end.

use std::sync::Arc;

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;

use crate::bpe::reverse_alphabet;

/// Tokens a window decoder holds text back for while it ends in U+FFFD; a model emitting
/// invalid UTF-8 must not stall its output.
const MAX_HELD_TOKENS: usize = 6;

/// The bytes every token decodes to, for byte-level tokenizers.
#[derive(Debug)]
pub(crate) struct TokenBytes {
    /// `offsets[id]..offsets[id + 1]` is the range of `bytes` of token `id`.
    offsets: Vec<u32>,
    bytes: Vec<u8>,
}

impl TokenBytes {
    /// The table, when the tokenizer's decoder is byte-level (else `None`: decode by window).
    /// Special tokens map to no bytes, as `decode(.., skip_special_tokens = true)` does.
    pub fn build(tokenizer: &Tokenizer) -> Option<TokenBytes> {
        if !matches!(tokenizer.get_decoder(), Some(DecoderWrapper::ByteLevel(_))) {
            return None;
        }
        let char_bytes = reverse_alphabet();
        let mut tokens: Vec<Option<Vec<u8>>> = Vec::new();
        let mut set = |id: u32, bytes: Vec<u8>| {
            let id = id as usize;
            if tokens.len() <= id {
                tokens.resize(id + 1, None);
            }
            tokens[id] = Some(bytes);
        };
        for (token, id) in tokenizer.get_vocab(false) {
            set(id, decode_byte_level(&token, &char_bytes));
        }
        // Added tokens win over model tokens of the same id, as in `Tokenizer::decode`.
        for (id, added) in tokenizer.get_added_tokens_decoder() {
            let bytes = if added.special {
                Vec::new()
            } else {
                decode_byte_level(&added.content, &char_bytes)
            };
            set(id, bytes);
        }
        let mut offsets = Vec::with_capacity(tokens.len() + 1);
        let mut bytes = Vec::new();
        offsets.push(0);
        for token in tokens {
            bytes.extend_from_slice(token.as_deref().unwrap_or_default());
            offsets.push(u32::try_from(bytes.len()).ok()?);
        }
        Some(TokenBytes { offsets, bytes })
    }

    /// The bytes of `id`; none for an id the tokenizer does not have.
    pub fn get(&self, id: u32) -> &[u8] {
        let id = id as usize;
        match (self.offsets.get(id), self.offsets.get(id + 1)) {
            (Some(&start), Some(&end)) => {
                self.bytes.get(start as usize..end as usize).unwrap_or_default()
            }
            _ => &[],
        }
    }
}

/// A token's bytes under the byte-level decoder: each character mapped back to its byte, or,
/// when any character is outside the alphabet, the token's own UTF-8 (as `tokenizers` does).
fn decode_byte_level(token: &str, alphabet: &[Option<u8>]) -> Vec<u8> {
    token
        .chars()
        .map(|c| alphabet.get(c as usize).copied().flatten())
        .collect::<Option<Vec<u8>>>()
        .unwrap_or_else(|| token.as_bytes().to_vec())
}

/// Turns one response's token ids into text, incrementally.
#[derive(Debug)]
pub(crate) enum Detokenizer {
    Bytes(ByteDecoder),
    Window(WindowDecoder),
}

/// Special tokens shown as text after all (output parsers read them): id and text.
pub(crate) type KeptSpecial = Arc<[(u32, Box<str>)]>;

impl Detokenizer {
    pub fn by_bytes(table: Arc<TokenBytes>) -> Detokenizer {
        Detokenizer::Bytes(ByteDecoder { table, pending: Vec::new(), kept: Arc::new([]) })
    }

    pub fn by_window(tokenizer: Arc<Tokenizer>) -> Detokenizer {
        Detokenizer::Window(WindowDecoder {
            tokenizer,
            ids: Vec::new(),
            prefix: 0,
            read: 0,
            kept: Arc::new([]),
        })
    }

    /// Shows these special tokens as their text.
    pub fn keeping(mut self, special: KeptSpecial) -> Detokenizer {
        match &mut self {
            Detokenizer::Bytes(d) => d.kept = special,
            Detokenizer::Window(d) => d.kept = special,
        }
        self
    }

    /// Adds token `id`; appends to `out` the text that is now complete.
    pub fn push(&mut self, id: u32, out: &mut String) {
        let kept = match self {
            Detokenizer::Bytes(d) => &d.kept,
            Detokenizer::Window(d) => &d.kept,
        };
        if !kept.is_empty()
            && let Some((_, text)) = kept.iter().find(|(k, _)| *k == id)
        {
            let text = text.clone();
            self.flush(out);
            out.push_str(&text);
            return;
        }
        match self {
            Detokenizer::Bytes(d) => d.push(id, out),
            Detokenizer::Window(d) => d.push(id, out),
        }
    }

    /// Appends whatever is still held (a partial character becomes U+FFFD).
    pub fn flush(&mut self, out: &mut String) {
        match self {
            Detokenizer::Bytes(d) => d.flush(out),
            Detokenizer::Window(d) => d.flush(out),
        }
    }
}

#[derive(Debug)]
pub(crate) struct ByteDecoder {
    table: Arc<TokenBytes>,
    /// Bytes of a character not yet complete (at most 3).
    pending: Vec<u8>,
    kept: KeptSpecial,
}

impl ByteDecoder {
    fn push(&mut self, id: u32, out: &mut String) {
        let bytes = self.table.get(id);
        if self.pending.is_empty() {
            // The common case: a token of whole characters, copied straight out.
            if let Ok(text) = std::str::from_utf8(bytes) {
                out.push_str(text);
                return;
            }
        }
        self.pending.extend_from_slice(bytes);
        self.drain(out, false);
    }

    fn flush(&mut self, out: &mut String) {
        self.drain(out, true);
    }

    /// Moves the valid text of `pending` to `out`, an invalid sequence as U+FFFD (like
    /// `String::from_utf8_lossy`), keeping an incomplete last character unless `last`.
    fn drain(&mut self, out: &mut String, last: bool) {
        let mut start = 0;
        while start < self.pending.len() {
            let rest = &self.pending[start..];
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    start = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    start += valid;
                    match e.error_len() {
                        Some(invalid) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += invalid;
                        }
                        None if last => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start = self.pending.len();
                        }
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
    }
}

#[derive(Debug)]
pub(crate) struct WindowDecoder {
    tokenizer: Arc<Tokenizer>,
    ids: Vec<u32>,
    /// Start of the window decoded for context (so spacing rules see the previous token).
    prefix: usize,
    /// End of what has been emitted.
    read: usize,
    kept: KeptSpecial,
}

impl WindowDecoder {
    fn decode(&self, ids: &[u32]) -> String {
        self.tokenizer.decode(ids, true).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "detokenizing failed");
            String::new()
        })
    }

    fn push(&mut self, id: u32, out: &mut String) {
        self.ids.push(id);
        let held = self.ids.len() - self.read;
        self.emit(out, held >= MAX_HELD_TOKENS);
    }

    fn flush(&mut self, out: &mut String) {
        if self.read < self.ids.len() {
            self.emit(out, true);
        }
    }

    fn emit(&mut self, out: &mut String, force: bool) {
        let before = self.decode(&self.ids[self.prefix..self.read]);
        let after = self.decode(&self.ids[self.prefix..]);
        if after.len() > before.len() && (force || !after.ends_with(char::REPLACEMENT_CHARACTER)) {
            if let Some(delta) = after.get(before.len()..) {
                out.push_str(delta);
                self.prefix = self.read;
                self.read = self.ids.len();
            }
        } else if force {
            // Nothing printable came of these tokens; do not hold them any longer.
            self.prefix = self.read;
            self.read = self.ids.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::ModelFiles;

    fn tiny() -> Arc<Tokenizer> {
        let files = ModelFiles::resolve(switchyard_model::DEFAULT_SOURCE).expect("builtin model");
        Arc::new(Tokenizer::from_bytes(&files.tokenizer_json).expect("tokenizer"))
    }

    fn decoders(tokenizer: &Arc<Tokenizer>) -> Vec<(&'static str, Detokenizer)> {
        let table = TokenBytes::build(tokenizer).expect("byte-level");
        vec![
            ("bytes", Detokenizer::by_bytes(Arc::new(table))),
            ("window", Detokenizer::by_window(tokenizer.clone())),
        ]
    }

    /// The id of the single-byte token `b`.
    fn byte_token(tokenizer: &Tokenizer, b: u8) -> u32 {
        let table = TokenBytes::build(tokenizer).expect("byte-level");
        (0..tokenizer.get_vocab_size(true) as u32)
            .find(|&id| table.get(id) == [b])
            .expect("a byte token")
    }

    #[test]
    fn round_trips_text_token_by_token() {
        let tokenizer = tiny();
        let text = "héllo wörld, 日本語 and 😀!";
        let ids = tokenizer.encode(text, false).expect("encodes").get_ids().to_vec();
        for (name, mut d) in decoders(&tokenizer) {
            let mut out = String::new();
            for &id in &ids {
                d.push(id, &mut out);
                assert!(!out.contains(char::REPLACEMENT_CHARACTER), "{name}: {out:?}");
            }
            d.flush(&mut out);
            assert_eq!(out, text, "{name}");
        }
    }

    #[test]
    fn a_character_split_across_tokens_waits_for_its_last_byte() {
        let tokenizer = tiny();
        let emoji = "😀".as_bytes();
        let ids: Vec<u32> = emoji.iter().map(|&b| byte_token(&tokenizer, b)).collect();
        for (name, mut d) in decoders(&tokenizer) {
            let mut out = String::new();
            for &id in &ids[..3] {
                d.push(id, &mut out);
                assert_eq!(out, "", "{name}");
            }
            d.push(ids[3], &mut out);
            assert_eq!(out, "😀", "{name}");
        }
    }

    #[test]
    fn invalid_bytes_become_replacement_characters_and_nothing_is_held_forever() {
        let tokenizer = tiny();
        let (ff, a, e1) = (
            byte_token(&tokenizer, 0xFF),
            byte_token(&tokenizer, b'a'),
            byte_token(&tokenizer, 0xE1),
        );
        for (name, mut d) in decoders(&tokenizer) {
            let mut out = String::new();
            d.push(ff, &mut out);
            d.push(a, &mut out);
            for _ in 0..MAX_HELD_TOKENS {
                d.push(a, &mut out);
            }
            assert!(out.starts_with('\u{FFFD}') && out.ends_with('a'), "{name}: {out:?}");
            d.push(e1, &mut out);
            let before = out.clone();
            d.flush(&mut out);
            assert_eq!(&out[before.len()..], "\u{FFFD}", "{name}: an incomplete tail flushes");
        }
    }

    #[test]
    fn special_tokens_produce_no_text() {
        let tokenizer = tiny();
        let im_end = tokenizer.token_to_id("<|im_end|>").expect("special token");
        for (name, mut d) in decoders(&tokenizer) {
            let mut out = String::new();
            d.push(im_end, &mut out);
            d.flush(&mut out);
            assert_eq!(out, "", "{name}");
        }
    }

    #[test]
    fn kept_special_tokens_show_as_their_text() {
        let tokenizer = tiny();
        let im_start = tokenizer.token_to_id("<|im_start|>").expect("special token");
        let im_end = tokenizer.token_to_id("<|im_end|>").expect("special token");
        let hi = tokenizer.encode("hi", false).expect("encodes").get_ids().to_vec();
        for (name, d) in decoders(&tokenizer) {
            let mut d = d.keeping(Arc::from(vec![(im_start, Box::from("<|im_start|>"))]));
            let mut out = String::new();
            for &id in hi.iter().chain([im_start, im_end].iter()).chain(hi.iter()) {
                d.push(id, &mut out);
            }
            d.flush(&mut out);
            assert_eq!(out, "hi<|im_start|>hi", "{name}");
        }
    }

    #[test]
    fn the_alphabet_covers_every_byte_once() {
        let alphabet = reverse_alphabet();
        let mut seen: Vec<u8> = alphabet.iter().flatten().copied().collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..=255).collect::<Vec<u8>>());
        assert_eq!(alphabet['Ġ' as usize], Some(b' '));
    }
}
