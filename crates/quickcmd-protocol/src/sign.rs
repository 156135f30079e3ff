//! HMAC-SHA256 signatures: job payloads (both forms of protocol-v1 §1) and read auth (§2).
//! Every comparison of a signature is constant-time.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::payload::SubmitRequest;

type HmacSha256 = Hmac<Sha256>;

/// The only algorithm protocol v1 knows.
pub const ALGORITHM: &str = "HMAC-SHA256";

/// The `Authorization` scheme of read requests.
pub const AUTH_SCHEME: &str = "QuickCMD-HMAC-SHA256";

fn mac(secret: &[u8]) -> HmacSha256 {
    // HMAC takes keys of any length; `new_from_slice` only fails for fixed-size MACs.
    <HmacSha256 as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length")
}

/// Lowercase hex HMAC-SHA256 of `message` under `secret`.
pub fn sign(secret: &[u8], message: &[u8]) -> String {
    let mut mac = mac(secret);
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature_hex` is the HMAC of `message`; hex case is not significant.
pub(crate) fn verify(secret: &[u8], message: &[u8], signature_hex: &str) -> bool {
    let Ok(expected) = hex::decode(signature_hex) else {
        return false;
    };
    let mut mac = mac(secret);
    mac.update(message);
    mac.verify_slice(&expected).is_ok()
}

/// Which bytes a payload signature matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedForm {
    /// The payload bytes as they stand in the body.
    Raw,
    /// The payload re-serialized as Go writes it; carries those bytes.
    GoCanonical(String),
}

impl SignedForm {
    /// The exact bytes the signature covers, for idempotency comparisons.
    pub fn signed_bytes<'a>(&'a self, request: &'a SubmitRequest<'_>) -> &'a [u8] {
        match self {
            SignedForm::Raw => request.payload_raw,
            SignedForm::GoCanonical(text) => text.as_bytes(),
        }
    }
}

/// Why a payload signature did not verify in either form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureRefusal {
    /// Neither the raw bytes nor the Go form matched.
    Mismatch,
    /// The raw bytes did not match and the Go form cannot stand in for them, because the
    /// payload carries this extension field (`sandbox`, `stdin`, `requested_by`), which
    /// that form does not sign.
    UnsignedExtension { field: &'static str },
}

/// Checks a submit body's signature: first the raw payload bytes, then the Go form.
pub fn verify_submit(
    secret: &[u8],
    request: &SubmitRequest<'_>,
) -> Result<SignedForm, SignatureRefusal> {
    if verify(secret, request.payload_raw, &request.signature) {
        return Ok(SignedForm::Raw);
    }
    if let Some(field) = request.payload.extension_field() {
        return Err(SignatureRefusal::UnsignedExtension { field });
    }
    let canonical = request
        .payload
        .go_canonical_json()
        .map_err(|_| SignatureRefusal::Mismatch)?;
    if canonical.as_bytes() != request.payload_raw
        && verify(secret, canonical.as_bytes(), &request.signature)
    {
        return Ok(SignedForm::GoCanonical(canonical));
    }
    Err(SignatureRefusal::Mismatch)
}

/// The message a read request signs: `METHOD\nPATH\nTIMESTAMP` (PATH without query).
pub(crate) fn read_auth_message(method: &str, path: &str, timestamp: i64) -> String {
    format!("{}\n{}\n{}", method.to_ascii_uppercase(), path, timestamp)
}

/// Credentials of a read request, from the header or from query parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadAuth {
    pub controller_id: String,
    pub timestamp: i64,
    pub signature: String,
}

/// Why an `Authorization` header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadAuthError {
    #[error("authorization scheme must be {AUTH_SCHEME}")]
    WrongScheme,
    #[error("authorization is missing `{0}`")]
    Missing(&'static str),
    #[error("authorization timestamp is not a whole number")]
    BadTimestamp,
    #[error("authorization part `{0}` is not understood")]
    Unknown(String),
}

impl ReadAuth {
    /// Signs a read request as a controller would.
    pub fn sign(
        controller_id: &str,
        secret: &[u8],
        method: &str,
        path: &str,
        timestamp: i64,
    ) -> ReadAuth {
        ReadAuth {
            controller_id: controller_id.to_string(),
            timestamp,
            signature: sign(
                secret,
                read_auth_message(method, path, timestamp).as_bytes(),
            ),
        }
    }

    /// The `Authorization` header value.
    pub fn header_value(&self) -> String {
        format!(
            "{AUTH_SCHEME} controller_id={},timestamp={},signature={}",
            self.controller_id, self.timestamp, self.signature
        )
    }

    /// The same credentials as query parameters (`controller_id`, `timestamp`,
    /// `signature`), percent-encoded, for WebSocket clients that cannot set headers.
    pub fn query_string(&self) -> String {
        format!(
            "controller_id={}&timestamp={}&signature={}",
            percent_encode(&self.controller_id),
            self.timestamp,
            self.signature
        )
    }

    /// Parses `QuickCMD-HMAC-SHA256 controller_id=..,timestamp=..,signature=..`.
    pub fn parse_header(value: &str) -> Result<ReadAuth, ReadAuthError> {
        let rest = value
            .trim()
            .strip_prefix(AUTH_SCHEME)
            .filter(|rest| rest.starts_with(' '))
            .ok_or(ReadAuthError::WrongScheme)?;
        let (mut controller_id, mut timestamp, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let (key, value) = part
                .trim()
                .split_once('=')
                .ok_or_else(|| ReadAuthError::Unknown(part.trim().to_string()))?;
            match key {
                "controller_id" => controller_id = Some(value.to_string()),
                "timestamp" => timestamp = Some(value),
                "signature" => signature = Some(value.to_string()),
                other => return Err(ReadAuthError::Unknown(other.to_string())),
            }
        }
        Ok(ReadAuth {
            controller_id: controller_id.ok_or(ReadAuthError::Missing("controller_id"))?,
            timestamp: timestamp
                .ok_or(ReadAuthError::Missing("timestamp"))?
                .parse()
                .map_err(|_| ReadAuthError::BadTimestamp)?,
            signature: signature.ok_or(ReadAuthError::Missing("signature"))?,
        })
    }

    /// Whether the timestamp lies within `skew_seconds` of `now`, either way. The peer's
    /// number may be any `i64`, so the distance is taken without overflow: `(ts - now).abs()`
    /// panics in a debug build and wraps to a negative number (inside the window) in a
    /// release build without overflow checks. A negative skew admits nothing.
    pub fn within_clock_window(&self, now: i64, skew_seconds: i64) -> bool {
        skew_seconds >= 0 && self.timestamp.abs_diff(now) <= skew_seconds.unsigned_abs()
    }

    /// Whether the signature covers `method` and `path` under `secret` (the clock window is
    /// [`ReadAuth::within_clock_window`]).
    pub fn verify(&self, secret: &[u8], method: &str, path: &str) -> bool {
        verify(
            secret,
            read_auth_message(method, path, self.timestamp).as_bytes(),
            &self.signature,
        )
    }
}

/// Percent-encodes everything but unreserved characters (RFC 3986).
pub(crate) fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let signature = sign(b"k", b"message");
        assert!(verify(b"k", b"message", &signature));
        assert!(verify(b"k", b"message", &signature.to_uppercase()));
        assert!(!verify(b"k2", b"message", &signature));
        assert!(!verify(b"k", b"messagf", &signature));
        assert!(!verify(b"k", b"message", &signature[..62]));
        assert!(!verify(b"k", b"message", "zz"));
        assert!(!verify(b"k", b"message", ""));
    }

    #[test]
    fn read_auth_round_trip_and_attacks() {
        let auth = ReadAuth::sign("ctl-1", b"secret", "GET", "/api/v1/jobs/j1", 1_700_000_000);
        let parsed = ReadAuth::parse_header(&auth.header_value()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(parsed, auth);
        assert!(parsed.verify(b"secret", "GET", "/api/v1/jobs/j1"));
        assert!(!parsed.verify(b"secret", "DELETE", "/api/v1/jobs/j1"));
        assert!(!parsed.verify(b"secret", "GET", "/api/v1/jobs/j2"));
        assert!(!parsed.verify(b"other", "GET", "/api/v1/jobs/j1"));
        assert_eq!(
            ReadAuth::parse_header("Bearer x"),
            Err(ReadAuthError::WrongScheme)
        );
        assert_eq!(
            ReadAuth::parse_header("QuickCMD-HMAC-SHA256 controller_id=a,signature=b"),
            Err(ReadAuthError::Missing("timestamp"))
        );
        assert_eq!(
            ReadAuth::parse_header("QuickCMD-HMAC-SHA256 controller_id=a,timestamp=x,signature=b"),
            Err(ReadAuthError::BadTimestamp)
        );
        assert_eq!(percent_encode("https://a b"), "https%3A%2F%2Fa%20b");
    }

    /// Issue 8 finding 10: a peer's timestamp at the ends of `i64` is outside the window,
    /// whatever our clock says, and never overflows.
    #[test]
    fn clock_window_takes_any_timestamp() {
        let at = |timestamp: i64| ReadAuth {
            controller_id: "c".into(),
            timestamp,
            signature: String::new(),
        };
        let now = 1_700_000_000;
        for (timestamp, skew, inside) in [
            (now, 300, true),
            (now - 300, 300, true),
            (now + 300, 300, true),
            (now - 301, 300, false),
            (now + 301, 300, false),
            (i64::MIN, 300, false),
            (i64::MIN + 1, 300, false),
            (i64::MAX, 300, false),
            (now, -1, false),
            (now, 0, true),
            (i64::MIN, i64::MAX, false),
            (i64::MAX, i64::MAX, true),
        ] {
            assert_eq!(
                at(timestamp).within_clock_window(now, skew),
                inside,
                "timestamp {timestamp}, skew {skew}"
            );
        }
        assert!(!at(i64::MAX).within_clock_window(i64::MIN, i64::MAX));
        assert!(!at(now).within_clock_window(i64::MIN, 300));
    }
}
