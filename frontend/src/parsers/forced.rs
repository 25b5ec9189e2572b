//! Tool calls the engine was made to write: for `tool_choice` `required` or a named function,
//! the frontend sends the engine a JSON schema ([`schema`]) its guided decoding enforces, so
//! the whole output is JSON, read once it is complete.

use serde_json::{Value, json};

use super::{ParsedDelta, ToolCall};

/// What a forced `tool_choice` makes the engine write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Forced {
    /// The arguments object of this function.
    Named(String),
    /// A non-empty list of `{"name": …, "arguments": {…}}`.
    Required,
}

/// Holds the output until its end, then reads it as the forced calls.
#[derive(Debug)]
pub(crate) struct ForcedParser {
    forced: Forced,
    text: String,
}

impl ForcedParser {
    pub fn new(forced: Forced) -> ForcedParser {
        ForcedParser { forced, text: String::new() }
    }

    pub fn push(&mut self, text: &str) {
        self.text.push_str(text);
    }

    /// The calls; an output that is not what the schema asked for (cut short by
    /// `max_tokens`, say) comes back as text, as malformed calls of the other parsers do.
    pub fn finish(&mut self, out: &mut ParsedDelta) {
        let text = std::mem::take(&mut self.text);
        match calls(&self.forced, &text) {
            Some(calls) => out.tool_calls.extend(calls),
            None => out.content.push_str(&text),
        }
    }
}

fn calls(forced: &Forced, text: &str) -> Option<Vec<ToolCall>> {
    let value: Value = serde_json::from_str(text.trim()).ok()?;
    match forced {
        Forced::Named(name) => {
            value.is_object().then(|| vec![ToolCall::new(name.clone(), value.to_string())])
        }
        Forced::Required => {
            let calls: Option<Vec<ToolCall>> = value
                .as_array()?
                .iter()
                .map(|item| {
                    let name = item.get("name")?.as_str()?;
                    let arguments = item.get("arguments").filter(|a| a.is_object())?;
                    Some(ToolCall::new(name.to_owned(), arguments.to_string()))
                })
                .collect();
            calls.filter(|calls| !calls.is_empty())
        }
    }
}

/// The `response_format` that makes an engine write `forced` for the request's `tools`
/// (OpenAI's list of `{"type": "function", "function": {"name", "parameters"}}`). An error
/// says what is wrong with the request.
pub(crate) fn response_format(forced: &Forced, tools: &[Value]) -> Result<Value, String> {
    let functions: Vec<(&str, Value)> = tools
        .iter()
        .filter_map(|tool| {
            let function = tool.get("function")?;
            let name = function.get("name")?.as_str()?;
            let parameters = function.get("parameters").cloned();
            Some((name, parameters.unwrap_or_else(|| json!({"type": "object"}))))
        })
        .collect();
    let schema = match forced {
        Forced::Named(wanted) => {
            let Some((_, parameters)) = functions.iter().find(|(name, _)| name == wanted) else {
                return Err(format!("tool_choice names `{wanted}`, which is not among the tools"));
            };
            parameters.clone()
        }
        Forced::Required => {
            if functions.is_empty() {
                return Err("tool_choice `required` needs at least one function in tools".into());
            }
            let each: Vec<Value> = functions
                .iter()
                .map(|(name, parameters)| {
                    json!({
                        "type": "object",
                        "properties": {"name": {"type": "string", "enum": [name]}, "arguments": parameters},
                        "required": ["name", "arguments"],
                    })
                })
                .collect();
            json!({"type": "array", "minItems": 1, "items": {"anyOf": each}})
        }
    };
    Ok(json!({"type": "json_schema", "json_schema": {"name": "tool_calls", "schema": schema}}))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn tools() -> Vec<Value> {
        let weather = json!({"type": "object", "properties": {"unit": {"enum": ["c", "f"]}}});
        vec![
            json!({"type": "function", "function": {"name": "weather", "parameters": weather}}),
            json!({"type": "function", "function": {"name": "time"}}),
        ]
    }

    fn parse(forced: Forced, pieces: &[&str]) -> ParsedDelta {
        let mut parser = ForcedParser::new(forced);
        for piece in pieces {
            parser.push(piece);
        }
        let mut out = ParsedDelta::default();
        parser.finish(&mut out);
        out
    }

    #[test]
    fn a_named_function_gets_its_parameters_as_the_schema() {
        let format = response_format(&Forced::Named("weather".into()), &tools()).unwrap();
        assert_eq!(format["type"], "json_schema");
        let schema = &format["json_schema"]["schema"];
        assert_eq!(schema["properties"]["unit"]["enum"], json!(["c", "f"]));
        let format = response_format(&Forced::Named("time".into()), &tools()).unwrap();
        assert_eq!(format["json_schema"]["schema"], json!({"type": "object"}));
        let err = response_format(&Forced::Named("nope".into()), &tools()).unwrap_err();
        assert!(err.contains("`nope`"), "{err}");
    }

    #[test]
    fn required_asks_for_a_list_of_calls_to_the_given_functions() {
        let format = response_format(&Forced::Required, &tools()).unwrap();
        let schema = &format["json_schema"]["schema"];
        assert_eq!(schema["minItems"], 1);
        let names: Vec<&Value> = schema["items"]["anyOf"]
            .as_array()
            .unwrap()
            .iter()
            .map(|each| &each["properties"]["name"]["enum"][0])
            .collect();
        assert_eq!(names, [&json!("weather"), &json!("time")]);
        assert!(response_format(&Forced::Required, &[]).is_err());
    }

    #[test]
    fn the_output_becomes_calls_however_it_was_cut() {
        let out = parse(Forced::Named("weather".into()), &["{\"un", "it\": \"c\"", "}"]);
        assert_eq!(out.tool_calls.len(), 1);
        assert_eq!(out.tool_calls[0].name, "weather");
        assert_eq!(out.tool_calls[0].arguments, r#"{"unit":"c"}"#);
        assert!(out.content.is_empty());
        let list = r#"[{"name": "weather", "arguments": {"unit": "f"}}, {"name": "time", "arguments": {}}]"#;
        let out = parse(Forced::Required, &[list]);
        let names: Vec<&str> = out.tool_calls.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["weather", "time"]);
        assert_ne!(out.tool_calls[0].id, out.tool_calls[1].id);
    }

    #[test]
    fn output_that_is_not_the_schema_stays_text() {
        for (forced, text) in [
            (Forced::Named("weather".into()), "{\"unit\": \"c"),
            (Forced::Named("weather".into()), "[1]"),
            (Forced::Required, "[]"),
            (Forced::Required, r#"[{"name": "weather"}]"#),
        ] {
            let out = parse(forced, &[text]);
            assert!(out.tool_calls.is_empty(), "{text}");
            assert_eq!(out.content, text);
        }
    }
}
