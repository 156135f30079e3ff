//! Go's `encoding/json` text for the reference `JobPayload`, byte for byte.
//!
//! Signature mode 2 of protocol-v1 §1: a body that was re-indented or re-escaped by another
//! JSON library still verifies if the payload, written the way Go writes it, matches the
//! signature. Everything here is pure string building.

use crate::json::Value;

/// Why a value has no Go form (Go's decoder would have refused it too).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CanonicalError {
    #[error("number {0} is out of range for a float64")]
    NumberOutOfRange(String),
}

/// Appends `text` as a Go JSON string literal: `<`, `>`, `&`, U+2028, U+2029 and control
/// characters other than `\n`, `\r`, `\t` as `\uXXXX`.
pub fn write_string(out: &mut String, text: &str) {
    out.push('"');
    for ch in text.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{2028}' | '\u{2029}' => push_unicode_escape(out, ch),
            c if (c as u32) < 0x20 => push_unicode_escape(out, c),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn push_unicode_escape(out: &mut String, ch: char) {
    out.push_str(&format!("\\u{:04x}", ch as u32));
}

/// Appends a JSON number as Go writes it: an integer literal keeps its digits (Go clients
/// marshal int64); anything else is parsed as float64 and written with Go's rules.
pub fn write_number(out: &mut String, literal: &str) -> Result<(), CanonicalError> {
    let is_integer = !literal.contains(['.', 'e', 'E']);
    if is_integer {
        out.push_str(literal);
        return Ok(());
    }
    let value: f64 = literal
        .parse()
        .map_err(|_| CanonicalError::NumberOutOfRange(literal.to_string()))?;
    if !value.is_finite() {
        return Err(CanonicalError::NumberOutOfRange(literal.to_string()));
    }
    out.push_str(&go_float64(value));
    Ok(())
}

/// `strconv.AppendFloat(f, 'f' or 'e', -1, 64)` as `encoding/json` picks and trims it.
pub fn go_float64(value: f64) -> String {
    let magnitude = value.abs();
    if magnitude != 0.0 && !(1e-6..1e21).contains(&magnitude) {
        // Rust's `{:e}` gives the same shortest digits; Go writes the exponent with a sign
        // and at least two digits, then trims a leading zero from a negative one.
        let text = format!("{value:e}");
        let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
        let exponent: i32 = exponent.parse().unwrap_or(0);
        if exponent < 0 {
            format!("{mantissa}e-{}", -exponent)
        } else {
            format!("{mantissa}e+{exponent:02}")
        }
    } else {
        format!("{value}")
    }
}

/// Appends any JSON value as Go writes a `map[string]interface{}` tree: compact, object
/// keys sorted bytewise.
pub fn write_value(out: &mut String, value: &Value) -> Result<(), CanonicalError> {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(text) => write_number(out, text)?,
        Value::String(text) => write_string(out, text),
        Value::Array(items) => {
            out.push('[');
            for (index, item) in items.iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_value(out, &item.value)?;
            }
            out.push(']');
        }
        Value::Object(pairs) => {
            let mut sorted: Vec<_> = pairs.iter().collect();
            sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (index, (key, node)) in sorted.into_iter().enumerate() {
                if index > 0 {
                    out.push(',');
                }
                write_string(out, key);
                out.push(':');
                write_value(out, &node.value)?;
            }
            out.push('}');
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn number(literal: &str, expected: &str) {
        let mut out = String::new();
        write_number(&mut out, literal).unwrap_or_else(|e| panic!("{literal}: {e}"));
        assert_eq!(out, expected, "number {literal}");
    }

    #[test]
    fn numbers_as_go_writes_them() {
        number("9007199254740993", "9007199254740993");
        number("-0", "-0");
        number("2.0", "2");
        number("1e-07", "1e-7");
        number("1e-06", "0.000001");
        number("1e21", "1e+21");
        number("1E+21", "1e+21");
        number("1e20", "100000000000000000000");
        number("0.87", "0.87");
        number("-12.25", "-12.25");
        number("1.5e-10", "1.5e-10");
        number("123456789e300", "1.23456789e+308");
        number("0.0", "0");
        number("-0.0", "-0");
        assert!(write_number(&mut String::new(), "1e400").is_err());
    }

    #[test]
    fn strings_as_go_writes_them() {
        let mut out = String::new();
        write_string(
            &mut out,
            "<a&b>\u{2028}\u{2029}\u{1}\u{8}\u{c}\n\r\t\"\\é📁\u{7f}/",
        );
        assert_eq!(
            out,
            r#""\u003ca\u0026b\u003e\u2028\u2029\u0001\u0008\u000c\n\r\t\"\\é📁/""#
                .replace('/', "\u{7f}/")
        );
    }

    #[test]
    fn objects_sorted_bytewise() {
        let value =
            crate::json::parse(br#"{"b":1,"Upper":2,"10":3,"2":4,"a":{"z":null,"y":[true]}}"#)
                .unwrap_or_else(|e| panic!("{e}"))
                .value;
        let mut out = String::new();
        write_value(&mut out, &value).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            out,
            r#"{"10":3,"2":4,"Upper":2,"a":{"y":[true],"z":null},"b":1}"#
        );
    }
}
