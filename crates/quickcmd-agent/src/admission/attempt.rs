//! The submission audit row: who asked for what, from where. Every answer to a submit,
//! accepted or refused, writes one (a flood of refusals from one source is summarized,
//! see `flood.rs`).
//!
//! An accepted row keeps the signed command and prompt whole. A refused row keeps each
//! text field as a bounded prefix, with the field's full length and SHA-256 in `details`,
//! and says whether its fields came from a body whose signature verified: an
//! unauthenticated sender must not be able to write a megabyte into the audit log per
//! request, nor have what it claims read as a controller's words.

use quickcmd_protocol::{ErrorCode, SubmitRequest};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::audit::{AuditEvent, AuditKind};

/// Bytes of a text field a refused row keeps (cut at a character boundary).
pub(crate) const REFUSED_FIELD_PREFIX_BYTES: usize = 256;

/// What is known about a submission attempt, for its audit row.
#[derive(Default)]
pub(crate) struct Attempt {
    pub remote: String,
    pub job_id: Option<String>,
    pub controller_id: Option<String>,
    pub command: Option<String>,
    pub prompt: Option<String>,
    /// Whether the fields above come from a body whose signature verified.
    pub verified: bool,
    /// The payload's `requested_by` (v1.1), recorded in the row's `details`.
    pub requested_by: Option<String>,
}

impl Attempt {
    /// An attempt of which only the remote address is known (the body was not read).
    pub(crate) fn unread(remote: String) -> Attempt {
        Attempt {
            remote,
            ..Attempt::default()
        }
    }

    /// The fields of a parsed request, not yet verified.
    pub(crate) fn from_request(remote: String, request: &SubmitRequest<'_>) -> Attempt {
        let payload = &request.payload;
        Attempt {
            remote,
            job_id: Some(payload.job_id.clone()),
            controller_id: Some(payload.controller_id.clone()),
            command: Some(payload.command.clone()),
            prompt: Some(payload.prompt.clone()),
            verified: false,
            requested_by: payload.requested_by.clone(),
        }
    }

    /// Best effort for bodies that did not pass the shape check.
    pub(crate) fn from_unparsed(remote: String, body: &[u8]) -> Attempt {
        let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let field = |name: &str| {
            value
                .pointer(&format!("/payload/{name}"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Attempt {
            remote,
            job_id: field("job_id"),
            controller_id: field("controller_id"),
            command: field("command"),
            prompt: field("prompt"),
            verified: false,
            requested_by: None,
        }
    }

    /// The source a flood of refusals is counted by: the remote IP address, without port.
    pub(crate) fn source(&self) -> String {
        self.remote
            .parse::<std::net::SocketAddr>()
            .map_or_else(|_| self.remote.clone(), |address| address.ip().to_string())
    }

    /// The row of an accepted submission (or an accepted resubmission): fields whole.
    pub(crate) fn event(
        &self,
        accepted: bool,
        code: Option<ErrorCode>,
        status: Option<&str>,
        details: Value,
    ) -> AuditEvent {
        AuditEvent {
            job_id: self.job_id.clone(),
            controller_id: self.controller_id.clone(),
            remote_addr: Some(self.remote.clone()),
            accepted: Some(accepted),
            code: code.map(|c| c.as_str().to_string()),
            status: status.map(str::to_string),
            command: self.command.clone(),
            prompt: self.prompt.clone(),
            details: with_requested_by(details, self.requested_by.as_deref()),
            ..AuditEvent::new(AuditKind::Submission)
        }
    }

    /// The row of a refusal: each text field a bounded prefix; `details` gains
    /// `verified` and, per field cut short, its full `bytes` and `sha256`.
    pub(crate) fn refusal_event(&self, code: ErrorCode, details: Value) -> AuditEvent {
        let mut details = match details {
            Value::Object(map) => map,
            Value::Null => Map::new(),
            other => Map::from_iter([("details".to_string(), other)]),
        };
        details.insert("verified".into(), Value::Bool(self.verified));
        let mut bounded = |name: &str, value: &Option<String>| {
            let text = value.as_deref()?;
            let prefix = prefix(text, REFUSED_FIELD_PREFIX_BYTES);
            if prefix.len() < text.len() {
                details.insert(
                    name.to_string(),
                    json!({
                        "bytes": text.len(),
                        "sha256": hex::encode(Sha256::digest(text.as_bytes())),
                        "prefix_bytes": prefix.len(),
                    }),
                );
            }
            Some(prefix.to_string())
        };
        let job_id = bounded("job_id", &self.job_id);
        let controller_id = bounded("controller_id", &self.controller_id);
        let command = bounded("command", &self.command);
        let prompt = bounded("prompt", &self.prompt);
        AuditEvent {
            job_id,
            controller_id,
            remote_addr: Some(self.remote.clone()),
            accepted: Some(false),
            code: Some(code.as_str().to_string()),
            command,
            prompt,
            details: Value::Object(details),
            ..AuditEvent::new(AuditKind::Submission)
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends between characters.
fn prefix(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut cut = max;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

/// `details` with `"requested_by"` added when the payload named one (a `Null` becomes an
/// object; any other non-object is kept as it is).
pub(crate) fn with_requested_by(
    details: serde_json::Value,
    requested_by: Option<&str>,
) -> serde_json::Value {
    let Some(requested_by) = requested_by else {
        return details;
    };
    let mut details = match details {
        serde_json::Value::Null => serde_json::Value::Object(serde_json::Map::new()),
        other => other,
    };
    if let Some(object) = details.as_object_mut() {
        object.insert("requested_by".to_string(), requested_by.into());
    }
    details
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_rows_keep_a_prefix_the_length_and_the_hash() {
        let command = format!("{}✓{}", "a".repeat(255), "b".repeat(1 << 20));
        let attempt = Attempt {
            remote: "10.0.0.1:5000".into(),
            job_id: Some("j-1".into()),
            controller_id: Some("who".into()),
            command: Some(command.clone()),
            prompt: None,
            verified: false,
            requested_by: None,
        };
        let row = attempt.refusal_event(ErrorCode::ControllerNotAllowed, json!({"error": "no"}));
        // 255 bytes, then a 3-byte character that does not fit in 256.
        assert_eq!(row.command.as_deref(), Some("a".repeat(255).as_str()));
        assert_eq!(row.job_id.as_deref(), Some("j-1"));
        assert_eq!(row.prompt, None);
        assert_eq!(row.details["verified"], json!(false));
        assert_eq!(row.details["error"], json!("no"));
        assert_eq!(row.details["command"]["bytes"], json!(command.len()));
        assert_eq!(
            row.details["command"]["sha256"],
            json!(hex::encode(Sha256::digest(command.as_bytes())))
        );
        assert!(
            row.details.get("job_id").is_none(),
            "short fields are whole"
        );
        assert_eq!(attempt.source(), "10.0.0.1");
        assert_eq!(prefix("✓✓", 4), "✓");
        assert_eq!(prefix("✓✓", 2), "");
    }
}
