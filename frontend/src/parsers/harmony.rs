//! gpt-oss's harmony format: the output is messages, each a header (`<|channel|>NAME`,
//! perhaps ` to=functions.NAME`, `<|constrain|>json`) then `<|message|>` and a body ended by
//! `<|end|>`, `<|call|>` or `<|return|>`. The `analysis` channel is reasoning, `final` the
//! answer, and a `commentary` message to `functions.NAME` a tool call.

use super::marker::{Scan, may_start_with, scan};
use super::{ParsedDelta, ToolCall};

const START: &str = "<|start|>";
const CHANNEL: &str = "<|channel|>";
const MESSAGE: &str = "<|message|>";
const END: &str = "<|end|>";
const CALL: &str = "<|call|>";
const RETURN: &str = "<|return|>";
const CONSTRAIN: &str = "<|constrain|>";

/// The special tokens the parser must see in the text.
pub(super) const SPECIAL_TOKENS: &[&str] = &[START, CHANNEL, MESSAGE, END, CALL, RETURN, CONSTRAIN];

#[derive(Debug)]
pub(super) struct HarmonyParser {
    state: State,
    held: String,
    tools: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Reading a message header, up to `<|message|>`.
    Header,
    /// Streaming a message body to reasoning or content.
    Body { reasoning: bool },
    /// Collecting the arguments of a call to `name`.
    Call { name: String },
}

impl HarmonyParser {
    pub fn new(tools: bool) -> HarmonyParser {
        HarmonyParser { state: State::Header, held: String::new(), tools }
    }

    pub fn push(&mut self, text: &str, out: &mut ParsedDelta) {
        self.held.push_str(text);
        loop {
            match &self.state {
                State::Header => {
                    if let Some(at) = self.held.find(MESSAGE) {
                        let header = self.held[..at].to_owned();
                        self.held.drain(..at + MESSAGE.len());
                        self.state = self.body_state(&header);
                        continue;
                    }
                    // Text that is no header at all (the model skipped the format): the answer.
                    let trimmed = self.held.trim_start();
                    let is_header = trimmed.is_empty()
                        || may_start_with(trimmed, &[START, CHANNEL, " to=", "to=", "assistant"])
                        || trimmed.starts_with("<|");
                    if is_header {
                        return;
                    }
                    self.state = State::Body { reasoning: false };
                }
                State::Body { reasoning } => {
                    let reasoning = *reasoning;
                    let target = if reasoning { &mut out.reasoning } else { &mut out.content };
                    match scan(&self.held, &[END, CALL, RETURN, START]) {
                        Scan::Found { at, which } => {
                            target.push_str(&self.held[..at]);
                            let skip =
                                if which == 3 { 0 } else { [END, CALL, RETURN][which].len() };
                            self.held.drain(..at + skip);
                            self.state = State::Header;
                        }
                        Scan::NotFound { release } => {
                            target.push_str(&self.held[..release]);
                            self.held.drain(..release);
                            return;
                        }
                    }
                }
                State::Call { name } => match scan(&self.held, &[CALL, END, RETURN]) {
                    Scan::Found { at, which } => {
                        let name = name.clone();
                        let args = self.held[..at].to_owned();
                        self.held.drain(..at + [CALL, END, RETURN][which].len());
                        emit_call(name, &args, out);
                        self.state = State::Header;
                    }
                    Scan::NotFound { .. } => return,
                },
            }
        }
    }

    pub fn finish(&mut self, out: &mut ParsedDelta) {
        let held = std::mem::take(&mut self.held);
        match std::mem::replace(&mut self.state, State::Header) {
            State::Header => {
                let trimmed = held.trim();
                if !trimmed.starts_with("<|") {
                    out.content.push_str(trimmed);
                }
            }
            State::Body { reasoning: true } => out.reasoning.push_str(&held),
            State::Body { reasoning: false } => out.content.push_str(&held),
            State::Call { name } => emit_call(name, &held, out),
        }
    }

    /// What the body after `header` is.
    fn body_state(&self, header: &str) -> State {
        let channel = header
            .rsplit(CHANNEL)
            .next()
            .filter(|_| header.contains(CHANNEL))
            .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '<').next())
            .unwrap_or("final");
        let recipient = header
            .split("to=")
            .nth(1)
            .and_then(|rest| rest.split(|c: char| c.is_whitespace() || c == '<').next());
        match (channel, recipient) {
            (_, Some(to)) if self.tools => match to.strip_prefix("functions.") {
                Some(name) => State::Call { name: name.to_owned() },
                None => State::Call { name: to.to_owned() },
            },
            ("analysis", _) => State::Body { reasoning: true },
            _ => State::Body { reasoning: false },
        }
    }
}

/// A call with JSON arguments; anything else comes back as text.
fn emit_call(name: String, args: &str, out: &mut ParsedDelta) {
    let args = args.trim();
    match serde_json::from_str::<serde_json::Value>(args) {
        Ok(value) if value.is_object() => {
            out.tool_calls.push(ToolCall::new(name, value.to_string()))
        }
        _ => out.content.push_str(args),
    }
}
