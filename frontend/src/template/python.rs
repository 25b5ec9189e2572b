//! Python's ways of turning values into text, as Jinja2 under `transformers` shows them to a
//! chat template: `str()` and `repr()` of lists and dicts (`{'a': 1}`, not JSON), `json.dumps`
//! with its keyword arguments for `tojson`, MarkupSafe's `escape`, and Jinja2's type tests
//! (`none` is not iterable there, strings and dicts are sequences).

use std::fmt::Write;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind, Output, State};

/// The output formatter: prints every value as Python's `str()` would.
pub(super) fn format(out: &mut Output, _state: &State, value: &Value) -> Result<(), Error> {
    // Most printed values are strings: written as they are, without a copy.
    if let Some(s) = value.as_str() {
        return out.write_str(s).map_err(Error::from);
    }
    let mut text = String::new();
    write_str(&mut text, value);
    out.write_str(&text).map_err(Error::from)
}

/// The `string` filter: Python's `str()`.
pub(super) fn string(value: &Value) -> Value {
    if value.kind() == ValueKind::String {
        return value.clone();
    }
    let mut text = String::new();
    write_str(&mut text, value);
    Value::from(text)
}

/// Python's `str(value)`.
fn write_str(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::Undefined => {}
        ValueKind::String => out.push_str(value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Map | ValueKind::Iterable => write_repr(out, value),
        ValueKind::Number => write_number(out, value),
        _ => {
            let _ = write!(out, "{value}");
        }
    }
}

/// Python's `repr(value)`.
fn write_repr(out: &mut String, value: &Value) {
    match value.kind() {
        ValueKind::String => write_repr_str(out, value.as_str().unwrap_or_default()),
        ValueKind::Map => {
            out.push('{');
            for (i, key) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &key);
                out.push_str(": ");
                write_repr(out, &value.get_item(&key).unwrap_or_default());
            }
            out.push('}');
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push('[');
            for (i, item) in value.try_iter().into_iter().flatten().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_repr(out, &item);
            }
            out.push(']');
        }
        ValueKind::Undefined => out.push_str("Undefined"),
        _ => write_str(out, value),
    }
}

/// `repr()` of a string: single quotes unless it holds one and no double quote.
fn write_repr_str(out: &mut String, s: &str) {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let code = u32::from(c);
                let _ = if code < 0x100 {
                    write!(out, "\\x{code:02x}")
                } else {
                    write!(out, "\\u{code:04x}")
                };
            }
            c => out.push(c),
        }
    }
    out.push(quote);
}

/// A number as Python prints it: integers as they are, floats with a `.0` or an exponent.
fn write_number(out: &mut String, value: &Value) {
    match f64_of(value) {
        Some(f) => write_float(out, f),
        None => {
            let _ = write!(out, "{value}");
        }
    }
}

/// The float inside `value`, or `None` for integers.
fn f64_of(value: &Value) -> Option<f64> {
    if value.is_integer() {
        return None;
    }
    f64::try_from(value.clone()).ok()
}

/// Python's `repr(float)`: the shortest round-tripping digits, exponent form outside
/// [1e-4, 1e16).
fn write_float(out: &mut String, f: f64) {
    if f.is_nan() {
        out.push_str("nan");
    } else if f.is_infinite() {
        out.push_str(if f < 0.0 { "-inf" } else { "inf" });
    } else if f != 0.0 && (f.abs() >= 1e16 || f.abs() < 1e-4) {
        // Rust's `{:e}` is `1.5e20`; Python writes `1.5e+20` and at least two exponent digits.
        let text = format!("{f:e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let (sign, digits) = match exponent.strip_prefix('-') {
            Some(d) => ('-', d),
            None => ('+', exponent),
        };
        let _ = write!(out, "{mantissa}e{sign}{digits:0>2}");
    } else {
        let start = out.len();
        let _ = write!(out, "{f}");
        if !out[start..].contains('.') {
            out.push_str(".0");
        }
    }
}

/// `tojson` as `transformers` defines it: `json.dumps(value, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, each overridable by keyword.
pub(super) fn tojson(value: &Value, kwargs: Kwargs) -> Result<Value, Error> {
    let ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    let indent: Option<Value> = kwargs.get("indent")?;
    let separators: Option<Value> = kwargs.get("separators")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) if v.kind() == ValueKind::String => Some(v.as_str().unwrap_or_default().to_owned()),
        Some(v) => {
            let n = usize::try_from(v.clone()).map_err(|_| {
                Error::new(ErrorKind::InvalidOperation, format!("tojson: bad indent {v}"))
            })?;
            Some(" ".repeat(n))
        }
    };
    let (item_sep, key_sep) = match separators {
        Some(v) if !v.is_none() => {
            let parts: Vec<String> = v
                .try_iter()?
                .map(|p| p.as_str().map(str::to_owned))
                .collect::<Option<_>>()
                .ok_or_else(|| {
                    Error::new(ErrorKind::InvalidOperation, "tojson: separators must be strings")
                })?;
            match <[String; 2]>::try_from(parts) {
                Ok([item, key]) => (item, key),
                Err(_) => {
                    return Err(Error::new(
                        ErrorKind::InvalidOperation,
                        "tojson: separators must be a pair",
                    ));
                }
            }
        }
        _ if indent.is_some() => (",".to_owned(), ": ".to_owned()),
        _ => (", ".to_owned(), ": ".to_owned()),
    };
    let mut dumper = JsonDumper {
        out: String::with_capacity(128),
        ensure_ascii: ensure_ascii.unwrap_or(false),
        indent,
        item_sep,
        key_sep,
        sort_keys: sort_keys.unwrap_or(false),
    };
    dumper.dump(value, 0)?;
    Ok(Value::from(dumper.out))
}

/// Python's `json.dumps` encoder.
struct JsonDumper {
    out: String,
    ensure_ascii: bool,
    indent: Option<String>,
    item_sep: String,
    key_sep: String,
    sort_keys: bool,
}

impl JsonDumper {
    fn dump(&mut self, value: &Value, depth: usize) -> Result<(), Error> {
        match value.kind() {
            ValueKind::None => self.out.push_str("null"),
            ValueKind::Bool => {
                self.out.push_str(if value.is_true() { "true" } else { "false" });
            }
            ValueKind::Number => match f64_of(value) {
                Some(f) if f.is_nan() => self.out.push_str("NaN"),
                Some(f) if f.is_infinite() => {
                    self.out.push_str(if f < 0.0 { "-Infinity" } else { "Infinity" });
                }
                Some(f) => write_float(&mut self.out, f),
                None => {
                    let _ = write!(self.out, "{value}");
                }
            },
            ValueKind::String => self.string(value.as_str().unwrap_or_default()),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                if items.is_empty() {
                    self.out.push_str("[]");
                    return Ok(());
                }
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.separator(i, depth + 1);
                    self.dump(item, depth + 1)?;
                }
                self.close(depth);
                self.out.push(']');
            }
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if keys.is_empty() {
                    self.out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    keys.sort_by_key(ToString::to_string);
                }
                self.out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    self.separator(i, depth + 1);
                    match key.as_str() {
                        Some(k) => self.string(k),
                        None => self.string(&key_text(key)),
                    }
                    let key_sep = std::mem::take(&mut self.key_sep);
                    self.out.push_str(&key_sep);
                    self.key_sep = key_sep;
                    self.dump(&value.get_item(key)?, depth + 1)?;
                }
                self.close(depth);
                self.out.push('}');
            }
            ValueKind::Undefined => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    "Object of type Undefined is not JSON serializable",
                ));
            }
            kind => {
                return Err(Error::new(
                    ErrorKind::InvalidOperation,
                    format!("Object of type {kind} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }

    /// Before the `i`-th item of a container: the item separator, then a new line if indenting.
    fn separator(&mut self, i: usize, depth: usize) {
        if i > 0 {
            let sep = std::mem::take(&mut self.item_sep);
            self.out.push_str(&sep);
            self.item_sep = sep;
        }
        self.newline(depth);
    }

    fn close(&mut self, depth: usize) {
        self.newline(depth);
    }

    fn newline(&mut self, depth: usize) {
        if let Some(indent) = &self.indent {
            self.out.push('\n');
            for _ in 0..depth {
                self.out.push_str(indent);
            }
        }
    }

    fn string(&mut self, s: &str) {
        self.out.push('"');
        for c in s.chars() {
            match c {
                '"' => self.out.push_str("\\\""),
                '\\' => self.out.push_str("\\\\"),
                '\n' => self.out.push_str("\\n"),
                '\r' => self.out.push_str("\\r"),
                '\t' => self.out.push_str("\\t"),
                '\u{8}' => self.out.push_str("\\b"),
                '\u{c}' => self.out.push_str("\\f"),
                c if u32::from(c) < 0x20 => {
                    let _ = write!(self.out, "\\u{:04x}", u32::from(c));
                }
                c if self.ensure_ascii && !c.is_ascii() => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        let _ = write!(self.out, "\\u{unit:04x}");
                    }
                }
                c => self.out.push(c),
            }
        }
        self.out.push('"');
    }
}

/// A non-string dict key as `json.dumps` writes it (`True` → `"true"`, `1` → `"1"`).
fn key_text(key: &Value) -> String {
    match key.kind() {
        ValueKind::Bool => (if key.is_true() { "true" } else { "false" }).to_owned(),
        ValueKind::None => "null".to_owned(),
        _ => {
            let mut s = String::new();
            write_str(&mut s, key);
            s
        }
    }
}

/// The `escape` filter as MarkupSafe escapes: `& < > " '`, and marks the result safe.
pub(super) fn escape(value: &Value) -> Value {
    if value.is_safe() {
        return value.clone();
    }
    let mut text = String::new();
    write_str(&mut text, value);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&#34;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    Value::from_safe_string(out)
}

/// Jinja2's `iterable` test: `iter(value)` works — not for `None` or numbers; for undefined,
/// yes (Jinja2's `Undefined` iterates as empty).
pub(super) fn is_iterable(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Undefined
            | ValueKind::String
            | ValueKind::Seq
            | ValueKind::Map
            | ValueKind::Iterable
            | ValueKind::Bytes
    )
}

/// Jinja2's `sequence` test: `len()` and indexing work — strings and dicts too.
pub(super) fn is_sequence(value: &Value) -> bool {
    matches!(
        value.kind(),
        ValueKind::Undefined | ValueKind::String | ValueKind::Seq | ValueKind::Map
    )
}

/// Jinja2's `number` test: `isinstance(value, Number)`, which holds for booleans too.
pub(super) fn is_number(value: &Value) -> bool {
    matches!(value.kind(), ValueKind::Number | ValueKind::Bool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(source: &str) -> Value {
        serde_json::from_str(source).expect("json")
    }

    fn repr(value: &Value) -> String {
        let mut s = String::new();
        write_str(&mut s, value);
        s
    }

    #[test]
    fn dicts_and_lists_print_as_python() {
        assert_eq!(
            repr(&json(r#"{"a":[1,2.5,"x'y"],"b":null,"c":true}"#)),
            "{'a': [1, 2.5, \"x'y\"], 'b': None, 'c': True}"
        );
        assert_eq!(repr(&json(r#"["é\n"]"#)), "['é\\n']");
        assert_eq!(repr(&Value::from(1.0)), "1.0");
        assert_eq!(repr(&Value::from(1e20)), "1e+20");
        assert_eq!(repr(&Value::from(2.5e-7)), "2.5e-07");
    }

    #[test]
    fn escape_is_markupsafe() {
        assert_eq!(
            escape(&Value::from("<a href='x'>&\"</a>")).to_string(),
            "&lt;a href=&#39;x&#39;&gt;&amp;&#34;&lt;/a&gt;"
        );
    }
}
