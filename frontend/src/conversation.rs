//! A conversation rendered into prompt text with the model's chat template, the way vLLM hands
//! it to `transformers`: messages as the client sent them (keys it did not send stay undefined,
//! text parts joined, tool-call arguments parsed into objects), `tools` and `documents`,
//! `add_generation_prompt`, `continue_final_message`, and `chat_template_kwargs`.

use minijinja::Value;
use minijinja::context;
use minijinja::value::{ValueKind, merge_maps};

use crate::error::Error;
use crate::literal::{Masked, Prompt, SpecialTexts, unmask};
use crate::template::ChatTemplate;

/// What transformers appends to the final message to find where it ends in the rendering.
const CONTINUE_TAG: &str = "CONTINUE_FINAL_MESSAGE_TAG ";

/// A chat request's template inputs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ChatInput<'a> {
    pub messages: &'a [Value],
    pub tools: Option<&'a Value>,
    pub documents: Option<&'a Value>,
    /// Extra template variables (`enable_thinking`, …); they never replace the ones above.
    pub kwargs: Option<&'a Value>,
    pub add_generation_prompt: bool,
    /// Leave the last message open (a prefill of the assistant's answer).
    pub continue_final_message: bool,
}

/// The tokenizer's special tokens that templates print.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SpecialTokens<'a> {
    pub bos: &'a str,
    pub eos: &'a str,
    /// Every special token's spelling, kept as text where a client writes it in content.
    pub in_content: Option<&'a SpecialTexts>,
}

/// Renders `input` with `template`; a conversation the template rejects is a 400. Special
/// tokens spelled out in content are noted as literal text in the prompt.
pub(crate) fn render(
    template: &ChatTemplate,
    special: SpecialTokens<'_>,
    input: &ChatInput<'_>,
) -> Result<Prompt, Error> {
    if input.messages.is_empty() {
        return Err(Error::invalid("messages", "messages must not be empty"));
    }
    if input.continue_final_message && input.add_generation_prompt {
        return Err(Error::invalid(
            "continue_final_message",
            "continue_final_message and add_generation_prompt cannot both be true",
        ));
    }
    let mut masked = Masked::default();
    let mut messages = input
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| template_message(i, m, special.in_content, &mut masked))
        .collect::<Result<Vec<_>, Error>>()?;
    let final_text = if input.continue_final_message {
        Some(open_final_message(template, &mut messages)?)
    } else {
        None
    };
    let kwargs = match input.kwargs {
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) if v.kind() == ValueKind::Map => Some(v.clone()),
        Some(_) => {
            return Err(Error::invalid(
                "chat_template_kwargs",
                "chat_template_kwargs must be an object",
            ));
        }
        None => None,
    };
    let base = context! {
        messages => Value::from(messages),
        tools => input.tools.filter(|t| !t.is_none()),
        documents => input.documents.filter(|d| !d.is_none()),
        add_generation_prompt => input.add_generation_prompt,
        bos_token => special.bos,
        eos_token => special.eos,
    };
    let ctx = match kwargs {
        // Later maps win: the request's own variables cannot be replaced.
        Some(kwargs) => merge_maps([kwargs, base]),
        None => base,
    };
    let rendered = template.render(ctx).map_err(|e| {
        let message = match (e.kind(), e.detail()) {
            (minijinja::ErrorKind::InvalidOperation, Some(detail)) => detail.to_owned(),
            _ => format!("the chat template cannot format these messages: {e}"),
        };
        Error::invalid("messages", message)
    })?;
    let rendered = match final_text {
        Some(final_text) => close_at_final_message(rendered, &final_text)?,
        None => rendered,
    };
    Ok(unmask(rendered, &masked))
}

/// One message as the template sees it: the client's object, with a list of text parts joined
/// into one string, special tokens in its content masked, and tool-call `arguments` given as
/// objects (as transformers expects them). Unchanged messages are shared, not copied.
fn template_message(
    index: usize,
    message: &Value,
    specials: Option<&SpecialTexts>,
    masked: &mut Masked,
) -> Result<Value, Error> {
    if message.kind() != ValueKind::Map {
        return Err(Error::invalid(format!("messages[{index}]"), "a message must be an object"));
    }
    let role = message.get_attr("role").unwrap_or_default();
    if role.is_undefined() || role.is_none() {
        return Err(Error::invalid(format!("messages[{index}].role"), "missing field `role`"));
    }
    if role.kind() != ValueKind::String {
        return Err(Error::invalid(format!("messages[{index}].role"), "`role` must be a string"));
    }
    let content = message.get_attr("content").unwrap_or_default();
    let joined = match content.kind() {
        ValueKind::Undefined | ValueKind::None | ValueKind::String => None,
        ValueKind::Seq => Some(join_text_parts(index, &content)?),
        _ => {
            return Err(Error::invalid(
                format!("messages[{index}].content"),
                "`content` must be a string or a list of content parts",
            ));
        }
    };
    let text = joined.as_deref().or_else(|| content.as_str());
    let joined = match (specials, text) {
        (Some(specials), Some(text)) => specials.mask(text, masked).or(joined),
        _ => joined,
    };
    let tool_calls = message.get_attr("tool_calls").unwrap_or_default();
    let parsed_calls = match tool_calls.kind() {
        ValueKind::Seq => parse_tool_call_arguments(&tool_calls),
        _ => None,
    };
    if joined.is_none() && parsed_calls.is_none() {
        return Ok(message.clone());
    }
    Ok(replace_keys(message, |key| match key {
        "content" => joined.clone().map(Value::from),
        "tool_calls" => parsed_calls.clone(),
        _ => None,
    }))
}

/// A copy of the map `value` in which `replace` may swap the value of some keys.
fn replace_keys(value: &Value, replace: impl Fn(&str) -> Option<Value>) -> Value {
    value
        .try_iter()
        .into_iter()
        .flatten()
        .map(|key| {
            let swapped = key.as_str().and_then(&replace);
            let v = swapped.unwrap_or_else(|| value.get_item(&key).unwrap_or_default());
            (key, v)
        })
        .collect()
}

/// The text parts of a content list, one per line (vLLM's string content format).
fn join_text_parts(index: usize, parts: &Value) -> Result<String, Error> {
    let mut joined = String::new();
    for (j, part) in parts.try_iter().into_iter().flatten().enumerate() {
        let kind = part.get_attr("type").unwrap_or_default();
        let text = part.get_attr("text").unwrap_or_default();
        match (kind.as_str(), text.as_str()) {
            (Some("text"), Some(text)) => {
                if j > 0 {
                    joined.push('\n');
                }
                joined.push_str(text);
            }
            (Some("text"), None) => {
                return Err(Error::invalid(
                    format!("messages[{index}].content[{j}].text"),
                    "a text part needs `text`",
                ));
            }
            (kind, _) => {
                return Err(Error::invalid(
                    format!("messages[{index}].content[{j}].type"),
                    format!(
                        "content part type {} is not supported; only `text` is",
                        kind.map_or_else(|| "(none)".to_owned(), |k| format!("`{k}`"))
                    ),
                ));
            }
        }
    }
    Ok(joined)
}

/// Tool calls whose `function.arguments` is a JSON string, with it parsed into an object
/// (an empty string becomes `{}`); `None` when no call needs it.
fn parse_tool_call_arguments(calls: &Value) -> Option<Value> {
    let needs = |call: &Value| {
        call.get_attr("function")
            .and_then(|f| f.get_attr("arguments"))
            .is_ok_and(|a| a.kind() == ValueKind::String)
    };
    if !calls.try_iter().ok()?.any(|c| needs(&c)) {
        return None;
    }
    let parsed = calls
        .try_iter()
        .ok()?
        .map(|call| {
            if !needs(&call) {
                return call;
            }
            let function = call.get_attr("function").unwrap_or_default();
            let raw = function.get_attr("arguments").unwrap_or_default();
            let text = raw.as_str().unwrap_or_default();
            let arguments = if text.trim().is_empty() {
                Value::from_serialize(serde_json::Map::new())
            } else {
                match serde_json::from_str::<Value>(text) {
                    Ok(value) => value,
                    // Not JSON: the template gets the string as it came.
                    Err(_) => raw.clone(),
                }
            };
            let function =
                replace_keys(&function, |k| (k == "arguments").then(|| arguments.clone()));
            replace_keys(&call, |k| (k == "function").then(|| function.clone()))
        })
        .collect::<Vec<_>>();
    Some(Value::from(parsed))
}

/// Marks the last message's content so its end can be found after rendering; returns its text.
fn open_final_message(template: &ChatTemplate, messages: &mut [Value]) -> Result<String, Error> {
    let last = messages
        .last_mut()
        .ok_or_else(|| Error::invalid("messages", "messages must not be empty"))?;
    let content = last.get_attr("content").unwrap_or_default();
    let Some(text) = content.as_str().map(str::to_owned) else {
        return Err(Error::invalid(
            "continue_final_message",
            "continue_final_message needs a final message with text content",
        ));
    };
    if !template.mentions("content") {
        return Err(Error::invalid(
            "continue_final_message",
            "this model's chat template cannot continue a final message",
        ));
    }
    let tagged = Value::from(format!("{text}{CONTINUE_TAG}"));
    *last = replace_keys(last, |k| (k == "content").then(|| tagged.clone()));
    Ok(text)
}

/// Cuts the rendering right after the final message's text, as transformers does.
fn close_at_final_message(rendered: String, final_text: &str) -> Result<String, Error> {
    let tag = CONTINUE_TAG.trim();
    let at = match rendered.rfind(tag) {
        Some(at) if rendered.contains(final_text.trim()) => at,
        _ => {
            return Err(Error::invalid(
                "continue_final_message",
                "the chat template does not keep the final message, so it cannot be continued",
            ));
        }
    };
    let mut out = rendered;
    let keeps_spacing = out[at..].starts_with(CONTINUE_TAG);
    out.truncate(at);
    if !keeps_spacing {
        out.truncate(out.trim_end().len());
    }
    Ok(out)
}
