//! Protocol v1.1's payload extension fields `stdin` and `requested_by` (protocol-v1 §5):
//! their limits, how they are read from a payload and how a controller writes them. Like
//! `sandbox`, only the raw-bytes signature covers them.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;

use crate::canonical;
use crate::json::Value;
use crate::payload::{invalid, JobPayload, PayloadError, SANDBOX_FIELD};

/// Every optional extension field (protocol-v1 §1 and §5), in the order a controller writes
/// them after the seed fields. The Go form signs none of them.
pub const EXTENSION_FIELDS: [&str; 3] = [SANDBOX_FIELD, "stdin", "requested_by"];

/// Most bytes `stdin` may carry once decoded (protocol-v1 §5).
pub const MAX_STDIN_BYTES: usize = 512 * 1024;

/// Most characters in `requested_by`.
pub const MAX_REQUESTED_BY_CHARS: usize = 128;

/// Whether `text` may stand in `requested_by`: 1–128 characters, none of them a control
/// character, a line or paragraph separator, or a bidirectional override (which could make
/// an audit row read differently from what it holds).
pub fn is_valid_requested_by(text: &str) -> bool {
    let mut count = 0usize;
    for ch in text.chars() {
        count += 1;
        let unprintable = ch.is_control()
            || matches!(
                ch,
                '\u{2028}' | '\u{2029}' | '\u{200E}' | '\u{200F}' | '\u{061C}'
            )
            || ('\u{202A}'..='\u{202E}').contains(&ch)
            || ('\u{2066}'..='\u{2069}').contains(&ch);
        if unprintable || count > MAX_REQUESTED_BY_CHARS {
            return false;
        }
    }
    count > 0
}

/// `stdin`: standard padded base64 of at most [`MAX_STDIN_BYTES`]; null is absent. The
/// encoded length is checked first, so an oversized value is refused without decoding it.
pub(crate) fn stdin_from_value(value: Option<&Value>) -> Result<Option<Vec<u8>>, PayloadError> {
    let text = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(text)) => text,
        Some(other) => {
            return Err(invalid(format!(
                "payload field `stdin` must be a base64 string, not {}",
                other.kind()
            )))
        }
    };
    let too_large = || {
        invalid(format!(
            "payload field `stdin` holds more than {MAX_STDIN_BYTES} bytes once decoded"
        ))
    };
    if text.len() > MAX_STDIN_BYTES.div_ceil(3) * 4 {
        return Err(too_large());
    }
    let bytes = BASE64.decode(text).map_err(|e| {
        invalid(format!(
            "payload field `stdin` must be standard padded base64: {e}"
        ))
    })?;
    if bytes.len() > MAX_STDIN_BYTES {
        return Err(too_large());
    }
    Ok(Some(bytes))
}

pub(crate) fn requested_by_from_value(
    value: Option<&Value>,
) -> Result<Option<String>, PayloadError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if is_valid_requested_by(text) => Ok(Some(text.clone())),
        Some(Value::String(_)) => Err(invalid(format!(
            "payload field `requested_by` must be 1-{MAX_REQUESTED_BY_CHARS} printable characters"
        ))),
        Some(other) => Err(invalid(format!(
            "payload field `requested_by` must be a string, not {}",
            other.kind()
        ))),
    }
}

/// Appends `,"stdin":"<base64>"` and `,"requested_by":"<text>"` for the ones present.
pub(crate) fn write_stdin_and_requested_by(out: &mut String, payload: &JobPayload) {
    if let Some(stdin) = &payload.stdin {
        out.push_str(",\"stdin\":\"");
        BASE64.encode_string(stdin, out);
        out.push('"');
    }
    if let Some(requested_by) = &payload.requested_by {
        out.push_str(",\"requested_by\":");
        canonical::write_string(out, requested_by);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sign::{self, verify_submit, SignatureRefusal, SignedForm};
    use crate::{parse_submit, SubmitRequest};

    const SEED_PAYLOAD: &str = r#"{"job_id":"job-123","prompt":"list files","command":"ls -la","candidate_metadata":{},"plugin_metadata":{},"required_scopes":[],"snapshot_metadata":"","ttl":1704628800,"timestamp":1704628500,"controller_id":"controller-1"}"#;

    /// A body whose payload is the seed's with `extra` appended, signed over its raw bytes.
    fn body(extra: &str) -> String {
        let payload = format!("{}{extra}}}", &SEED_PAYLOAD[..SEED_PAYLOAD.len() - 1]);
        let signature = sign::sign(b"k", payload.as_bytes());
        format!(
            r#"{{"payload":{payload},"signature":{{"signature":"{signature}","algorithm":"HMAC-SHA256"}}}}"#
        )
    }

    fn parsed(body: &str) -> Result<SubmitRequest<'_>, PayloadError> {
        parse_submit(body.as_bytes())
    }

    fn refused(extra: &str, needle: &str) {
        match parsed(&body(extra)) {
            Err(PayloadError::InvalidPayload(message)) => {
                assert!(message.contains(needle), "{message:?} lacks {needle:?}")
            }
            other => panic!("expected InvalidPayload for {extra}: {other:?}"),
        }
    }

    #[test]
    fn stdin_decodes_standard_padded_base64() {
        for (wire, bytes) in [
            ("", &b""[..]),
            ("AA==", b"\0"),
            ("aGk=", b"hi"),
            ("aGkK", b"hi\n"),
            ("//79", b"\xff\xfe\xfd"),
        ] {
            let body = body(&format!(r#","stdin":"{wire}""#));
            let request = parsed(&body).unwrap_or_else(|e| panic!("{wire}: {e}"));
            assert_eq!(request.payload.stdin.as_deref(), Some(bytes));
        }
        let body = body(r#","stdin":null"#);
        assert_eq!(parsed(&body).map(|r| r.payload.stdin).ok(), Some(None));
        for bad in ["aGk", "aGk==", "aG k=", "aGk=\\n", "_-8=", "aGl=", "=", "a"] {
            refused(&format!(r#","stdin":"{bad}""#), "standard padded base64");
        }
        refused(
            r#","stdin":[104,105]"#,
            "must be a base64 string, not array",
        );
    }

    #[test]
    fn stdin_bound_is_exact() {
        let at_limit = BASE64.encode(vec![7u8; MAX_STDIN_BYTES]);
        let body_at = body(&format!(r#","stdin":"{at_limit}""#));
        assert!(body_at.len() < crate::MAX_BODY_BYTES);
        let request = parsed(&body_at).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            request.payload.stdin.map(|s| s.len()),
            Some(MAX_STDIN_BYTES)
        );
        // One byte more encodes to the same length (no padding instead of `==`), so it
        // passes the length check and is refused once decoded.
        let over = BASE64.encode(vec![7u8; MAX_STDIN_BYTES + 1]);
        assert_eq!(over.len(), at_limit.len());
        refused(&format!(r#","stdin":"{over}""#), "more than 524288 bytes");
        // Far over: refused by length before any decoding, even when not base64 at all.
        refused(
            &format!(r#","stdin":"{}""#, "!".repeat(800_000)),
            "more than 524288 bytes",
        );
    }

    #[test]
    fn requested_by_is_short_printable_text() {
        for good in [
            "alice@build-host",
            "ci",
            "Zoë Ünal (ops)",
            &"é".repeat(128),
            " ",
        ] {
            let body = body(&format!(r#","requested_by":{}"#, serde_json::json!(good)));
            let request = parsed(&body).unwrap_or_else(|e| panic!("{good:?}: {e}"));
            assert_eq!(request.payload.requested_by.as_deref(), Some(good));
        }
        for bad in [
            String::new(),
            "é".repeat(129),
            "a\nb".into(),
            "a\u{0}b".into(),
            "a\u{7f}".into(),
            "a\u{85}".into(),
            "a\u{2028}b".into(),
            "admin\u{202E}nimda".into(),
            "x\u{2066}y".into(),
            "x\u{200F}".into(),
        ] {
            assert!(!is_valid_requested_by(&bad), "{bad:?}");
            refused(
                &format!(r#","requested_by":{}"#, serde_json::json!(bad)),
                "1-128 printable characters",
            );
        }
        refused(r#","requested_by":7"#, "must be a string, not number");
        let body = body(r#","requested_by":null"#);
        assert_eq!(
            parsed(&body).map(|r| r.payload.requested_by).ok(),
            Some(None)
        );
    }

    /// Extension fields ride only under the raw signature: signed in the Go form (which
    /// leaves them out), the payload is refused naming the field.
    #[test]
    fn go_form_refuses_every_extension_field() {
        for (extra, field) in [
            (r#","sandbox":{"network":false}"#, "sandbox"),
            (r#","stdin":"aGk=""#, "stdin"),
            (r#","requested_by":"mallory""#, "requested_by"),
            (r#","stdin":"aGk=","requested_by":"m""#, "stdin"),
        ] {
            let body = body(extra);
            let mut request = parsed(&body).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(verify_submit(b"k", &request), Ok(SignedForm::Raw));
            let go = request
                .payload
                .go_canonical_json()
                .unwrap_or_else(|e| panic!("{e}"));
            assert!(!go.contains(field), "{go}");
            request.signature = sign::sign(b"k", go.as_bytes());
            assert_eq!(
                verify_submit(b"k", &request),
                Err(SignatureRefusal::UnsignedExtension { field })
            );
        }
        // Null extension fields carry nothing, so the Go form may stand in.
        let body = body(r#","stdin":null,"requested_by":null,"sandbox":null"#);
        let mut request = parsed(&body).unwrap_or_else(|e| panic!("{e}"));
        request.signature = sign::sign(b"k", SEED_PAYLOAD.as_bytes());
        assert!(matches!(
            verify_submit(b"k", &request),
            Ok(SignedForm::GoCanonical(_))
        ));
    }

    #[test]
    fn controller_writes_what_the_agent_reads() {
        let mut payload = parsed(&body("")).unwrap_or_else(|e| panic!("{e}")).payload;
        assert_eq!(payload.extension_field(), None);
        payload.stdin = Some(b"line 1\n\xff".to_vec());
        payload.requested_by = Some("ann <ann@x> & \"co\"".into());
        let signed = payload.to_signed_json().unwrap_or_else(|e| panic!("{e}"));
        assert!(signed.ends_with(
            r#""controller_id":"controller-1","stdin":"bGluZSAxCv8=","requested_by":"ann \u003cann@x\u003e \u0026 \"co\""}"#
        ));
        let node = crate::json::parse(signed.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let read = JobPayload::from_node(&node).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read, payload);
        assert_eq!(
            payload.go_canonical_json().ok().as_deref(),
            Some(SEED_PAYLOAD)
        );
    }
}
