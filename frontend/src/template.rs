//! Chat templates: a minijinja environment that renders Hugging Face Jinja templates the way
//! `transformers` does (trim and lstrip blocks, Python string methods, `raise_exception`,
//! `strftime_now`, and a `tojson` that writes what Python's `json.dumps` writes).

use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

use minijinja::value::{Kwargs, Value};
use minijinja::{Environment, ErrorKind};
use serde::Serialize;

/// The name the chat template is stored under in its environment.
const TEMPLATE_NAME: &str = "chat";

/// A compiled chat template, rendered for each request.
pub struct ChatTemplate {
    env: Environment<'static>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChatTemplate")
    }
}

impl ChatTemplate {
    /// Compiles `source` once; syntax errors come back here, not per request.
    pub fn compile(source: String) -> Result<ChatTemplate, minijinja::Error> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source)?;
        Ok(ChatTemplate { env })
    }

    /// Renders the template with `context` (messages, tools, special tokens, …).
    pub fn render(&self, context: Value) -> Result<String, minijinja::Error> {
        self.env.get_template(TEMPLATE_NAME)?.render(context)
    }
}

/// `raise_exception(message)`: how templates reject a conversation they cannot format.
fn raise_exception(message: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

/// `tojson`, as `transformers` defines it: `json.dumps(value, ensure_ascii=False,
/// indent=indent)`, so `, ` and `: ` separators when compact, not minijinja's HTML-safe JSON.
/// Templates' other `json.dumps` arguments are accepted and ignored.
fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    for ignored in ["ensure_ascii", "sort_keys", "separators"] {
        let _: Option<Value> = kwargs.get(ignored)?;
    }
    kwargs.assert_all_used()?;
    let mut out = Vec::with_capacity(128);
    let written = match indent {
        Some(n) => {
            let indentation = " ".repeat(n);
            let formatter = serde_json::ser::PrettyFormatter::with_indent(indentation.as_bytes());
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, formatter))
        }
        None => {
            value.serialize(&mut serde_json::Serializer::with_formatter(&mut out, PythonCompact))
        }
    };
    written.map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "cannot serialize to JSON")
            .with_source(e)
    })?;
    String::from_utf8(out).map(Value::from_safe_string).map_err(|e| {
        minijinja::Error::new(ErrorKind::InvalidOperation, "JSON is not UTF-8").with_source(e)
    })
}

/// Python's default `json.dumps` separators: `", "` between items, `": "` after keys.
struct PythonCompact;

impl serde_json::ser::Formatter for PythonCompact {
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if first { Ok(()) } else { w.write_all(b", ") }
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
}

/// `strftime_now(format)`: the current UTC time, for templates that print today's date
/// (Llama 3's "Today Date"). Supports the common directives.
fn strftime_now(format: &str) -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    strftime(format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] =
    ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"];

fn strftime(format: &str, unix_secs: u64) -> String {
    let days = unix_secs / 86_400;
    let secs_of_day = unix_secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    // 1970-01-01 was a Thursday (index 3 from Monday).
    let weekday = WEEKDAYS[((days + 3) % 7) as usize];
    let month_name = MONTHS[(month - 1) as usize];
    let (hour, minute, second) = (secs_of_day / 3600, secs_of_day / 60 % 60, secs_of_day % 60);
    let mut out = String::with_capacity(format.len() + 16);
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut directive = chars.next();
        let no_pad = directive == Some('-');
        if no_pad {
            directive = chars.next();
        }
        let two = |n: u64| {
            if no_pad { n.to_string() } else { format!("{n:02}") }
        };
        match directive {
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('m') => out.push_str(&two(month)),
            Some('d') => out.push_str(&two(day)),
            Some('H') => out.push_str(&two(hour)),
            Some('M') => out.push_str(&two(minute)),
            Some('S') => out.push_str(&two(second)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('A') => out.push_str(weekday),
            Some('a') => out.push_str(&weekday[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// (year, month 1–12, day 1–31) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use minijinja::context;

    fn render(source: &str, ctx: Value) -> Result<String, minijinja::Error> {
        ChatTemplate::compile(source.to_owned())?.render(ctx)
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
        let out = render("{{ v | tojson }}", context! { v => value.clone() }).expect("renders");
        assert_eq!(out, r#"{"b": 1, "a": [1, "é<"], "c": {}}"#);
        let out = render("{{ v | tojson(indent=2) }}", context! { v => value }).expect("renders");
        assert_eq!(out, "{\n  \"b\": 1,\n  \"a\": [\n    1,\n    \"é<\"\n  ],\n  \"c\": {}\n}");
    }

    #[test]
    fn blocks_are_trimmed_like_transformers() {
        let out = render("{% for m in ms %}\n  {{ m }}\n{% endfor %}", context! { ms => [1, 2] })
            .expect("renders");
        assert_eq!(out, "  1\n  2\n");
    }

    #[test]
    fn strftime_formats_dates() {
        // 2024-07-26 13:05:09 UTC, a Friday.
        let t = 1_722_085_509 - 86_400;
        assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
        assert_eq!(strftime("%A %B %-d, %H:%M:%S %%", t), "Friday July 26, 13:05:09 %");
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
