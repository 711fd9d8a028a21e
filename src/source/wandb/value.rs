//! W&B's "extended JSON": ordinary JSON plus the bare tokens `NaN`,
//! `Infinity` and `-Infinity` (Python's `json.dumps` default). Numbers keep
//! their exact source text, so a value read from a record is written back
//! byte for byte (`1.1805916207174113e+21` stays that, `NaN` stays `NaN`)
//! and nothing is lost to a float round trip.

use indexmap::IndexMap;
use std::fmt::{self, Write as _};

pub(crate) type Map = IndexMap<String, Value>;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    /// The number's source text: a JSON number, `NaN`, `Infinity` or `-Infinity`.
    Number(Box<str>),
    String(String),
    Array(Vec<Value>),
    Object(Map),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid JSON value at byte {at}: {what}")]
pub struct ParseError {
    pub at: usize,
    pub what: &'static str,
}

/// Objects and arrays nested deeper than this are refused instead of
/// recursing without bound on hostile input.
const MAX_DEPTH: usize = 256;

impl Value {
    /// Parses one extended-JSON value; surrounding whitespace is allowed.
    pub fn parse(text: &str) -> Result<Value, ParseError> {
        let mut p = Parser {
            s: text.as_bytes(),
            at: 0,
            depth: 0,
        };
        p.ws();
        let v = p.value()?;
        p.ws();
        if p.at != p.s.len() {
            return Err(p.err("trailing characters"));
        }
        Ok(v)
    }

    pub fn from_i64(v: i64) -> Value {
        Value::Number(v.to_string().into())
    }

    /// Non-finite floats become the extended tokens.
    pub fn from_f64(v: f64) -> Value {
        let text = if v.is_nan() {
            "NaN".to_string()
        } else if v.is_infinite() {
            if v > 0.0 {
                "Infinity".into()
            } else {
                "-Infinity".into()
            }
        } else if v == 0.0 || (1e-5..1e16).contains(&v.abs()) {
            // Shortest text that reads back to the same float; an integral
            // float keeps its `.0` so it stays a float, as Python prints it.
            let text = v.to_string();
            if text.contains('.') {
                text
            } else {
                format!("{text}.0")
            }
        } else {
            format!("{v:e}")
        };
        Value::Number(text.into())
    }

    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Number(n) => match &**n {
                "NaN" => Some(f64::NAN),
                "Infinity" => Some(f64::INFINITY),
                "-Infinity" => Some(f64::NEG_INFINITY),
                t => t.parse().ok(),
            },
            _ => None,
        }
    }

    /// The value as an integer, if it is an integer literal or a float with
    /// no fractional part (wandb writes `_step` as an integer).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Number(n) => n.parse::<i64>().ok().or_else(|| {
                let f = self.as_f64()?;
                (f.is_finite() && f == f.trunc() && f.abs() < 9.0e15).then_some(f as i64)
            }),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Map> {
        match self {
            Value::Object(m) => Some(m),
            _ => None,
        }
    }

    /// Walks object keys; `None` if a step is missing or not an object.
    pub fn pointer(&self, path: &[&str]) -> Option<&Value> {
        path.iter().try_fold(self, |v, k| v.as_object()?.get(*k))
    }

    /// Extended JSON text, the form W&B's FileStream and config carry.
    pub fn to_extended_json(&self) -> String {
        let mut out = String::new();
        self.write(&mut out);
        out
    }

    /// Converts to strict JSON for our own `--json` output: non-finite
    /// numbers become the strings `"NaN"`, `"Infinity"`, `"-Infinity"`.
    pub fn to_strict(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(n) => match serde_json::from_str::<serde_json::Number>(n) {
                Ok(num) => serde_json::Value::Number(num),
                Err(_) => serde_json::Value::String(n.to_string()),
            },
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Array(a) => a.iter().map(Value::to_strict).collect(),
            Value::Object(m) => serde_json::Value::Object(
                m.iter().map(|(k, v)| (k.clone(), v.to_strict())).collect(),
            ),
        }
    }

    /// Writes `map` as an extended-JSON object without cloning it.
    pub fn write_object(map: &Map, out: &mut String) {
        out.push('{');
        for (i, (k, v)) in map.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            write_string(out, k);
            out.push(':');
            v.write(out);
        }
        out.push('}');
    }

    fn write(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Value::Number(n) => out.push_str(n),
            Value::String(s) => write_string(out, s),
            Value::Array(a) => {
                out.push('[');
                for (i, v) in a.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out);
                }
                out.push(']');
            }
            Value::Object(m) => Value::write_object(m, out),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_extended_json())
    }
}

fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

struct Parser<'a> {
    s: &'a [u8],
    at: usize,
    depth: usize,
}

impl Parser<'_> {
    fn err(&self, what: &'static str) -> ParseError {
        ParseError { at: self.at, what }
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.s.get(self.at) {
            self.at += 1;
        }
    }

    fn eat(&mut self, lit: &str) -> bool {
        if self.s[self.at..].starts_with(lit.as_bytes()) {
            self.at += lit.len();
            true
        } else {
            false
        }
    }

    fn value(&mut self) -> Result<Value, ParseError> {
        match self.s.get(self.at) {
            None => Err(self.err("unexpected end")),
            Some(b'{') => self.nested(Self::object),
            Some(b'[') => self.nested(Self::array),
            Some(b'"') => Ok(Value::String(self.string()?)),
            Some(b't') if self.eat("true") => Ok(Value::Bool(true)),
            Some(b'f') if self.eat("false") => Ok(Value::Bool(false)),
            Some(b'n') if self.eat("null") => Ok(Value::Null),
            Some(b'N') if self.eat("NaN") => Ok(Value::Number("NaN".into())),
            Some(b'I') if self.eat("Infinity") => Ok(Value::Number("Infinity".into())),
            Some(b'-') if self.eat("-Infinity") => Ok(Value::Number("-Infinity".into())),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.err("unexpected character")),
        }
    }

    fn nested(
        &mut self,
        f: fn(&mut Self) -> Result<Value, ParseError>,
    ) -> Result<Value, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err("nested too deeply"));
        }
        let v = f(self);
        self.depth -= 1;
        v
    }

    fn object(&mut self) -> Result<Value, ParseError> {
        self.at += 1;
        let mut map = Map::new();
        self.ws();
        if self.eat("}") {
            return Ok(Value::Object(map));
        }
        loop {
            self.ws();
            if self.s.get(self.at) != Some(&b'"') {
                return Err(self.err("expected a string key"));
            }
            let key = self.string()?;
            self.ws();
            if !self.eat(":") {
                return Err(self.err("expected ':'"));
            }
            self.ws();
            let v = self.value()?;
            map.insert(key, v);
            self.ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("}") {
                return Ok(Value::Object(map));
            }
            return Err(self.err("expected ',' or '}'"));
        }
    }

    fn array(&mut self) -> Result<Value, ParseError> {
        self.at += 1;
        let mut items = Vec::new();
        self.ws();
        if self.eat("]") {
            return Ok(Value::Array(items));
        }
        loop {
            self.ws();
            items.push(self.value()?);
            self.ws();
            if self.eat(",") {
                continue;
            }
            if self.eat("]") {
                return Ok(Value::Array(items));
            }
            return Err(self.err("expected ',' or ']'"));
        }
    }

    fn number(&mut self) -> Result<Value, ParseError> {
        let start = self.at;
        if self.s[self.at] == b'-' {
            self.at += 1;
        }
        let digits = |p: &mut Self| {
            let from = p.at;
            while p.s.get(p.at).is_some_and(u8::is_ascii_digit) {
                p.at += 1;
            }
            p.at - from
        };
        if digits(self) == 0 {
            return Err(self.err("expected digits"));
        }
        if self.eat(".") && digits(self) == 0 {
            return Err(self.err("expected digits after '.'"));
        }
        if let Some(b'e' | b'E') = self.s.get(self.at) {
            self.at += 1;
            if let Some(b'+' | b'-') = self.s.get(self.at) {
                self.at += 1;
            }
            if digits(self) == 0 {
                return Err(self.err("expected exponent digits"));
            }
        }
        // The slice is ASCII by construction.
        let text = std::str::from_utf8(&self.s[start..self.at]).map_err(|_| self.err("number"))?;
        Ok(Value::Number(text.into()))
    }

    fn string(&mut self) -> Result<String, ParseError> {
        self.at += 1;
        let mut out = String::new();
        loop {
            let run_start = self.at;
            while let Some(&b) = self.s.get(self.at) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.at += 1;
            }
            // Input came from a &str and we stopped on ASCII, so this is valid UTF-8.
            out.push_str(std::str::from_utf8(&self.s[run_start..self.at]).unwrap_or_default());
            match self.s.get(self.at) {
                Some(b'"') => {
                    self.at += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.at += 1;
                    let esc = *self
                        .s
                        .get(self.at)
                        .ok_or_else(|| self.err("unexpected end"))?;
                    self.at += 1;
                    match esc {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => return Err(self.err("bad escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, ParseError> {
        let hex = self
            .s
            .get(self.at..self.at + 4)
            .ok_or_else(|| self.err("short \\u escape"))?;
        let text = std::str::from_utf8(hex).map_err(|_| self.err("bad \\u escape"))?;
        let v = u32::from_str_radix(text, 16).map_err(|_| self.err("bad \\u escape"))?;
        self.at += 4;
        Ok(v)
    }

    fn unicode_escape(&mut self) -> Result<char, ParseError> {
        let hi = self.hex4()?;
        if (0xd800..0xdc00).contains(&hi) && self.s[self.at..].starts_with(b"\\u") {
            let save = self.at;
            self.at += 2;
            let lo = self.hex4()?;
            if (0xdc00..0xe000).contains(&lo) {
                let c = 0x10000 + ((hi - 0xd800) << 10) + (lo - 0xdc00);
                return Ok(char::from_u32(c).unwrap_or('\u{fffd}'));
            }
            self.at = save;
        }
        // Lone surrogates (Python can write them) become U+FFFD.
        Ok(char::from_u32(hi).unwrap_or('\u{fffd}'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extended_tokens_round_trip() {
        for text in [
            "NaN",
            "Infinity",
            "-Infinity",
            "1.1805916207174113e+21",
            "-0.0",
            "3",
        ] {
            let v = Value::parse(text).unwrap();
            assert_eq!(v.to_extended_json(), text);
        }
        assert!(Value::parse("NaN").unwrap().as_f64().unwrap().is_nan());
        assert_eq!(
            Value::parse("-Infinity").unwrap().as_f64(),
            Some(f64::NEG_INFINITY)
        );
    }

    #[test]
    fn nested_documents_keep_order_and_values() {
        let text = r#"{"b":[1,2.5,{"c":NaN}],"a":"x\"y\u00e9\ud83d\ude00","n":null,"t":true}"#;
        let v = Value::parse(text).unwrap();
        assert_eq!(
            v.to_extended_json(),
            r#"{"b":[1,2.5,{"c":NaN}],"a":"x\"yé😀","n":null,"t":true}"#
        );
        assert_eq!(
            v.pointer(&["b"]).and_then(|b| match b {
                Value::Array(a) => a[1].as_f64(),
                _ => None,
            }),
            Some(2.5)
        );
    }

    #[test]
    fn strict_output_spells_out_non_finite_numbers() {
        let v = Value::parse(r#"{"a":NaN,"b":1e400,"c":2}"#).unwrap();
        assert_eq!(
            v.to_strict(),
            serde_json::json!({"a":"NaN","b":"1e400","c":2})
        );
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            "",
            "{",
            "[1,",
            "\"abc",
            "{\"a\" 1}",
            "01x",
            "-",
            "1.",
            "1e",
            "nul",
            "\u{1}",
            "[".repeat(1000).as_str(),
        ] {
            assert!(Value::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn integers_and_floats() {
        assert_eq!(Value::parse("12").unwrap().as_i64(), Some(12));
        assert_eq!(Value::parse("12.0").unwrap().as_i64(), Some(12));
        assert_eq!(Value::parse("12.5").unwrap().as_i64(), None);
        assert_eq!(Value::from_f64(2.0).to_extended_json(), "2.0");
        assert_eq!(Value::from_f64(f64::NAN).to_extended_json(), "NaN");
        assert_eq!(Value::from_f64(0.25).as_f64(), Some(0.25));
        assert_eq!(Value::from_f64(1e300).as_f64(), Some(1e300));
        assert_eq!(Value::from_f64(-1.5e-7).as_f64(), Some(-1.5e-7));
    }
}
