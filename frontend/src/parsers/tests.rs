//! Parsers on recorded model outputs, fed whole, one character at a time, and in uneven
//! pieces: all three must give the same reasoning, answer and calls.

use super::*;

/// Reasoning, content, and (name, arguments) of each call.
type Parsed = (String, String, Vec<(String, String)>);

fn run(config: ParserConfig, options: ParseOptions, pieces: &[&str]) -> Parsed {
    let mut parser = OutputParser::new(config, options).expect("a parser applies");
    let (mut reasoning, mut content, mut calls) = (String::new(), String::new(), Vec::new());
    let mut delta = ParsedDelta::default();
    let mut take = |d: &ParsedDelta| {
        reasoning.push_str(&d.reasoning);
        content.push_str(&d.content);
        calls.extend(d.tool_calls.iter().map(|c| (c.name.clone(), c.arguments.clone())));
    };
    for piece in pieces {
        parser.push(piece, &mut delta);
        take(&delta);
    }
    parser.finish(&mut delta);
    take(&delta);
    (reasoning, content, calls)
}

/// Parses `output` whole, per character and in pieces of 1–4 characters; all must agree.
fn parse_every_way(config: ParserConfig, options: ParseOptions, output: &str) -> Parsed {
    let whole = run(config, options, &[output]);
    let chars: Vec<String> = output.chars().map(String::from).collect();
    let per_char: Vec<&str> = chars.iter().map(String::as_str).collect();
    assert_eq!(run(config, options, &per_char), whole, "char by char differs for {output:?}");
    let mut pieces = Vec::new();
    let mut rest = output;
    let mut size = 1;
    while !rest.is_empty() {
        let cut = rest.char_indices().nth(size).map_or(rest.len(), |(i, _)| i);
        pieces.push(&rest[..cut]);
        rest = &rest[cut..];
        size = size % 4 + 1;
    }
    assert_eq!(run(config, options, &pieces), whole, "pieces differ for {output:?}");
    whole
}

const TOOLS: ParseOptions = ParseOptions { tools: true, prompt_opens_reasoning: false };

fn config(reasoning: Option<&str>, tools: Option<&str>) -> ParserConfig {
    ParserConfig {
        reasoning: reasoning.map(|r| r.parse().expect("known")),
        tools: tools.map(|t| t.parse().expect("known")),
    }
}

fn call(name: &str, args: &str) -> (String, String) {
    (name.to_owned(), args.to_owned())
}

#[test]
fn qwen3_reasoning_is_split_from_the_answer() {
    let c = config(Some("qwen3"), None);
    let out =
        "<think>\nThe user greets me. I should greet back.\n</think>\n\nHello! How can I help?";
    let (reasoning, content, _) = parse_every_way(c, TOOLS, out);
    assert_eq!(reasoning, "The user greets me. I should greet back.");
    assert_eq!(content, "Hello! How can I help?");
    // No think block: all answer.
    let (reasoning, content, _) = parse_every_way(c, TOOLS, "Just an answer <b>.");
    assert_eq!((reasoning.as_str(), content.as_str()), ("", "Just an answer <b>."));
    // The template opened the block (thinking models): reasoning until the end tag.
    let opened = ParseOptions { tools: false, prompt_opens_reasoning: true };
    let (reasoning, content, _) = parse_every_way(c, opened, "step 1\n</think>\n\n42");
    assert_eq!((reasoning.as_str(), content.as_str()), ("step 1", "42"));
    // Cut off while thinking: what there is, is reasoning.
    let (reasoning, content, _) = parse_every_way(c, TOOLS, "<think>still thinking <");
    assert_eq!((reasoning.as_str(), content.as_str()), ("still thinking <", ""));
}

#[test]
fn deepseek_r1_starts_in_reasoning() {
    let c = config(Some("deepseek-r1"), None);
    let out = "Let me compute 2+2 = 4.\n</think>\n\nThe answer is **4**.";
    let (reasoning, content, _) = parse_every_way(c, TOOLS, out);
    assert_eq!(reasoning, "Let me compute 2+2 = 4.");
    assert_eq!(content, "The answer is **4**.");
    let (reasoning, content, _) = parse_every_way(c, TOOLS, "<think>\nhm\n</think>ok");
    assert_eq!((reasoning.as_str(), content.as_str()), ("hm", "ok"));
}

#[test]
fn hermes_calls_between_text() {
    let c = config(Some("qwen3"), Some("hermes"));
    let out = "<think>\nNeed weather for two cities.\n</think>\n\nLet me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Zürich\", \"unit\": \"celsius\"}}\n</tool_call>";
    let (reasoning, content, calls) = parse_every_way(c, TOOLS, out);
    assert_eq!(reasoning, "Need weather for two cities.");
    assert_eq!(content, "Let me check.\n");
    assert_eq!(
        calls,
        vec![
            call("get_weather", r#"{"city":"Paris"}"#),
            call("get_weather", r#"{"city":"Zürich","unit":"celsius"}"#)
        ]
    );
}

#[test]
fn malformed_tool_json_comes_back_as_text() {
    let c = config(None, Some("hermes"));
    let out =
        "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": }\n</tool_call> done";
    let (_, content, calls) = parse_every_way(c, TOOLS, out);
    assert!(calls.is_empty());
    assert_eq!(content, out);
    // Unclosed at the end of the output but whole: still a call.
    let (_, content, calls) =
        parse_every_way(c, TOOLS, "<tool_call>{\"name\": \"ping\", \"arguments\": {}}");
    assert_eq!((content.as_str(), calls), ("", vec![call("ping", "{}")]));
    // Tools not offered: no parsing at all.
    let no_tools = ParseOptions { tools: false, prompt_opens_reasoning: false };
    assert!(OutputParser::new(c, no_tools).is_none());
}

#[test]
fn llama3_json_calls() {
    let c = config(None, Some("llama3_json"));
    let out = "<|python_tag|>{\"name\": \"get_weather\", \"parameters\": {\"city\": \"Paris\"}}; {\"name\": \"ping\", \"parameters\": {}}";
    let (_, content, calls) = parse_every_way(c, TOOLS, out);
    assert_eq!(content, "");
    assert_eq!(calls, vec![call("get_weather", r#"{"city":"Paris"}"#), call("ping", "{}")]);
    let (_, content, calls) =
        parse_every_way(c, TOOLS, " {\"name\": \"f\", \"parameters\": {\"x\": 1}}");
    assert_eq!((content.as_str(), calls), ("", vec![call("f", r#"{"x":1}"#)]));
    let (_, content, calls) = parse_every_way(c, TOOLS, "{not json at all");
    assert_eq!((content.as_str(), calls.len()), ("{not json at all", 0));
    let (_, content, _) = parse_every_way(c, TOOLS, "The answer is {42}.");
    assert_eq!(content, "The answer is {42}.");
}

#[test]
fn mistral_calls_both_formats() {
    let c = config(None, Some("mistral"));
    let out = "Sure.[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}, {\"name\": \"ping\", \"arguments\": {}}]";
    let (_, content, calls) = parse_every_way(c, TOOLS, out);
    assert_eq!(content, "Sure.");
    assert_eq!(calls, vec![call("get_weather", r#"{"city":"Paris"}"#), call("ping", "{}")]);
    let out = "[TOOL_CALLS]get_weather[ARGS]{\"city\": \"Paris\"}[TOOL_CALLS]ping[ARGS]{}";
    let (_, content, calls) = parse_every_way(c, TOOLS, out);
    assert_eq!(content, "");
    assert_eq!(calls, vec![call("get_weather", r#"{"city":"Paris"}"#), call("ping", "{}")]);
    let out = "[TOOL_CALLS][{\"name\": \"get_weather\", \"arguments\": {\"city\"";
    let (_, content, calls) = parse_every_way(c, TOOLS, out);
    assert_eq!((content.as_str(), calls.len()), (out, 0));
}

#[test]
fn pythonic_calls() {
    let c = config(None, Some("pythonic"));
    let out = "[get_weather(city='Paris', days=3), ping()]";
    let (_, content, calls) = parse_every_way(c, TOOLS, out);
    assert_eq!(content, "");
    assert_eq!(
        calls,
        vec![call("get_weather", r#"{"city":"Paris","days":3}"#), call("ping", "{}")]
    );
    let (_, content, calls) = parse_every_way(c, TOOLS, "[1] Introduction");
    assert_eq!((content.as_str(), calls.len()), ("[1] Introduction", 0));
    let (_, content, _) = parse_every_way(c, TOOLS, "No calls here.");
    assert_eq!(content, "No calls here.");
}

#[test]
fn gpt_oss_channels_and_calls() {
    let c = config(Some("gpt-oss"), Some("gpt-oss"));
    let out = "<|channel|>analysis<|message|>User asks weather. Call the tool.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{\"city\":\"Paris\"}<|call|>";
    let (reasoning, content, calls) = parse_every_way(c, TOOLS, out);
    assert_eq!(reasoning, "User asks weather. Call the tool.");
    assert_eq!(content, "");
    assert_eq!(calls, vec![call("get_weather", r#"{"city":"Paris"}"#)]);
    let out = "<|channel|>analysis<|message|>Simple.<|end|><|start|>assistant<|channel|>final<|message|>Hello there!<|return|>";
    let (reasoning, content, calls) = parse_every_way(c, TOOLS, out);
    assert_eq!((reasoning.as_str(), content.as_str(), calls.len()), ("Simple.", "Hello there!", 0));
    // Malformed arguments: text.
    let out = "<|channel|>commentary to=functions.f <|constrain|>json<|message|>{oops<|call|>";
    let (_, content, calls) = parse_every_way(c, TOOLS, out);
    assert_eq!((content.as_str(), calls.len()), ("{oops", 0));
}

#[test]
fn names_and_special_tokens() {
    assert!("nope".parse::<ToolParserKind>().is_err());
    assert_eq!("deepseek_r1".parse::<ReasoningParserKind>(), Ok(ReasoningParserKind::DeepSeekR1));
    assert_eq!(ReasoningParserKind::GptOss.to_string(), "gpt-oss");
    assert!(config(None, Some("mistral")).special_tokens().contains(&"[TOOL_CALLS]"));
    assert!(config(Some("qwen3"), Some("hermes")).special_tokens().is_empty());
    assert!(prompt_opens_reasoning("<|im_start|>assistant\n<think>\n"));
    assert!(!prompt_opens_reasoning("<think>\n\n</think>\n\n"));
}
