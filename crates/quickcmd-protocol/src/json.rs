//! A strict JSON reader for untrusted request bodies.
//!
//! `serde_json` cannot do three things the protocol needs: report a key given twice, keep a
//! number's exact text (Go clients sign int64 digits that an f64 would round), and tell where
//! a value's bytes stand in the body (the raw signature form signs the `payload` bytes as
//! sent). This reader does all three and nothing more. Depth is capped so hostile nesting
//! cannot overflow the stack.

use std::fmt;

/// Deepest nesting accepted; Go's decoder allows 10 000, no honest job needs more than a few.
pub const MAX_DEPTH: usize = 128;

/// A parsed JSON value with its byte span in the input.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub value: Value,
    /// Byte range of this value in the parsed input (`start..end`).
    pub span: (usize, usize),
}

/// A JSON value. Numbers keep their literal text; objects keep every pair in order, repeats
/// included, so callers can refuse duplicates instead of silently taking one.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Number(String),
    String(String),
    Array(Vec<Node>),
    Object(Vec<(String, Node)>),
}

impl Value {
    pub fn kind(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        }
    }

    /// The first key that appears twice in this object or any object nested in it.
    pub fn first_duplicate_key(&self) -> Option<&str> {
        match self {
            Value::Object(pairs) => {
                for (index, (key, node)) in pairs.iter().enumerate() {
                    if pairs[..index].iter().any(|(earlier, _)| earlier == key) {
                        return Some(key);
                    }
                    if let Some(dup) = node.value.first_duplicate_key() {
                        return Some(dup);
                    }
                }
                None
            }
            Value::Array(items) => items.iter().find_map(|n| n.value.first_duplicate_key()),
            _ => None,
        }
    }

    /// Converts from `serde_json`, for callers that build metadata with it.
    pub fn from_serde(value: &serde_json::Value) -> Value {
        let node = |value| Node {
            value,
            span: (0, 0),
        };
        match value {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(*b),
            serde_json::Value::Number(n) => Value::Number(n.to_string()),
            serde_json::Value::String(s) => Value::String(s.clone()),
            serde_json::Value::Array(items) => {
                Value::Array(items.iter().map(|v| node(Value::from_serde(v))).collect())
            }
            serde_json::Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(k, v)| (k.clone(), node(Value::from_serde(v))))
                    .collect(),
            ),
        }
    }

    /// Converts to `serde_json` (numbers that do not fit become strings of their text).
    pub fn to_serde(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => serde_json::Value::Bool(*b),
            Value::Number(text) => serde_json::from_str::<serde_json::Number>(text)
                .map(serde_json::Value::Number)
                .unwrap_or_else(|_| serde_json::Value::String(text.clone())),
            Value::String(s) => serde_json::Value::String(s.clone()),
            Value::Array(items) => {
                serde_json::Value::Array(items.iter().map(|n| n.value.to_serde()).collect())
            }
            Value::Object(pairs) => serde_json::Value::Object(
                pairs
                    .iter()
                    .map(|(k, n)| (k.clone(), n.value.to_serde()))
                    .collect(),
            ),
        }
    }
}

/// Where and why the bytes are not JSON.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason} at byte {offset}")]
pub struct JsonError {
    pub offset: usize,
    pub reason: &'static str,
}

impl fmt::Display for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at bytes {}..{}",
            self.value.kind(),
            self.span.0,
            self.span.1
        )
    }
}

/// Parses one JSON document; surrounding whitespace allowed, anything else after it is not.
pub fn parse(input: &[u8]) -> Result<Node, JsonError> {
    let mut parser = Parser { input, pos: 0 };
    parser.skip_whitespace();
    let node = parser.value(0)?;
    parser.skip_whitespace();
    if parser.pos != input.len() {
        return Err(parser.error("unexpected bytes after the JSON value"));
    }
    Ok(node)
}

struct Parser<'a> {
    input: &'a [u8],
    pos: usize,
}

impl Parser<'_> {
    fn error(&self, reason: &'static str) -> JsonError {
        JsonError {
            offset: self.pos,
            reason,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.input.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn expect_literal(&mut self, literal: &'static [u8]) -> Result<(), JsonError> {
        if self.input[self.pos..].starts_with(literal) {
            self.pos += literal.len();
            Ok(())
        } else {
            Err(self.error("invalid literal"))
        }
    }

    fn value(&mut self, depth: usize) -> Result<Node, JsonError> {
        if depth > MAX_DEPTH {
            return Err(self.error("nesting too deep"));
        }
        let start = self.pos;
        let value = match self.peek() {
            None => return Err(self.error("unexpected end of input")),
            Some(b'n') => self.expect_literal(b"null").map(|_| Value::Null)?,
            Some(b't') => self.expect_literal(b"true").map(|_| Value::Bool(true))?,
            Some(b'f') => self.expect_literal(b"false").map(|_| Value::Bool(false))?,
            Some(b'"') => Value::String(self.string()?),
            Some(b'[') => self.array(depth)?,
            Some(b'{') => self.object(depth)?,
            Some(b'-' | b'0'..=b'9') => Value::Number(self.number()?),
            Some(_) => return Err(self.error("unexpected character")),
        };
        Ok(Node {
            value,
            span: (start, self.pos),
        })
    }

    fn array(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Value::Array(items));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Value::Array(items));
                }
                _ => return Err(self.error("expected ',' or ']' in array")),
            }
        }
    }

    fn object(&mut self, depth: usize) -> Result<Value, JsonError> {
        self.pos += 1;
        let mut pairs = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Value::Object(pairs));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a string key in object"));
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after object key"));
            }
            self.pos += 1;
            self.skip_whitespace();
            let node = self.value(depth + 1)?;
            pairs.push((key, node));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Value::Object(pairs));
                }
                _ => return Err(self.error("expected ',' or '}' in object")),
            }
        }
    }

    fn number(&mut self) -> Result<String, JsonError> {
        let start = self.pos;
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number: no digit after '.'"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !matches!(self.peek(), Some(b'0'..=b'9')) {
                return Err(self.error("invalid number: no digit in exponent"));
            }
            self.digits();
        }
        // Only ASCII digits, signs, '.', 'e' were consumed, so this is valid UTF-8.
        Ok(String::from_utf8_lossy(&self.input[start..self.pos]).into_owned())
    }

    fn digits(&mut self) {
        while matches!(self.peek(), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    fn hex4(&mut self) -> Result<u16, JsonError> {
        let digits = self
            .input
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.error("truncated \\u escape"))?;
        let text = std::str::from_utf8(digits).map_err(|_| self.error("invalid \\u escape"))?;
        let unit = u16::from_str_radix(text, 16).map_err(|_| self.error("invalid \\u escape"))?;
        self.pos += 4;
        Ok(unit)
    }

    fn string(&mut self) -> Result<String, JsonError> {
        self.pos += 1; // opening quote
        let mut out = String::new();
        loop {
            // Copy the longest run of plain bytes at once.
            let run_start = self.pos;
            while let Some(byte) = self.peek() {
                if byte == b'"' || byte == b'\\' || byte < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            let run =
                std::str::from_utf8(&self.input[run_start..self.pos]).map_err(|e| JsonError {
                    offset: run_start + e.valid_up_to(),
                    reason: "invalid UTF-8 in string",
                })?;
            out.push_str(run);
            match self.peek() {
                None => return Err(self.error("unterminated string")),
                Some(b'"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    self.pos += 1;
                    let escape = self
                        .peek()
                        .ok_or_else(|| self.error("unterminated string"))?;
                    self.pos += 1;
                    match escape {
                        b'"' => out.push('"'),
                        b'\\' => out.push('\\'),
                        b'/' => out.push('/'),
                        b'b' => out.push('\u{8}'),
                        b'f' => out.push('\u{c}'),
                        b'n' => out.push('\n'),
                        b'r' => out.push('\r'),
                        b't' => out.push('\t'),
                        b'u' => out.push(self.unicode_escape()?),
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("invalid escape in string"));
                        }
                    }
                }
                Some(_) => return Err(self.error("control character in string")),
            }
        }
    }

    /// Decodes `XXXX` after `\u`, joining surrogate pairs; a lone surrogate becomes U+FFFD,
    /// as Go's decoder does.
    fn unicode_escape(&mut self) -> Result<char, JsonError> {
        let first = self.hex4()?;
        if (0xD800..0xDC00).contains(&first) {
            if self.input[self.pos..].starts_with(b"\\u") {
                let save = self.pos;
                self.pos += 2;
                let second = self.hex4()?;
                if (0xDC00..0xE000).contains(&second) {
                    let code =
                        0x10000 + (((first as u32) - 0xD800) << 10) + (second as u32 - 0xDC00);
                    return Ok(char::from_u32(code).unwrap_or('\u{FFFD}'));
                }
                self.pos = save;
            }
            return Ok('\u{FFFD}');
        }
        Ok(char::from_u32(first as u32).unwrap_or('\u{FFFD}'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(input: &str) -> Value {
        parse(input.as_bytes())
            .map(|n| n.value)
            .unwrap_or_else(|e| panic!("{input}: {e}"))
    }

    fn bad(input: &[u8]) {
        assert!(
            parse(input).is_err(),
            "accepted {:?}",
            String::from_utf8_lossy(input)
        );
    }

    #[test]
    fn keeps_number_text_and_duplicate_keys() {
        assert_eq!(
            ok("9007199254740993"),
            Value::Number("9007199254740993".into())
        );
        assert_eq!(ok("-1.50e+3"), Value::Number("-1.50e+3".into()));
        let dup = ok(r#"{"a":1,"b":{"c":1,"c":2}}"#);
        assert_eq!(dup.first_duplicate_key(), Some("c"));
        assert_eq!(ok(r#"{"a":1,"b":2}"#).first_duplicate_key(), None);
    }

    #[test]
    fn strings_decode_escapes() {
        assert_eq!(
            ok(r#""a\u003cb\n\ud83d\udcc1""#),
            Value::String("a<b\n📁".into())
        );
        assert_eq!(ok(r#""\ud800x""#), Value::String("\u{FFFD}x".into()));
    }

    #[test]
    fn spans_point_at_the_bytes() {
        let text = br#" { "payload" : {"a": [1, 2]} , "x": true } "#;
        let node = parse(text).unwrap_or_else(|e| panic!("{e}"));
        let Value::Object(pairs) = node.value else {
            panic!("not an object")
        };
        let (start, end) = pairs[0].1.span;
        assert_eq!(&text[start..end], br#"{"a": [1, 2]}"#);
    }

    #[test]
    fn rejects_what_is_not_json() {
        for input in [
            &b""[..],
            b"{",
            b"[1,]",
            b"{\"a\":1,}",
            b"01",
            b"1.",
            b"1e",
            b"-",
            b"nul",
            b"\"abc",
            b"\"\x01\"",
            b"\"\\x\"",
            b"{} x",
            b"\xef\xbb\xbf{}",
            b"\"\xff\"",
            b"{'a':1}",
            b"NaN",
            b"[1 2]",
        ] {
            bad(input);
        }
        let deep = "[".repeat(MAX_DEPTH + 2) + &"]".repeat(MAX_DEPTH + 2);
        bad(deep.as_bytes());
    }
}
