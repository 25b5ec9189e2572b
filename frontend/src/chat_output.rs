//! A chat response's text turned into OpenAI's message fields: through the model's parsers
//! (reasoning, tool calls) when it has any, else all of it as `content`.

use crate::openai::response::{FunctionCallOut, ToolCallOut};
use crate::parsers::{OutputParser, ParsedDelta, ToolCall};

#[derive(Debug, Default)]
pub(crate) struct ChatOutput {
    parser: Option<OutputParser>,
    delta: ParsedDelta,
    /// Tool calls parsed so far.
    made: usize,
    /// Tool calls sent as stream deltas so far (the index of the next one).
    released: usize,
}

impl ChatOutput {
    pub fn new(parser: Option<OutputParser>) -> ChatOutput {
        ChatOutput { parser, ..ChatOutput::default() }
    }

    /// The next piece of text, parsed.
    pub fn push(&mut self, text: &str) -> &ParsedDelta {
        match &mut self.parser {
            Some(parser) => parser.push(text, &mut self.delta),
            None => {
                self.delta.clear();
                self.delta.content.push_str(text);
            }
        }
        self.made += self.delta.tool_calls.len();
        &self.delta
    }

    /// Whatever the parsers held back, at the end of the response.
    pub fn finish(&mut self) -> &ParsedDelta {
        match &mut self.parser {
            Some(parser) => parser.finish(&mut self.delta),
            None => self.delta.clear(),
        }
        self.made += self.delta.tool_calls.len();
        &self.delta
    }

    /// The last delta's tool calls as stream deltas, numbered after the earlier ones; counts
    /// them as released.
    pub fn take_call_deltas(&mut self) -> (&ParsedDelta, Vec<ToolCallOut<'_>>) {
        let first = self.released;
        self.released += self.delta.tool_calls.len();
        let calls = self
            .delta
            .tool_calls
            .iter()
            .enumerate()
            .map(|(i, c)| call_out(c, Some(first + i)))
            .collect();
        (&self.delta, calls)
    }

    /// Whether the response made a tool call (its finish reason is then `tool_calls`).
    pub fn made_calls(&self) -> bool {
        self.made > 0
    }

    /// `stop` becomes `tool_calls` when the model called tools.
    pub fn finish_reason(&self, reason: &'static str) -> &'static str {
        if reason == "stop" && self.made_calls() { "tool_calls" } else { reason }
    }
}

/// A tool call in OpenAI's shape.
pub(crate) fn call_out(call: &ToolCall, index: Option<usize>) -> ToolCallOut<'_> {
    ToolCallOut {
        index,
        id: &call.id,
        kind: "function",
        function: FunctionCallOut { name: &call.name, arguments: &call.arguments },
    }
}
