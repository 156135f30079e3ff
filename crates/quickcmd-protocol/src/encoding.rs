//! How a read carries the bytes a command wrote (protocol-v1 §5 "Exact bytes"): as UTF-8
//! text, or, with `?encoding=base64`, as standard base64 of the exact bytes.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The `encoding` query value of `GET /api/v1/jobs/:id` and the WebSocket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// UTF-8 text; bytes that are not UTF-8 become U+FFFD (§2–3).
    #[default]
    Text,
    /// Standard padded base64 of the exact bytes.
    Base64,
}

/// An `encoding` value that is neither `text` nor `base64`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("query parameter `encoding` is `{value}`; use `base64` for exact bytes, or `text` (the default)")]
pub struct EncodingError {
    pub value: String,
}

/// Base64 text in a read that is not standard padded base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("output is not standard padded base64: {reason}")]
pub struct DecodeError {
    pub reason: String,
}

impl Encoding {
    pub fn as_str(self) -> &'static str {
        match self {
            Encoding::Text => "text",
            Encoding::Base64 => "base64",
        }
    }

    /// Reads the query value; an absent one is [`Encoding::Text`].
    pub fn from_query(value: Option<&str>) -> Result<Encoding, EncodingError> {
        value.map_or(Ok(Encoding::Text), str::parse)
    }

    /// The wire text of `bytes` in this encoding.
    pub fn encode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Text => String::from_utf8_lossy(bytes).into_owned(),
            Encoding::Base64 => BASE64.encode(bytes),
        }
    }

    /// The bytes behind wire text in this encoding (text is its own UTF-8 bytes).
    pub fn decode(self, text: &str) -> Result<Vec<u8>, DecodeError> {
        match self {
            Encoding::Text => Ok(text.as_bytes().to_vec()),
            Encoding::Base64 => BASE64.decode(text).map_err(|e| DecodeError {
                reason: e.to_string(),
            }),
        }
    }
}

impl FromStr for Encoding {
    type Err = EncodingError;

    fn from_str(value: &str) -> Result<Encoding, EncodingError> {
        match value {
            "text" => Ok(Encoding::Text),
            "base64" => Ok(Encoding::Base64),
            other => Err(EncodingError {
                value: other.chars().take(64).collect(),
            }),
        }
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values() {
        assert_eq!(Encoding::from_query(None), Ok(Encoding::Text));
        assert_eq!(Encoding::from_query(Some("text")), Ok(Encoding::Text));
        assert_eq!(Encoding::from_query(Some("base64")), Ok(Encoding::Base64));
        for bad in ["", "BASE64", "base64url", "hex", "utf8", "base64 "] {
            let error = Encoding::from_query(Some(bad)).err();
            assert_eq!(error.as_ref().map(|e| e.value.as_str()), Some(bad));
        }
        let message = Encoding::from_query(Some("hex"))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(message.contains("`encoding` is `hex`") && message.contains("base64"));
        let long = "x".repeat(10_000);
        assert_eq!(
            Encoding::from_query(Some(&long))
                .err()
                .map(|e| e.value.len()),
            Some(64)
        );
        for encoding in [Encoding::Text, Encoding::Base64] {
            assert_eq!(encoding.as_str().parse(), Ok(encoding));
            let json = serde_json::to_string(&encoding).unwrap_or_default();
            assert_eq!(json, format!("\"{encoding}\""));
        }
    }

    #[test]
    fn exact_bytes_round_trip_only_in_base64() {
        let bytes = b"caf\xc3\xa9 \xff\xfe half:\xe2\x82";
        let wire = Encoding::Base64.encode(bytes);
        assert_eq!(wire, "Y2Fmw6kg//4gaGFsZjrigg==");
        assert_eq!(
            Encoding::Base64.decode(&wire).ok().as_deref(),
            Some(&bytes[..])
        );
        let text = Encoding::Text.encode(bytes);
        assert_eq!(text, "café \u{FFFD}\u{FFFD} half:\u{FFFD}");
        assert!(Encoding::Base64.decode("Y2Fm w==").is_err());
        assert!(Encoding::Base64.decode("Y2Fmw6k").is_err());
    }
}
