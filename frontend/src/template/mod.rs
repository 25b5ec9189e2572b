//! Chat templates: a minijinja environment that renders Hugging Face Jinja templates the way
//! `transformers` does (its Jinja2 sandbox with trim and lstrip blocks and loop controls,
//! `{% generation %}` blocks, Python string methods, Python's printing of values, `tojson` as
//! `json.dumps`, `raise_exception`, `strftime_now`). Compiled once per model.

#[cfg(test)]
mod corpus_tests;
mod python;
mod strftime;

use std::sync::LazyLock;

use minijinja::value::Value;
use minijinja::{Environment, ErrorKind};
use regex::Regex;

/// The name the chat template is stored under in its environment.
const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template, rendered for each request.
pub(crate) struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

/// `{% generation %}` / `{% endgeneration %}` (transformers' marker of assistant text, which it
/// renders unchanged), with their whitespace controls.
static GENERATION_TAG: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"\{%([-+]?)\s*(end)?generation\s*([-+]?)%\}").ok());

impl ChatTemplate {
    /// Compiles `source` once; syntax errors come back here, not per request.
    pub fn compile(source: &str) -> Result<ChatTemplate, minijinja::Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.set_formatter(python::format);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime::strftime_now);
        env.add_filter("tojson", python::tojson);
        env.add_filter("string", python::string);
        env.add_filter("escape", python::escape);
        env.add_filter("e", python::escape);
        env.add_test("iterable", python::is_iterable);
        env.add_test("sequence", python::is_sequence);
        env.add_test("number", python::is_number);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(source))?;
        Ok(ChatTemplate { env })
    }

    /// Renders the template with `context` (messages, tools, special tokens, …).
    pub fn render(&self, context: Value) -> Result<String, minijinja::Error> {
        self.env.get_template(TEMPLATE_NAME)?.render(context)
    }

    /// Whether the template's source names `variable` (transformers refuses
    /// `continue_final_message` for a template that never mentions `content`).
    pub fn mentions(&self, variable: &str) -> bool {
        self.env.get_template(TEMPLATE_NAME).is_ok_and(|t| t.source().contains(variable))
    }
}

/// `{% generation %}…{% endgeneration %}` become `{% if true %}…{% endif %}`: the same output
/// and the same whitespace handling, in a tag minijinja knows.
fn rewrite_generation_tags(source: &str) -> String {
    match GENERATION_TAG.as_ref() {
        Some(re) if source.contains("generation") => re
            .replace_all(source, |caps: &regex::Captures<'_>| {
                let (open, close) = (&caps[1], &caps[3]);
                let tag = if caps.get(2).is_some() { "endif" } else { "if true" };
                format!("{{%{open} {tag} {close}%}}")
            })
            .into_owned(),
        _ => source.to_owned(),
    }
}

/// `raise_exception(message)`: how templates reject a conversation they cannot format.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    fn render(source: &str, ctx: Value) -> Result<String, minijinja::Error> {
        ChatTemplate::compile(source)?.render(ctx)
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let out =
            render("{{ x.strip().upper() }}|{{ x.startswith(' a') }}", context! { x => " ab " })
                .expect("renders");
        assert_eq!(out, "AB|True");
        let err = render("{{ raise_exception('roles must alternate') }}", context! {})
            .expect_err("raises");
        assert!(err.to_string().contains("roles must alternate"), "{err}");
    }

    #[test]
    fn tojson_writes_what_python_writes() {
        let value: Value =
            serde_json::from_str::<Value>(r#"{"b":1,"a":[1,"é<"],"c":{}}"#).expect("json");
        let ctx = || context! { v => value.clone() };
        let out = render("{{ v | tojson }}", ctx()).expect("renders");
        assert_eq!(out, r#"{"b": 1, "a": [1, "é<"], "c": {}}"#);
        let out = render("{{ v | tojson(indent=2) }}", ctx()).expect("renders");
        assert_eq!(out, "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    \"é<\"\n  ],\n  \"c\": {}\n}");
        let out =
            render("{{ v | tojson(ensure_ascii=True, sort_keys=True) }}", ctx()).expect("renders");
        assert_eq!(out, r#"{"a": [1, "\u00e9<"], "b": 1, "c": {}}"#);
        let out = render("{{ v | tojson(separators=(',', ':')) }}", ctx()).expect("renders");
        assert_eq!(out, r#"{"b":1,"a":[1,"é<"],"c":{}}"#);
    }

    #[test]
    fn values_print_and_test_as_in_jinja2() {
        let ctx = || context! { d => serde_json::json!({"k": [1, null]}), n => () };
        assert_eq!(
            render("{{ d }}|{{ n }}|{{ d | string }}", ctx()).expect("renders"),
            "{'k': [1, None]}|None|{'k': [1, None]}"
        );
        assert_eq!(
            render(
                "{{ n is iterable }}|{{ u is iterable }}|{{ 'x' is sequence }}|{{ d is sequence }}",
                ctx()
            )
            .expect("renders"),
            "False|True|True|True"
        );
        assert_eq!(render("{{ '<&>' | e }}", ctx()).expect("renders"), "&lt;&amp;&gt;");
    }

    #[test]
    fn generation_blocks_render_their_body() {
        let source =
            "{% for m in ms %}\n{%- generation -%}\n{{ m }}\n{%- endgeneration %}\n{% endfor %}";
        assert_eq!(render(source, context! { ms => [1, 2] }).expect("renders"), "12");
    }

    #[test]
    fn blocks_are_trimmed_like_transformers() {
        let out = render("{% for m in ms %}\n  {{ m }}\n{% endfor %}", context! { ms => [1, 2] })
            .expect("renders");
        assert_eq!(out, "  1\n  2\n");
    }
}
