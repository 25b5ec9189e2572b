//! Pythonic tool calls: a list of calls with keyword arguments whose values are Python
//! literals (`[get_weather(city="Paris", days=3), ping()]`), read into names and JSON objects.

use serde_json::{Map, Number, Value};

/// The calls of `text`, or `None` when it is not exactly such a list.
pub(super) fn parse_calls(text: &str) -> Option<Vec<(String, Value)>> {
    let mut p = Reader { s: text.as_bytes(), i: 0 };
    p.expect(b'[')?;
    let mut calls = Vec::new();
    loop {
        p.blank();
        if p.eat(b']') {
            break;
        }
        if !calls.is_empty() {
            p.expect(b',')?;
            p.blank();
            if p.eat(b']') {
                break;
            }
        }
        calls.push(p.call()?);
    }
    p.blank();
    (p.i == p.s.len()).then_some(calls)
}

struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn blank(&mut self) {
        while self.s.get(self.i).is_some_and(u8::is_ascii_whitespace) {
            self.i += 1;
        }
    }

    fn eat(&mut self, b: u8) -> bool {
        if self.s.get(self.i) == Some(&b) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, b: u8) -> Option<()> {
        self.blank();
        self.eat(b).then_some(())
    }

    fn identifier(&mut self) -> Option<String> {
        self.blank();
        let start = self.i;
        while self
            .s
            .get(self.i)
            .is_some_and(|&c| c.is_ascii_alphanumeric() || c == b'_' || c == b'.' || c == b'-')
        {
            self.i += 1;
        }
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    /// `name(key=value, …)`.
    fn call(&mut self) -> Option<(String, Value)> {
        let name = self.identifier()?;
        self.expect(b'(')?;
        let mut args = Map::new();
        loop {
            self.blank();
            if self.eat(b')') {
                break;
            }
            if !args.is_empty() {
                self.expect(b',')?;
                self.blank();
                if self.eat(b')') {
                    break;
                }
            }
            let key = self.identifier()?;
            self.expect(b'=')?;
            let value = self.literal()?;
            args.insert(key, value);
        }
        Some((name, Value::Object(args)))
    }

    fn literal(&mut self) -> Option<Value> {
        self.blank();
        match *self.s.get(self.i)? {
            b'"' | b'\'' => self.string().map(Value::String),
            b'[' | b'(' => {
                let close = if self.s[self.i] == b'[' { b']' } else { b')' };
                self.i += 1;
                let mut items = Vec::new();
                loop {
                    self.blank();
                    if self.eat(close) {
                        break;
                    }
                    if !items.is_empty() {
                        self.expect(b',')?;
                        self.blank();
                        if self.eat(close) {
                            break;
                        }
                    }
                    items.push(self.literal()?);
                }
                Some(Value::Array(items))
            }
            b'{' => {
                self.i += 1;
                let mut map = Map::new();
                loop {
                    self.blank();
                    if self.eat(b'}') {
                        break;
                    }
                    if !map.is_empty() {
                        self.expect(b',')?;
                        self.blank();
                        if self.eat(b'}') {
                            break;
                        }
                    }
                    let key = match self.literal()? {
                        Value::String(k) => k,
                        other => other.to_string(),
                    };
                    self.expect(b':')?;
                    map.insert(key, self.literal()?);
                }
                Some(Value::Object(map))
            }
            _ => self.word(),
        }
    }

    /// A number, `True`, `False` or `None`.
    fn word(&mut self) -> Option<Value> {
        let start = self.i;
        while self.s.get(self.i).is_some_and(|&c| c.is_ascii_alphanumeric() || b"+-._".contains(&c))
        {
            self.i += 1;
        }
        let word = std::str::from_utf8(&self.s[start..self.i]).ok()?;
        match word {
            "True" => Some(Value::Bool(true)),
            "False" => Some(Value::Bool(false)),
            "None" => Some(Value::Null),
            _ => {
                let word = word.replace('_', "");
                if let Ok(i) = word.parse::<i64>() {
                    Some(Value::Number(i.into()))
                } else {
                    word.parse::<f64>().ok().and_then(Number::from_f64).map(Value::Number)
                }
            }
        }
    }

    /// A quoted string with Python's common escapes.
    fn string(&mut self) -> Option<String> {
        let quote = self.s[self.i];
        self.i += 1;
        let mut out = Vec::new();
        loop {
            let c = *self.s.get(self.i)?;
            self.i += 1;
            match c {
                c if c == quote => break,
                b'\\' => {
                    let e = *self.s.get(self.i)?;
                    self.i += 1;
                    match e {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'0' => out.push(0),
                        b'u' => {
                            let hex = std::str::from_utf8(self.s.get(self.i..self.i + 4)?).ok()?;
                            let ch = char::from_u32(u32::from_str_radix(hex, 16).ok()?)?;
                            self.i += 4;
                            let mut buf = [0; 4];
                            out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                        }
                        other => out.push(other),
                    }
                }
                c => out.push(c),
            }
        }
        String::from_utf8(out).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_calls_with_literals() {
        let calls = parse_calls(
            r#"[get_weather(city="Paris", days=3), f(x=[1, 2.5, None], y={'k': True}), ping()]"#,
        )
        .expect("parses");
        assert_eq!(calls.len(), 3);
        assert_eq!(calls[0].0, "get_weather");
        assert_eq!(calls[0].1, serde_json::json!({"city": "Paris", "days": 3}));
        assert_eq!(calls[1].1, serde_json::json!({"x": [1, 2.5, null], "y": {"k": true}}));
        assert_eq!(calls[2].1, serde_json::json!({}));
        assert!(parse_calls("[f(x=1)] trailing").is_none());
        assert!(parse_calls("[1] Introduction").is_none());
        assert!(parse_calls("[f(x=)]").is_none());
    }
}
