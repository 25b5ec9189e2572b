//! Parsers of a model's output text, run in the frontend on the detokenized stream (workers
//! return token ids): reasoning split from the answer (`<think>` blocks, gpt-oss channels) and
//! tool calls (Hermes/Qwen `<tool_call>`, Llama 3 JSON, Mistral `[TOOL_CALLS]`, pythonic
//! lists). Text arrives in pieces cut anywhere; a parser holds back only what may be the start
//! of a marker, so streaming and whole responses come out the same. Malformed tool calls come
//! back as text.

mod forced;
mod harmony;
mod marker;
mod pythonic;
mod reasoning;
#[cfg(test)]
mod tests;
mod tools;

use std::fmt;
use std::str::FromStr;

use forced::ForcedParser;
pub(crate) use forced::{Forced, response_format as forced_response_format};
use harmony::HarmonyParser;
use reasoning::ThinkParser;
use tools::ToolParser;

/// `--reasoning-parser`: how a model marks its reasoning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReasoningParserKind {
    /// `<think>…</think>` at the start of the output (Qwen3, QwQ).
    Qwen3,
    /// Like `qwen3`, but the output starts inside the reasoning (the template opened
    /// `<think>`): everything before `</think>` is reasoning (DeepSeek-R1).
    DeepSeekR1,
    /// gpt-oss's harmony channels: `analysis` is reasoning, `final` the answer; also parses
    /// its tool calls (`commentary to=functions.NAME`).
    GptOss,
}

/// `--tool-call-parser`: how a model writes tool calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolParserKind {
    /// `<tool_call>{"name": …, "arguments": …}</tool_call>` (Hermes, Qwen 2.5/3).
    Hermes,
    /// `{"name": …, "parameters": …}` objects, `;`-separated, optionally after
    /// `<|python_tag|>` (Llama 3.1–3.3).
    Llama3Json,
    /// `[TOOL_CALLS][{"name": …, "arguments": …}]` or `[TOOL_CALLS]name[ARGS]{…}` (Mistral).
    Mistral,
    /// `[f(a=1), g(b="x")]` (Llama 3.2 / 4 pythonic).
    Pythonic,
    /// gpt-oss's harmony tool calls (handled with its reasoning channels).
    GptOss,
}

macro_rules! named_kinds {
    ($kind:ty, $what:literal, $($name:literal $(| $alias:literal)* => $variant:expr),+ $(,)?) => {
        impl FromStr for $kind {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($name $(| $alias)* => Ok($variant),)+
                    other => Err(format!(
                        concat!("unknown ", $what, " `{}`; one of: {}"),
                        other,
                        [$($name),+].join(", ")
                    )),
                }
            }
        }
        impl $kind {
            /// The name the flag takes.
            pub fn name(self) -> &'static str {
                $(if self == $variant { return $name; })+
                unreachable!()
            }
        }
        impl fmt::Display for $kind {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

named_kinds!(ReasoningParserKind, "reasoning parser",
    "qwen3" => ReasoningParserKind::Qwen3,
    "deepseek-r1" | "deepseek_r1" => ReasoningParserKind::DeepSeekR1,
    "gpt-oss" | "gpt_oss" | "openai_gptoss" => ReasoningParserKind::GptOss,
);

named_kinds!(ToolParserKind, "tool-call parser",
    "hermes" | "qwen" => ToolParserKind::Hermes,
    "llama3_json" | "llama3-json" => ToolParserKind::Llama3Json,
    "mistral" => ToolParserKind::Mistral,
    "pythonic" => ToolParserKind::Pythonic,
    "gpt-oss" | "gpt_oss" | "openai" => ToolParserKind::GptOss,
);

/// The parsers a model's card names.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ParserConfig {
    pub reasoning: Option<ReasoningParserKind>,
    pub tools: Option<ToolParserKind>,
}

impl ParserConfig {
    /// From the card's names; an unknown name is logged and ignored (the worker checks its
    /// flags, so only a newer worker's card can name one this frontend does not know).
    pub fn from_names(reasoning: &str, tools: &str) -> ParserConfig {
        let parse = |name: &str| -> Option<String> { (!name.is_empty()).then(|| name.to_owned()) };
        let reasoning = parse(reasoning).and_then(|n| {
            n.parse().map_err(|e| tracing::warn!(error = %e, "ignoring reasoning parser")).ok()
        });
        let tools = parse(tools).and_then(|n| {
            n.parse().map_err(|e| tracing::warn!(error = %e, "ignoring tool-call parser")).ok()
        });
        ParserConfig { reasoning, tools }
    }

    /// Special tokens whose text the parsers must see (detokenizers drop special tokens).
    pub fn special_tokens(&self) -> &'static [&'static str] {
        if self.reasoning == Some(ReasoningParserKind::GptOss)
            || self.tools == Some(ToolParserKind::GptOss)
        {
            harmony::SPECIAL_TOKENS
        } else if self.tools == Some(ToolParserKind::Mistral) {
            tools::MISTRAL_SPECIAL_TOKENS
        } else if self.tools == Some(ToolParserKind::Llama3Json) {
            tools::LLAMA3_SPECIAL_TOKENS
        } else {
            &[]
        }
    }
}

/// One tool call the model made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ToolCall {
    /// `call_…`, unique per call.
    pub id: String,
    pub name: String,
    /// The arguments as a JSON object text.
    pub arguments: String,
}

impl ToolCall {
    pub fn new(name: String, arguments: String) -> ToolCall {
        ToolCall { id: format!("call_{:024x}", rand::random::<u128>() >> 32), name, arguments }
    }
}

/// What one piece of output text parsed into.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ParsedDelta {
    pub reasoning: String,
    pub content: String,
    pub tool_calls: Vec<ToolCall>,
}

impl ParsedDelta {
    pub fn is_empty(&self) -> bool {
        self.reasoning.is_empty() && self.content.is_empty() && self.tool_calls.is_empty()
    }

    pub fn clear(&mut self) {
        self.reasoning.clear();
        self.content.clear();
        self.tool_calls.clear();
    }
}

/// What a request asked of the parsers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ParseOptions {
    /// Parse tool calls (the request offered tools and `tool_choice` is not `none`).
    pub tools: bool,
    /// The rendered prompt ends inside a reasoning block (the template opened `<think>`).
    pub prompt_opens_reasoning: bool,
}

/// The parsers of one response.
#[derive(Debug)]
pub(crate) struct OutputParser {
    stage: Stage,
    tools: Option<ToolStage>,
    /// Content handed from the reasoning stage to the tool stage.
    scratch: ParsedDelta,
}

/// How tool calls are read from the answer.
#[derive(Debug)]
enum ToolStage {
    /// In the model's own format, among its text.
    Format(ToolParser),
    /// The whole answer is the JSON a forced `tool_choice` asked the engine for.
    Forced(ForcedParser),
}

#[derive(Debug)]
enum Stage {
    Plain,
    Think(ThinkParser),
    Harmony(HarmonyParser),
}

impl OutputParser {
    /// `None` when the model has no parser that applies to this request.
    pub fn new(config: ParserConfig, options: ParseOptions) -> Option<OutputParser> {
        let harmony = config.reasoning == Some(ReasoningParserKind::GptOss)
            || config.tools == Some(ToolParserKind::GptOss);
        let stage = match config.reasoning {
            _ if harmony => Stage::Harmony(HarmonyParser::new(options.tools)),
            Some(ReasoningParserKind::Qwen3) => {
                Stage::Think(ThinkParser::new(options.prompt_opens_reasoning))
            }
            Some(ReasoningParserKind::DeepSeekR1) => Stage::Think(ThinkParser::new(true)),
            _ => Stage::Plain,
        };
        let tools = match config.tools {
            Some(kind) if options.tools && !harmony => {
                Some(ToolStage::Format(ToolParser::new(kind)))
            }
            _ => None,
        };
        if matches!(stage, Stage::Plain) && tools.is_none() {
            return None;
        }
        Some(OutputParser { stage, tools, scratch: ParsedDelta::default() })
    }

    /// For a forced `tool_choice`: the engine writes only the JSON of the calls.
    pub fn forced(forced: Forced) -> OutputParser {
        let tools = Some(ToolStage::Forced(ForcedParser::new(forced)));
        OutputParser { stage: Stage::Plain, tools, scratch: ParsedDelta::default() }
    }

    /// Parses the next piece of text into `out` (cleared first).
    pub fn push(&mut self, text: &str, out: &mut ParsedDelta) {
        out.clear();
        self.run(Some(text), out);
    }

    /// The end of the output: whatever was held back, parsed as final, into `out`.
    pub fn finish(&mut self, out: &mut ParsedDelta) {
        out.clear();
        self.run(None, out);
    }

    fn run(&mut self, text: Option<&str>, out: &mut ParsedDelta) {
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let staged = if self.tools.is_some() { &mut scratch } else { &mut *out };
        match (&mut self.stage, text) {
            (Stage::Plain, Some(text)) => staged.content.push_str(text),
            (Stage::Plain, None) => {}
            (Stage::Think(p), Some(text)) => p.push(text, staged),
            (Stage::Think(p), None) => p.finish(staged),
            (Stage::Harmony(p), Some(text)) => p.push(text, staged),
            (Stage::Harmony(p), None) => p.finish(staged),
        }
        match &mut self.tools {
            Some(ToolStage::Format(tools)) => {
                out.reasoning.push_str(&scratch.reasoning);
                tools.push(&scratch.content, out);
                if text.is_none() {
                    tools.finish(out);
                }
            }
            Some(ToolStage::Forced(forced)) => {
                forced.push(&scratch.content);
                if text.is_none() {
                    forced.finish(out);
                }
            }
            None => {}
        }
        self.scratch = scratch;
    }
}

/// Whether a rendered prompt leaves the model inside a `<think>` block.
pub(crate) fn prompt_opens_reasoning(prompt: &str) -> bool {
    let tail = prompt.trim_end();
    tail.ends_with(reasoning::THINK_START)
}
