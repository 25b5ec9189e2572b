//! Reading OpenAI responses as they arrive: server-sent-event lines split out of body frames
//! without copying (a line is copied only when it straddles two frames), and each `data:`
//! chunk parsed in place for the one thing measured — the text it carries — plus `usage`.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, SeqAccess, Visitor};

use crate::config::Endpoint;
use crate::record::{Failure, FailureKind, RequestRecord};

/// Splits body frames into lines, keeping a partial last line for the next frame.
#[derive(Debug, Default)]
pub(crate) struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    /// Calls `on_line` with each complete line of `frame` (without `\n` or `\r`); stops early
    /// when it returns an error.
    pub(crate) fn feed<E>(
        &mut self,
        mut frame: &[u8],
        mut on_line: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        if !self.pending.is_empty() {
            let Some(at) = memchr::memchr(b'\n', frame) else {
                self.pending.extend_from_slice(frame);
                return Ok(());
            };
            self.pending.extend_from_slice(&frame[..at]);
            let line = std::mem::take(&mut self.pending);
            let result = on_line(trim_cr(&line));
            // Keep the allocation for the next straddling line.
            self.pending = line;
            self.pending.clear();
            result?;
            frame = &frame[at + 1..];
        }
        let mut start = 0;
        for at in memchr::memchr_iter(b'\n', frame) {
            on_line(trim_cr(&frame[start..at]))?;
            start = at + 1;
        }
        self.pending.extend_from_slice(&frame[start..]);
        Ok(())
    }

    /// What is left after the last newline (a final line without one).
    pub(crate) fn rest(&self) -> &[u8] {
        trim_cr(&self.pending)
    }
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// What one SSE line meant.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// A comment, a blank line, a non-data field or a chunk: keep reading.
    More,
    /// `data: [DONE]`.
    Done,
}

/// Handles one SSE line received at `now`, appending to `record`.
pub(crate) fn on_sse_line(
    line: &[u8],
    endpoint: Endpoint,
    now: Duration,
    record: &mut RequestRecord,
) -> Result<Line, Failure> {
    let Some(data) = line.strip_prefix(b"data:") else {
        return Ok(Line::More);
    };
    let data = data.strip_prefix(b" ").unwrap_or(data);
    if data == b"[DONE]" {
        return Ok(Line::Done);
    }
    on_json(data, endpoint, false, now, record)?;
    Ok(Line::More)
}

/// Handles one JSON chunk (`whole`: a non-streamed response body, its text in `message`).
pub(crate) fn on_json(
    data: &[u8],
    endpoint: Endpoint,
    whole: bool,
    now: Duration,
    record: &mut RequestRecord,
) -> Result<(), Failure> {
    let chunk: Chunk<'_> = serde_json::from_slice(data).map_err(|e| Failure {
        kind: FailureKind::Protocol,
        message: format!("unreadable response chunk: {e}: {}", String::from_utf8_lossy(data)),
    })?;
    if let Some(error) = chunk.error {
        return Err(Failure { kind: FailureKind::StreamError, message: error.to_string() });
    }
    if let Some(usage) = chunk.usage {
        record.usage_completion_tokens = usage.completion_tokens.or(record.usage_completion_tokens);
        record.usage_prompt_tokens = usage.prompt_tokens.or(record.usage_prompt_tokens);
        let cached = usage.prompt_tokens_details.and_then(|d| d.cached_tokens);
        record.usage_cached_tokens = cached.or(record.usage_cached_tokens);
    }
    let Some(choice) = chunk.choices.0 else {
        return Ok(());
    };
    let text = match (endpoint, whole) {
        (Endpoint::Completions, _) => choice.text,
        (Endpoint::Chat, false) => choice.delta.and_then(|d| d.content),
        (Endpoint::Chat, true) => choice.message.and_then(|d| d.content),
    };
    if let Some(Text(text)) = text
        && !text.is_empty()
    {
        record.text.push_str(&text);
        record.chunk_times.push(now);
        record.chunk_text_ends.push(u32::try_from(record.text.len()).unwrap_or(u32::MAX));
    }
    Ok(())
}

/// The parts of a completion chunk (or body) that are measured; everything else is skipped
/// without being built.
#[derive(Deserialize)]
struct Chunk<'a> {
    #[serde(default, borrow)]
    choices: FirstChoice<'a>,
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    error: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Usage {
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptTokensDetails>,
}

#[derive(Deserialize)]
struct PromptTokensDetails {
    cached_tokens: Option<u32>,
}

#[derive(Deserialize)]
struct Choice<'a> {
    #[serde(default, borrow)]
    text: Option<Text<'a>>,
    #[serde(default, borrow)]
    delta: Option<Content<'a>>,
    #[serde(default, borrow)]
    message: Option<Content<'a>>,
}

#[derive(Deserialize)]
struct Content<'a> {
    #[serde(default, borrow)]
    content: Option<Text<'a>>,
}

/// A string borrowed from the chunk when it has no escapes (the common case), owned otherwise.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text<'a>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// `choices[0]` only: the rest of the list is skipped, and an empty list (the usage chunk)
/// is no choice.
#[derive(Default)]
struct FirstChoice<'a>(Option<Choice<'a>>);

impl<'de: 'a, 'a> Deserialize<'de> for FirstChoice<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<FirstChoice<'a>, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = FirstChoice<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of choices")
            }
            fn visit_unit<E: de::Error>(self) -> Result<FirstChoice<'de>, E> {
                Ok(FirstChoice(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<FirstChoice<'de>, A::Error> {
                let first = seq.next_element::<Choice<'de>>()?;
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(FirstChoice(first))
            }
        }
        deserializer.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn lines_are_split_across_frames() {
        let mut splitter = LineSplitter::default();
        let mut lines: Vec<String> = Vec::new();
        let mut push = |l: &[u8]| -> Result<(), ()> {
            lines.push(String::from_utf8_lossy(l).into_owned());
            Ok(())
        };
        for frame in ["data: a\r\n\r\ndata: b", "c\n", "\nda", "ta: [DONE]\n\n", "tail"] {
            splitter.feed(frame.as_bytes(), &mut push).unwrap();
        }
        assert_eq!(lines, ["data: a", "", "data: bc", "", "data: [DONE]", ""]);
        assert_eq!(splitter.rest(), b"tail");
    }

    #[test]
    fn chat_and_completion_chunks_record_text_and_usage() {
        let mut r = RequestRecord::default();
        let chat = Endpoint::Chat;
        let role = br#"data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#;
        assert_eq!(on_sse_line(role, chat, ms(1), &mut r).unwrap(), Line::More);
        let hi = br#"data: {"choices":[{"delta":{"content":"Hi \"x\""},"finish_reason":null}]}"#;
        on_sse_line(hi, chat, ms(2), &mut r).unwrap();
        on_sse_line(br#"data:{"choices":[{"delta":{"content":"!"}}]}"#, chat, ms(3), &mut r)
            .unwrap();
        let usage = br#"data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":2,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        on_sse_line(usage, chat, ms(4), &mut r).unwrap();
        assert_eq!(on_sse_line(b"data: [DONE]", chat, ms(5), &mut r).unwrap(), Line::Done);
        assert_eq!(on_sse_line(b": keep-alive", chat, ms(5), &mut r).unwrap(), Line::More);
        assert_eq!(r.text, "Hi \"x\"!");
        assert_eq!(r.chunk_times, [ms(2), ms(3)]);
        assert_eq!((r.usage_prompt_tokens, r.usage_completion_tokens), (Some(9), Some(2)));
        assert_eq!(r.usage_cached_tokens, Some(8));

        let mut r = RequestRecord::default();
        let line = br#"data: {"choices":[{"text":"ab","index":0},{"text":"zz"}],"usage":null}"#;
        on_sse_line(line, Endpoint::Completions, ms(7), &mut r).unwrap();
        assert_eq!((r.text.as_str(), r.chunk_times.as_slice()), ("ab", &[ms(7)][..]));

        let body = br#"{"choices":[{"message":{"role":"assistant","content":"whole"}}],"usage":{"completion_tokens":3}}"#;
        let mut r = RequestRecord::default();
        on_json(body, chat, true, ms(9), &mut r).unwrap();
        assert_eq!((r.text.as_str(), r.usage_completion_tokens), ("whole", Some(3)));
    }

    #[test]
    fn error_events_and_garbage_fail_by_kind() {
        let mut r = RequestRecord::default();
        let err = br#"data: {"error":{"message":"boom","type":"internal_error"}}"#;
        let f = on_sse_line(err, Endpoint::Chat, ms(1), &mut r).unwrap_err();
        assert_eq!(f.kind, FailureKind::StreamError);
        assert!(f.message.contains("boom"));
        let f = on_sse_line(b"data: {nope", Endpoint::Chat, ms(1), &mut r).unwrap_err();
        assert_eq!(f.kind, FailureKind::Protocol);
    }
}
