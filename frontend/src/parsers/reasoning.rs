//! `<think>…</think>` reasoning (Qwen3, QwQ, DeepSeek-R1): reasoning before the end tag,
//! the answer after it. Whitespace around the tags is trimmed, as the tags' own line breaks
//! are not part of either text.

use super::ParsedDelta;
use super::marker::{Scan, scan};

pub(super) const THINK_START: &str = "<think>";
const THINK_END: &str = "</think>";

#[derive(Debug)]
pub(super) struct ThinkParser {
    state: State,
    /// Text not yet released (a possible tag, leading or trailing whitespace).
    held: String,
    /// Whether output without a `<think>` is reasoning (the prompt opened the block).
    starts_in_reasoning: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before the first non-blank text: is there a `<think>`?
    Start,
    /// Inside the reasoning; `fresh` until its first non-blank text.
    Reasoning { fresh: bool },
    /// The answer; `fresh` until its first non-blank text.
    Content { fresh: bool },
}

impl ThinkParser {
    pub fn new(starts_in_reasoning: bool) -> ThinkParser {
        ThinkParser { state: State::Start, held: String::new(), starts_in_reasoning }
    }

    pub fn push(&mut self, text: &str, out: &mut ParsedDelta) {
        self.held.push_str(text);
        loop {
            match self.state {
                State::Start => {
                    let trimmed = self.held.trim_start();
                    if let Some(rest) = trimmed.strip_prefix(THINK_START) {
                        self.held = rest.to_owned();
                        self.state = State::Reasoning { fresh: true };
                    } else if trimmed.is_empty() || THINK_START.starts_with(trimmed) {
                        return;
                    } else if self.starts_in_reasoning {
                        self.state = State::Reasoning { fresh: true };
                    } else {
                        self.state = State::Content { fresh: true };
                    }
                }
                State::Reasoning { fresh } => {
                    if fresh {
                        let start = self.held.len() - self.held.trim_start().len();
                        self.held.drain(..start);
                        if self.held.is_empty() {
                            return;
                        }
                        self.state = State::Reasoning { fresh: false };
                    }
                    match scan(&self.held, &[THINK_END]) {
                        Scan::Found { at, .. } => {
                            out.reasoning.push_str(self.held[..at].trim_end());
                            self.held.drain(..at + THINK_END.len());
                            self.state = State::Content { fresh: true };
                        }
                        Scan::NotFound { release } => {
                            // Trailing blanks wait: they are dropped if the end tag follows.
                            let release = self.held[..release].trim_end().len();
                            out.reasoning.push_str(&self.held[..release]);
                            self.held.drain(..release);
                            return;
                        }
                    }
                }
                State::Content { fresh } => {
                    if fresh {
                        let start = self.held.len() - self.held.trim_start().len();
                        self.held.drain(..start);
                        if self.held.is_empty() {
                            return;
                        }
                        self.state = State::Content { fresh: false };
                    }
                    out.content.push_str(&self.held);
                    self.held.clear();
                    return;
                }
            }
        }
    }

    pub fn finish(&mut self, out: &mut ParsedDelta) {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Start if self.starts_in_reasoning => out.reasoning.push_str(held.trim()),
            State::Start => out.content.push_str(held.trim_start()),
            State::Reasoning { .. } => out.reasoning.push_str(held.trim_end()),
            State::Content { .. } => out.content.push_str(&held),
        }
    }
}
