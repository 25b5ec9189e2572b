//! A result line: an ordered list of keys and values, written and read as sglang.bench_serving
//! writes its JSONL (Python's `json.dumps`: `", "` and `": "` separators, and non-finite floats
//! as bare `Infinity`, `-Infinity` and `NaN`, which strict JSON parsers refuse).

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;

use crate::Error;

/// One value of a result line. Floats are apart from JSON values because JSON has no
/// infinity, and an infinite request rate is a value bench_serving writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Field {
    Float(f64),
    Json(Value),
}

impl Field {
    /// The value as a number, when it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Field::Float(v) => Some(*v),
            Field::Json(v) => v.as_f64(),
        }
    }
}

impl From<f64> for Field {
    fn from(v: f64) -> Field {
        Field::Float(v)
    }
}

impl From<Value> for Field {
    fn from(v: Value) -> Field {
        Field::Json(v)
    }
}

/// Keys and values in the order they are written.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResultLine {
    pub fields: Vec<(String, Field)>,
}

/// A bare non-finite token is read as a string starting with this (JSON strings from a real
/// file never start with a NUL character).
const NON_FINITE: char = '\0';

impl ResultLine {
    pub fn push(&mut self, key: &str, value: impl Into<Field>) {
        self.fields.push((key.to_owned(), value.into()));
    }

    pub fn get(&self, key: &str) -> Option<&Field> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|(k, _)| k.as_str())
    }

    /// One line of JSON, without the newline.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64 * self.fields.len());
        out.push('{');
        for (i, (key, value)) in self.fields.iter().enumerate() {
            if i > 0 {
                out.push_str(", ");
            }
            out.push_str(&Value::String(key.clone()).to_string());
            out.push_str(": ");
            match value {
                Field::Float(v) => push_float(&mut out, *v),
                Field::Json(v) => out.push_str(&v.to_string()),
            }
        }
        out.push('}');
        out
    }

    /// Parses one line as bench_serving or `switchyard bench` wrote it.
    pub fn parse(line: &str) -> Result<ResultLine, String> {
        let text = quote_non_finite(line);
        let object: Ordered = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let fields = object
            .0
            .into_iter()
            .map(|(k, v)| {
                let field = match &v {
                    Value::String(s) if s.starts_with(NON_FINITE) => match &s[1..] {
                        "Infinity" => Field::Float(f64::INFINITY),
                        "-Infinity" => Field::Float(f64::NEG_INFINITY),
                        _ => Field::Float(f64::NAN),
                    },
                    Value::Number(n) if n.is_f64() => Field::Float(n.as_f64().unwrap_or(f64::NAN)),
                    _ => Field::Json(v),
                };
                (k, field)
            })
            .collect();
        Ok(ResultLine { fields })
    }

    /// Appends this line to `path` (created if missing), as `--output-file` does.
    pub fn append_to(&self, path: &Path) -> Result<(), Error> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        writeln!(file, "{}", self.to_json()).map_err(|e| Error::io(path, e))
    }

    /// Every line of a JSONL file (blank lines skipped).
    pub fn read_file(path: &Path) -> Result<Vec<ResultLine>, Error> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut lines = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let parsed = ResultLine::parse(line).map_err(|message| Error::ResultLine {
                path: path.to_owned(),
                line: i + 1,
                message,
            })?;
            lines.push(parsed);
        }
        Ok(lines)
    }
}

fn push_float(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
    } else if v.fract() == 0.0 && v.abs() < 1e16 {
        // Python writes whole floats with a `.0`.
        let _ = write!(out, "{v:.1}");
    } else {
        out.push_str(&Value::from(v).to_string());
    }
}

/// Rewrites bare `Infinity`, `-Infinity` and `NaN` outside strings as marked strings.
fn quote_non_finite(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    let mut rest = line;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            if c == '\\' {
                let escaped: String = rest.chars().take(2).collect();
                out.push_str(&escaped);
                rest = &rest[escaped.len()..];
                continue;
            }
            in_string = c != '"';
        } else if c == '"' {
            in_string = true;
        } else if let Some(token) =
            ["-Infinity", "Infinity", "NaN"].into_iter().find(|t| rest.starts_with(t))
        {
            let _ = write!(out, "\"\\u0000{token}\"");
            rest = &rest[token.len()..];
            continue;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

/// A JSON object read with its keys in file order.
struct Ordered(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Ordered {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Ordered, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Ordered;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Ordered, A::Error> {
                let mut fields = Vec::new();
                while let Some(entry) = map.next_entry::<String, Value>()? {
                    fields.push(entry);
                }
                Ok(Ordered(fields))
            }
        }
        deserializer.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_finite_values_round_trip_like_python() {
        let mut line = ResultLine::default();
        line.push("tag", Value::Null);
        line.push("request_rate", f64::INFINITY);
        line.push("duration", 12.0);
        line.push("p99_ttft_ms", 1.25);
        line.push("note", Value::from("Infinity \"NaN\" -Infinity"));
        line.push("low", f64::NEG_INFINITY);
        let json = line.to_json();
        assert_eq!(
            json,
            r#"{"tag": null, "request_rate": Infinity, "duration": 12.0, "p99_ttft_ms": 1.25, "note": "Infinity \"NaN\" -Infinity", "low": -Infinity}"#
        );
        assert_eq!(ResultLine::parse(&json).unwrap(), line);
        let nan = ResultLine::parse(r#"{"x": NaN}"#).unwrap();
        assert!(nan.get("x").unwrap().as_f64().unwrap().is_nan());
    }
}
