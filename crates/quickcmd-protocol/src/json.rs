//! A strict JSON reader for untrusted request bodies.
//!
//! `serde_json` cannot do three things the protocol needs: report a key given twice, keep a
//! number's exact text (Go clients sign int64 digits that an f64 would round), and tell where
//! a value's bytes stand in the body (the raw signature form signs the `payload` bytes as
//! sent). This reader does all three and nothing more. Depth is capped so hostile nesting
//! cannot overflow the stack.

use std::collections::HashSet;
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
            Value::Object(pairs) => first_duplicate_key(pairs),
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

/// The first key that appears twice among `pairs` or in any object nested in them.
pub(crate) fn first_duplicate_key(pairs: &[(String, Node)]) -> Option<&str> {
    // One hash-set insert per key keeps this linear in the number of keys; the set's
    // hasher is randomly seeded, so a sender cannot pick keys that all collide.
    let mut seen = HashSet::with_capacity(pairs.len());
    for (key, node) in pairs {
        if !seen.insert(key.as_str()) {
            return Some(key);
        }
        if let Some(dup) = node.value.first_duplicate_key() {
            return Some(dup);
        }
    }
    None
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
        // Exactly four hex digits (RFC 8259 §7): `u16::from_str_radix` alone would also take
        // a sign, so `\u+041` would read as U+0041 where Go and Python refuse it.
        let mut unit: u16 = 0;
        for &digit in digits {
            let value = match digit {
                b'0'..=b'9' => digit - b'0',
                b'a'..=b'f' => digit - b'a' + 10,
                b'A'..=b'F' => digit - b'A' + 10,
                _ => return Err(self.error("\\u escape needs exactly four hex digits")),
            };
            unit = (unit << 4) | u16::from(value);
        }
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

    #[test]
    fn nesting_limit_is_exact() {
        // A value may sit inside at most MAX_DEPTH containers.
        let at_limit = "[".repeat(MAX_DEPTH) + "0" + &"]".repeat(MAX_DEPTH);
        assert!(parse(at_limit.as_bytes()).is_ok());
        let over = "[".repeat(MAX_DEPTH + 1) + "0" + &"]".repeat(MAX_DEPTH + 1);
        assert_eq!(
            parse(over.as_bytes()).map_err(|e| e.reason),
            Err("nesting too deep")
        );
        let objects = r#"{"a":"#.repeat(MAX_DEPTH + 1) + "0" + &"}".repeat(MAX_DEPTH + 1);
        bad(objects.as_bytes());
    }

    /// Issue 8 finding 7: `\u` takes exactly four hex digits, as Go and Python require.
    #[test]
    fn unicode_escape_needs_four_hex_digits() {
        for input in [
            r#""\u+041""#,
            r#""\u-041""#,
            r#""\u 041""#,
            r#""\u041""#,
            r#""\u04g1""#,
            r#""\u0x41""#,
            r#""\u""#,
            r#""\U0041""#,
            r#""\ud83d\u+dcc1""#,
            r#""\ud83d\udcc""#,
        ] {
            bad(input.as_bytes());
        }
        assert_eq!(ok(r#""\u0041\u00C9\u00e9""#), Value::String("AÉé".into()));
        assert_eq!(ok(r#""\uD83D\uDCC1""#), Value::String("📁".into()));
        // A high surrogate followed by an escape that is not a low one: U+FFFD, then the
        // second escape on its own, as Go decodes it.
        assert_eq!(ok(r#""\ud83d\u0041""#), Value::String("\u{FFFD}A".into()));
        assert_eq!(ok(r#""\udcc1""#), Value::String("\u{FFFD}".into()));
    }

    /// The rest of RFC 8259's grammar, case by case (numbers §6, strings §7, whitespace §2).
    #[test]
    fn rfc8259_grammar() {
        for input in [
            &b"+1"[..],
            b".5",
            b"1.e5",
            b"1e+",
            b"0x10",
            b"--1",
            b"-01",
            b"00",
            b"1_000",
            b"Infinity",
            b"-Infinity",
            b"\"\\'\"",
            b"\"\\a\"",
            b"\"\\0\"",
            b"\"a\tb\"",
            b"\"a\nb\"",
            b"\"\x1f\"",
            b"\x0c1",
            b"\xc2\xa01",
            b"{\"a\"}",
            b"{\"a\":}",
            b"{,}",
            b"[,1]",
            b"{1:2}",
            b"[1]]",
            b"truex",
            b"True",
            b"\"\xed\xa0\x80\"",
            b"\"\xc0\xaf\"",
        ] {
            bad(input);
        }
        for (input, expected) in [
            ("-0", Value::Number("-0".into())),
            ("0e0", Value::Number("0e0".into())),
            ("1E-2", Value::Number("1E-2".into())),
            ("-0.0e+00", Value::Number("-0.0e+00".into())),
            (
                "\"\\/\\b\\f\\n\\r\\t\\\"\\\\\"",
                Value::String("/\u{8}\u{c}\n\r\t\"\\".into()),
            ),
            ("\"\u{7f}\"", Value::String("\u{7f}".into())),
            (" \t\r\n[ ]\n", Value::Array(Vec::new())),
            (
                "{\"\":null}",
                Value::Object(vec![(
                    "".into(),
                    Node {
                        value: Value::Null,
                        span: (4, 8),
                    },
                )]),
            ),
        ] {
            assert_eq!(ok(input), expected, "{input:?}");
        }
    }

    fn object_with_keys(count: usize, last: Option<&str>) -> Vec<u8> {
        let mut text = String::from("{");
        for index in 0..count {
            text.push_str(&format!(r#""k{index:05}":{{"v":[1]}},"#));
        }
        text.push_str(&format!(r#""{}":0}}"#, last.unwrap_or("end")));
        text.into_bytes()
    }

    /// Issue 8 finding 1: the review's 80,000-key object. With every key compared to every
    /// earlier one this was 3.2e9 comparisons (about 30 s in release, many minutes here);
    /// one hash-set insert per key makes it a few milliseconds. No time is asserted: the
    /// suite's own time limit is what the quadratic version fails.
    #[test]
    fn duplicate_keys_found_in_large_objects() {
        let distinct = parse(&object_with_keys(80_000, None)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(distinct.value.first_duplicate_key(), None);
        let repeated =
            parse(&object_with_keys(80_000, Some("k00000"))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(repeated.value.first_duplicate_key(), Some("k00000"));
        let nested = format!(
            r#"[{{"a":1}},{{"b":{}}}]"#,
            String::from_utf8_lossy(&object_with_keys(80_000, Some("k79999")))
        );
        let nested = parse(nested.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(nested.value.first_duplicate_key(), Some("k79999"));
    }
}
