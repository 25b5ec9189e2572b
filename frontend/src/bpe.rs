//! A fast encoder for byte-level BPE tokenizers (GPT-2, Llama 3, Qwen and their kin), giving
//! the same ids as `tokenizers` at a fraction of the cost.
//!
//! `tokenizers` spends most of an encode in its pre-tokenizer regex (run by `fancy-regex`,
//! for the `\s+(?!\S)` look-ahead) and in per-token string allocations. Here the split runs on
//! the `regex` crate's DFA, with the look-ahead emulated after the match (a whitespace run
//! followed by a non-space gives up its last character, exactly what `\s+(?!\S)` does), and
//! BPE works on ids with a cache of pieces seen before. It applies only to tokenizers whose
//! whole pipeline it knows (see [`FastBpe::from_tokenizer_json`]) and is checked against
//! `tokenizers` on a probe text at load; anything else keeps the `tokenizers` path.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use aho_corasick::{AhoCorasick, MatchKind};
use regex::Regex;
use serde_json::Value;

/// GPT-2's split pattern, used by `ByteLevel` pre-tokenizers with `use_regex: true`.
const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// The look-ahead alternative the `regex` crate cannot run; patterns must end with it and `\s+`.
const LOOKAHEAD_TAIL: &str = r"\s+(?!\S)|\s+";
/// Pieces longer than this go to `tokenizers` (its heap-based merge suits them better).
const MAX_PIECE_BYTES: usize = 256;
/// Entries the piece cache holds before it stops growing.
const CACHE_CAPACITY: usize = 100_000;

/// Text the encoder is checked on at load: words, numbers, contractions, punctuation, runs of
/// spaces, tabs and newlines, non-Latin scripts, emoji and a special-token look-alike.
const PROBE: &str = "Hello, world! It's 2024-07-26; I'd've paid $1,234.56 (really).\n\n  Indented\tline\r\n\
    \u{3000}full-width space, naïve café — 日本語のテキスト, Привет мир, مرحبا 😀👍🏽\n    def f(x):\n\
    \t\treturn x**2  # trailing   \n\n\n<|not_special|> <tag>   end  ";

/// The fast encoder of one tokenizer.
#[derive(Debug)]
pub struct FastBpe {
    /// Added tokens, matched leftmost-longest before anything else, and their ids.
    specials: Option<(AhoCorasick, Vec<u32>)>,
    splitter: Regex,
    /// The pattern's alternatives before the trailing `\s+(?!\S)|\s+`, anchored: a match they
    /// make is theirs; any other whitespace match is the look-ahead's.
    head: Regex,
    /// Only ASCII text takes this path (the tokenizer normalizes with NFC, a no-op on ASCII).
    ascii_only: bool,
    /// The id of each single byte.
    byte_ids: Vec<u32>,
    /// (left, right) → (rank, merged id).
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// `ignore_merges`: a piece that is a token is that token.
    whole_pieces: Option<HashMap<Vec<u8>, u32>>,
    cache: RwLock<PieceCache>,
}

/// Ids of pieces already merged, by the piece's bytes.
type PieceCache = HashMap<Box<[u8]>, Box<[u32]>>;

impl FastBpe {
    /// The encoder for `tokenizer.json`, when its pipeline is one this module reproduces
    /// exactly: no normalizer (or NFC, for ASCII text), a byte-level pre-tokenizer (GPT-2's
    /// regex, or a `Split` regex ending in `\s+(?!\S)|\s+` then `ByteLevel` without regex), a
    /// plain BPE model over the full byte alphabet, and added tokens without strip/word flags.
    pub fn from_tokenizer_json(json: &[u8]) -> Option<FastBpe> {
        let root: Value = serde_json::from_slice(json).ok()?;
        let ascii_only = match &root["normalizer"] {
            Value::Null => false,
            n if n["type"] == "NFC" => true,
            _ => return None,
        };
        let pattern = split_pattern(&root["pre_tokenizer"])?;
        let head = pattern.strip_suffix(LOOKAHEAD_TAIL)?;
        let splitter = Regex::new(&format!("{head}\\s+")).ok()?;
        let head = Regex::new(&format!("^(?:{})", head.strip_suffix('|')?)).ok()?;
        let model = &root["model"];
        let plain = |key: &str| model[key].is_null() || model[key] == "";
        if model["type"] != "BPE"
            || !model["dropout"].is_null()
            || model["byte_fallback"].as_bool().unwrap_or(false)
            || !plain("continuing_subword_prefix")
            || !plain("end_of_word_suffix")
        {
            return None;
        }
        let vocab: HashMap<&str, u32> = model["vocab"]
            .as_object()?
            .iter()
            .map(|(token, id)| Some((token.as_str(), u32::try_from(id.as_u64()?).ok()?)))
            .collect::<Option<_>>()?;
        let alphabet = byte_alphabet();
        let mut buf = [0u8; 4];
        let byte_ids = alphabet
            .iter()
            .map(|c| vocab.get(&*c.encode_utf8(&mut buf)).copied())
            .collect::<Option<Vec<u32>>>()?;
        let merges = parse_merges(&model["merges"], &vocab)?;
        let whole_pieces = model["ignore_merges"].as_bool().unwrap_or(false).then(|| {
            let reverse = reverse_alphabet();
            vocab
                .iter()
                .filter_map(|(token, &id)| Some((token_bytes(token, &reverse)?, id)))
                .collect()
        });
        let specials = parse_added_tokens(&root["added_tokens"])?;
        let encoder = FastBpe {
            specials,
            splitter,
            head,
            ascii_only,
            byte_ids,
            merges,
            whole_pieces,
            cache: RwLock::new(HashMap::new()),
        };
        Some(encoder)
    }

    /// Whether this encoder gives `reference`'s ids on the probe text and on `extra` (with
    /// non-ASCII characters replaced when only ASCII takes this path).
    pub fn agrees_with(&self, reference: &tokenizers::Tokenizer, extra: &str) -> bool {
        [PROBE, extra].into_iter().all(|text| {
            let text = if self.ascii_only {
                Cow::Owned(text.replace(|c: char| !c.is_ascii(), "?"))
            } else {
                Cow::Borrowed(text)
            };
            let mut ids = Vec::new();
            self.encode(&text, &mut ids)
                && reference
                    .encode_fast(text.as_ref(), false)
                    .is_ok_and(|e| e.get_ids() == ids.as_slice())
        })
    }

    /// Appends the ids of `text` (no special tokens added) to `out`. False when this text
    /// must take the `tokenizers` path instead (`out` is then unspecified).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> bool {
        if self.ascii_only && !text.is_ascii() {
            return false;
        }
        out.reserve(text.len() / 3);
        let Some((specials, ids)) = &self.specials else {
            return self.encode_segment(text, out);
        };
        let mut start = 0;
        for found in specials.find_iter(text) {
            if !self.encode_segment(&text[start..found.start()], out) {
                return false;
            }
            out.push(ids[found.pattern().as_usize()]);
            start = found.end();
        }
        self.encode_segment(&text[start..], out)
    }

    /// A stretch of text without added tokens: split, then BPE on each piece.
    fn encode_segment(&self, text: &str, out: &mut Vec<u32>) -> bool {
        let mut pos = 0;
        while pos < text.len() {
            let Some(found) = self.splitter.find_at(text, pos) else {
                return self.encode_piece(&text.as_bytes()[pos..], out);
            };
            if found.start() > pos && !self.encode_piece(&text.as_bytes()[pos..found.start()], out)
            {
                return false;
            }
            let mut end = found.end();
            let piece = found.as_str();
            // `\s+(?!\S)`: a whitespace run followed by a non-space leaves its last character
            // to the next piece, unless an earlier alternative made the match.
            if end < text.len()
                && let Some(last) = piece.chars().next_back()
                && piece.len() > last.len_utf8()
                && piece.chars().all(char::is_whitespace)
                && !self.head.is_match(&text[found.start()..])
            {
                end -= last.len_utf8();
            }
            if !self.encode_piece(&text.as_bytes()[found.start()..end], out) {
                return false;
            }
            pos = end;
        }
        true
    }

    fn encode_piece(&self, piece: &[u8], out: &mut Vec<u32>) -> bool {
        match piece {
            [] => return true,
            [b] => {
                out.push(self.byte_ids[*b as usize]);
                return true;
            }
            _ if piece.len() > MAX_PIECE_BYTES => return false,
            _ => {}
        }
        if let Some(&id) = self.whole_pieces.as_ref().and_then(|w| w.get(piece)) {
            out.push(id);
            return true;
        }
        // A busy lock is a miss, not a wait: computing the piece is cheaper than blocking.
        if let Ok(cache) = self.cache.try_read()
            && let Some(ids) = cache.get(piece)
        {
            out.extend_from_slice(ids);
            return true;
        }
        let ids = self.merge(piece);
        out.extend_from_slice(&ids);
        let mut cache = match self.cache.try_write() {
            Ok(cache) => cache,
            Err(std::sync::TryLockError::Poisoned(p)) => PoisonError::into_inner(p),
            Err(std::sync::TryLockError::WouldBlock) => return true,
        };
        if cache.len() < CACHE_CAPACITY {
            cache.insert(piece.into(), ids.into_boxed_slice());
        }
        true
    }

    /// BPE: merge the adjacent pair of lowest rank (leftmost on ties) until none merges.
    fn merge(&self, piece: &[u8]) -> Vec<u32> {
        let mut ids: Vec<u32> = piece.iter().map(|&b| self.byte_ids[b as usize]).collect();
        loop {
            let best = ids
                .windows(2)
                .enumerate()
                .filter_map(|(i, pair)| {
                    self.merges.get(&(pair[0], pair[1])).map(|&(rank, id)| (rank, i, id))
                })
                .min();
            let Some((_, i, id)) = best else { return ids };
            ids[i] = id;
            ids.remove(i + 1);
        }
    }
}

/// The split regex of a supported pre-tokenizer.
fn split_pattern(pre: &Value) -> Option<String> {
    let byte_level = |p: &Value, use_regex: bool| {
        p["type"] == "ByteLevel"
            && !p["add_prefix_space"].as_bool().unwrap_or(true)
            && p["use_regex"].as_bool().unwrap_or(true) == use_regex
    };
    if byte_level(pre, true) {
        return Some(GPT2_PATTERN.to_owned());
    }
    match pre["pretokenizers"].as_array().map(Vec::as_slice) {
        Some([split, bl])
            if pre["type"] == "Sequence"
                && split["type"] == "Split"
                && split["behavior"] == "Isolated"
                && !split["invert"].as_bool().unwrap_or(false)
                && byte_level(bl, false) =>
        {
            split["pattern"]["Regex"].as_str().map(str::to_owned)
        }
        _ => None,
    }
}

/// `merges` as either `["a b", …]` or `[["a", "b"], …]`; later duplicates win, as in
/// `tokenizers`.
fn parse_merges(
    merges: &Value,
    vocab: &HashMap<&str, u32>,
) -> Option<HashMap<(u32, u32), (u32, u32)>> {
    let list = merges.as_array()?;
    let mut map = HashMap::with_capacity(list.len());
    for (rank, merge) in list.iter().enumerate() {
        let (a, b) = match merge {
            Value::String(s) => s.split_once(' ')?,
            Value::Array(pair) => (pair.first()?.as_str()?, pair.get(1)?.as_str()?),
            _ => return None,
        };
        let merged = vocab.get(format!("{a}{b}").as_str())?;
        map.insert((*vocab.get(a)?, *vocab.get(b)?), (u32::try_from(rank).ok()?, *merged));
    }
    Some(map)
}

/// Added tokens, when none needs stripping, word boundaries or normalization.
fn parse_added_tokens(added: &Value) -> Option<Option<(AhoCorasick, Vec<u32>)>> {
    let Some(list) = added.as_array().filter(|l| !l.is_empty()) else {
        return Some(None);
    };
    let mut contents = Vec::with_capacity(list.len());
    let mut ids = Vec::with_capacity(list.len());
    for token in list {
        let flag = |key: &str| token[key].as_bool().unwrap_or(false);
        if flag("single_word") || flag("lstrip") || flag("rstrip") || flag("normalized") {
            return None;
        }
        contents.push(token["content"].as_str()?);
        ids.push(u32::try_from(token["id"].as_u64()?).ok()?);
    }
    let matcher =
        AhoCorasick::builder().match_kind(MatchKind::LeftmostLongest).build(&contents).ok()?;
    Some(Some((matcher, ids)))
}

/// GPT-2's byte → character map: `alphabet[b]` stands for byte `b` in byte-level tokens.
pub(crate) fn byte_alphabet() -> Vec<char> {
    let mut shifted = 0u32;
    (0..=255u8)
        .map(|b| {
            let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
            let code = if printable {
                u32::from(b)
            } else {
                shifted += 1;
                255 + shifted
            };
            char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
        })
        .collect()
}

/// The reverse of [`byte_alphabet`]: `reverse[c as usize]` is the byte character `c` stands
/// for (the characters all lie below U+0144).
pub(crate) fn reverse_alphabet() -> Vec<Option<u8>> {
    let mut reverse = vec![None; 0x200];
    for (b, c) in (0..=255u8).zip(byte_alphabet()) {
        if let Some(slot) = reverse.get_mut(c as usize) {
            *slot = Some(b);
        }
    }
    reverse
}

/// The bytes a byte-level token stands for, if every character is in the alphabet.
fn token_bytes(token: &str, reverse: &[Option<u8>]) -> Option<Vec<u8>> {
    token.chars().map(|c| reverse.get(c as usize).copied().flatten()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_model::ModelFiles;

    fn tiny() -> (FastBpe, tokenizers::Tokenizer) {
        let files = ModelFiles::resolve(switchyard_model::DEFAULT_SOURCE).expect("builtin model");
        let fast = FastBpe::from_tokenizer_json(&files.tokenizer_json).expect("supported");
        (fast, tokenizers::Tokenizer::from_bytes(&files.tokenizer_json).expect("tokenizer"))
    }

    #[test]
    fn the_builtin_tokenizer_is_reproduced_exactly() {
        let (fast, reference) = tiny();
        assert!(fast.agrees_with(&reference, ""));
        let texts = [
            "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
            "a  b   c    d\n\n\ne \t f\u{a0}\u{a0}g  ",
            "   leading and trailing   ",
            "x<|im_end|><|im_end|>y",
            "",
        ];
        for text in texts {
            let mut ids = Vec::new();
            assert!(fast.encode(text, &mut ids), "{text:?}");
            let expected = reference.encode_fast(text, false).expect("encodes");
            assert_eq!(ids, expected.get_ids(), "{text:?}");
            // Twice: the second run comes from the cache.
            let mut again = Vec::new();
            assert!(fast.encode(text, &mut again));
            assert_eq!(again, ids);
        }
    }

    #[test]
    fn a_llama3_style_split_pattern_is_emulated() {
        let pattern = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        let files = ModelFiles::resolve(switchyard_model::DEFAULT_SOURCE).expect("builtin model");
        let mut json: Value = serde_json::from_slice(&files.tokenizer_json).expect("json");
        json["pre_tokenizer"] = serde_json::json!({
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
            ]
        });
        json["model"]["ignore_merges"] = Value::Bool(true);
        let bytes = serde_json::to_vec(&json).expect("json");
        let fast = FastBpe::from_tokenizer_json(&bytes).expect("supported");
        let reference = tokenizers::Tokenizer::from_bytes(&bytes).expect("tokenizer");
        assert!(fast.agrees_with(&reference, "Tab\t\tthen  \n  newline\r\n\r\n   x 12345 DON'T"));
    }

    #[test]
    fn unsupported_pipelines_are_refused() {
        let files = ModelFiles::resolve(switchyard_model::DEFAULT_SOURCE).expect("builtin model");
        let mut json: Value = serde_json::from_slice(&files.tokenizer_json).expect("json");
        json["normalizer"] = serde_json::json!({"type": "Lowercase"});
        assert!(FastBpe::from_tokenizer_json(&serde_json::to_vec(&json).expect("json")).is_none());
    }
}
