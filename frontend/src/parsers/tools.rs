//! Tool calls in a model's answer text. Hermes-style calls are found anywhere between text;
//! Mistral's follow their marker to the end; Llama 3 JSON and pythonic calls are recognised
//! when the answer starts with them. A call that does not parse is returned as text.

use serde_json::Value;

use super::marker::{Scan, may_start_with, scan};
use super::{ParsedDelta, ToolCall, ToolParserKind, pythonic};

const HERMES_START: &str = "<tool_call>";
const HERMES_END: &str = "</tool_call>";
const MISTRAL_CALLS: &str = "[TOOL_CALLS]";
const MISTRAL_ARGS: &str = "[ARGS]";
const MISTRAL_CALL_ID: &str = "[CALL_ID]";
const PYTHON_TAG: &str = "<|python_tag|>";
const PYTHON_START: &str = "<|python_start|>";
const PYTHON_END: &str = "<|python_end|>";

pub(super) const MISTRAL_SPECIAL_TOKENS: &[&str] = &[MISTRAL_CALLS, MISTRAL_ARGS, MISTRAL_CALL_ID];
pub(super) const LLAMA3_SPECIAL_TOKENS: &[&str] = &[PYTHON_TAG];

#[derive(Debug)]
pub(super) struct ToolParser {
    kind: ToolParserKind,
    state: State,
    held: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before any non-blank answer text (Llama 3 JSON and pythonic decide here).
    Start,
    /// Plain answer text; `after_call` drops blanks that only separate calls.
    Text { after_call: bool },
    /// Inside a Hermes `<tool_call>` block.
    InCall,
    /// Everything from here to the end is tool calls (Mistral, Llama 3, pythonic).
    Calls,
}

impl ToolParser {
    pub fn new(kind: ToolParserKind) -> ToolParser {
        ToolParser { kind, state: State::Start, held: String::new() }
    }

    /// Parses the answer text `text`, adding to `out.content` and `out.tool_calls`.
    pub fn push(&mut self, text: &str, out: &mut ParsedDelta) {
        self.held.push_str(text);
        loop {
            match self.state {
                State::Start => {
                    let trimmed = self.held.trim_start();
                    if trimmed.is_empty() {
                        return;
                    }
                    let leading: &[&str] = match self.kind {
                        ToolParserKind::Llama3Json => &[PYTHON_TAG, "{"],
                        ToolParserKind::Pythonic => &[PYTHON_START, "["],
                        _ => &[],
                    };
                    if leading.iter().any(|p| trimmed.starts_with(p)) {
                        self.state = State::Calls;
                    } else if may_start_with(trimmed, leading) {
                        return;
                    } else {
                        self.state = State::Text { after_call: false };
                    }
                }
                State::Text { after_call } => {
                    if after_call {
                        let start = self.held.len() - self.held.trim_start().len();
                        self.held.drain(..start);
                        if self.held.is_empty() {
                            return;
                        }
                    }
                    let markers: &[&str] = match self.kind {
                        ToolParserKind::Hermes => &[HERMES_START],
                        ToolParserKind::Mistral => &[MISTRAL_CALLS],
                        _ => &[],
                    };
                    match scan(&self.held, markers) {
                        Scan::Found { at, .. } => {
                            out.content.push_str(&self.held[..at]);
                            let marker = markers.first().map_or(0, |m| m.len());
                            self.held.drain(..at + marker);
                            self.state = match self.kind {
                                ToolParserKind::Hermes => State::InCall,
                                _ => State::Calls,
                            };
                        }
                        Scan::NotFound { release } => {
                            out.content.push_str(&self.held[..release]);
                            self.held.drain(..release);
                            self.state = State::Text { after_call: false };
                            return;
                        }
                    }
                }
                State::InCall => match self.held.find(HERMES_END) {
                    Some(at) => {
                        let body = self.held[..at].to_owned();
                        self.held.drain(..at + HERMES_END.len());
                        self.hermes_call(&body, true, out);
                    }
                    None => return,
                },
                State::Calls => return,
            }
        }
    }

    /// The end of the answer: held calls are parsed, or returned as text.
    pub fn finish(&mut self, out: &mut ParsedDelta) {
        let held = std::mem::take(&mut self.held);
        match self.state {
            State::Start => out.content.push_str(held.trim_start()),
            State::Text { after_call } => {
                out.content.push_str(if after_call { held.trim_start() } else { &held });
            }
            // A call cut off by the end of the output (no closing tag) may still be whole.
            State::InCall => self.hermes_call(&held, false, out),
            State::Calls => {
                let calls = match self.kind {
                    ToolParserKind::Mistral => mistral_calls(&held),
                    ToolParserKind::Llama3Json => llama3_calls(&held),
                    ToolParserKind::Pythonic => pythonic_calls(&held),
                    _ => None,
                };
                match calls {
                    Some(calls) if !calls.is_empty() => out.tool_calls.extend(calls),
                    _ if self.kind == ToolParserKind::Mistral => {
                        out.content.push_str(MISTRAL_CALLS);
                        out.content.push_str(&held);
                    }
                    _ => out.content.push_str(held.trim_start()),
                }
            }
        }
        self.state = State::Text { after_call: false };
    }

    fn hermes_call(&mut self, body: &str, closed: bool, out: &mut ParsedDelta) {
        match json_call(body.trim()) {
            Some(call) => {
                out.tool_calls.push(call);
                self.state = State::Text { after_call: true };
            }
            None => {
                out.content.push_str(HERMES_START);
                out.content.push_str(body);
                if closed {
                    out.content.push_str(HERMES_END);
                }
                self.state = State::Text { after_call: false };
            }
        }
    }
}

/// `{"name": "f", "arguments": {…}}` (or `"parameters"`); arguments may be a JSON string.
fn json_call(text: &str) -> Option<ToolCall> {
    let value: Value = serde_json::from_str(text).ok()?;
    call_from_value(&value)
}

fn call_from_value(value: &Value) -> Option<ToolCall> {
    let name = value.get("name")?.as_str()?.to_owned();
    let arguments = match value.get("arguments").or_else(|| value.get("parameters")) {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::String(s)) => {
            // Already JSON text: it must parse, or the call is malformed.
            serde_json::from_str::<Value>(s).ok()?;
            s.clone()
        }
        Some(args @ Value::Object(_)) => args.to_string(),
        Some(_) => return None,
    };
    Some(ToolCall::new(name, arguments))
}

/// JSON objects one after another, separated by blanks or `;`.
fn json_objects(text: &str) -> Option<Vec<Value>> {
    let mut values = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
        let value = stream.next()?.ok()?;
        let used = stream.byte_offset();
        values.push(value);
        rest = rest[used..].trim_start().trim_start_matches(';').trim_start();
    }
    Some(values)
}

/// Mistral: `[{"name": …, "arguments": …}, …]` or `name[ARGS]{…}` (optionally with
/// `[CALL_ID]id`), several separated by `[TOOL_CALLS]`.
fn mistral_calls(text: &str) -> Option<Vec<ToolCall>> {
    let text = text.trim();
    if text.starts_with('[') {
        let values: Vec<Value> = serde_json::from_str(text).ok()?;
        return values.iter().map(call_from_value).collect();
    }
    text.split(MISTRAL_CALLS)
        .filter(|part| !part.trim().is_empty())
        .map(|part| {
            let (head, args) = part.split_once(MISTRAL_ARGS)?;
            let name = head.split(MISTRAL_CALL_ID).next()?.trim();
            let args: Value = serde_json::from_str(args.trim()).ok()?;
            (!name.is_empty() && args.is_object())
                .then(|| ToolCall::new(name.to_owned(), args.to_string()))
        })
        .collect()
}

/// Llama 3: optional `<|python_tag|>`, then `;`-separated JSON calls.
fn llama3_calls(text: &str) -> Option<Vec<ToolCall>> {
    let text = text.trim_start();
    let text = text.strip_prefix(PYTHON_TAG).unwrap_or(text);
    json_objects(text)?.iter().map(call_from_value).collect()
}

/// Pythonic: `[f(a=1), g(b="x")]`, optionally inside `<|python_start|>…<|python_end|>`.
fn pythonic_calls(text: &str) -> Option<Vec<ToolCall>> {
    let text = text.trim();
    let text = text.strip_prefix(PYTHON_START).unwrap_or(text);
    let text = text.strip_suffix(PYTHON_END).unwrap_or(text);
    let calls = pythonic::parse_calls(text.trim())?;
    Some(calls.into_iter().map(|(name, args)| ToolCall::new(name, args.to_string())).collect())
}
