//! The job payload and the submit body: strict shape checks, the bytes that were signed,
//! and the bytes a controller signs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::canonical::{self, CanonicalError};
use crate::extension::{self, EXTENSION_FIELDS};
use crate::json::{self, JsonError, Node, Value};

/// Bodies larger than this are refused with 413 before any parsing.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The payload fields of the reference Go struct, in the order Go writes them.
pub(crate) const PAYLOAD_FIELDS: [&str; 10] = [
    "job_id",
    "prompt",
    "command",
    "candidate_metadata",
    "plugin_metadata",
    "required_scopes",
    "snapshot_metadata",
    "ttl",
    "timestamp",
    "controller_id",
];

/// The optional extension field; signed only in the raw form.
pub(crate) const SANDBOX_FIELD: &str = "sandbox";

/// What a controller asks of the sandbox; every value is capped by the agent's config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_limit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mounts: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
}

/// A job as signed by a controller: the seed fields plus the optional extensions
/// (`sandbox`, and v1.1's `stdin` and `requested_by`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobPayload {
    pub job_id: String,
    pub prompt: String,
    pub command: String,
    /// An object, or `None` for JSON null.
    pub candidate_metadata: Option<Value>,
    /// An object, or `None` for JSON null.
    pub plugin_metadata: Option<Value>,
    pub required_scopes: Option<Vec<String>>,
    pub snapshot_metadata: String,
    /// Unix seconds after which the job must not start.
    pub ttl: i64,
    /// Unix seconds when the controller signed it.
    pub timestamp: i64,
    pub controller_id: String,
    pub sandbox: Option<SandboxRequest>,
    /// Bytes for the command's standard input, then end of file; at most
    /// [`MAX_STDIN_BYTES`]. On the wire: standard padded base64.
    pub stdin: Option<Vec<u8>>,
    /// For whom the controller signed: 1–128 printable characters.
    pub requested_by: Option<String>,
}

/// Why a submit body was refused before any signature check.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PayloadError {
    #[error("request body is {size} bytes, over the {MAX_BODY_BYTES}-byte limit")]
    TooLarge { size: usize },
    #[error("request body is not JSON: {0}")]
    InvalidJson(#[from] JsonError),
    #[error("{0}")]
    InvalidPayload(String),
}

pub(crate) fn invalid(message: impl Into<String>) -> PayloadError {
    PayloadError::InvalidPayload(message.into())
}

/// Whether `id` is 1–128 characters of `[A-Za-z0-9._:-]`.
pub fn is_valid_job_id(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
}

impl JobPayload {
    /// The first extension field this payload carries, if any: a payload that does must
    /// verify over its raw bytes, because the Go form does not sign these fields.
    pub fn extension_field(&self) -> Option<&'static str> {
        let present = [
            self.sandbox.is_some(),
            self.stdin.is_some(),
            self.requested_by.is_some(),
        ];
        EXTENSION_FIELDS
            .into_iter()
            .zip(present)
            .find_map(|(name, present)| present.then_some(name))
    }

    /// Go's `json.Marshal` of the reference struct (the ten seed fields, no extension).
    pub fn go_canonical_json(&self) -> Result<String, CanonicalError> {
        let mut out = String::with_capacity(self.size_hint());
        out.push('{');
        self.write_seed_fields(&mut out)?;
        out.push('}');
        Ok(out)
    }

    /// The bytes a controller signs and sends: the Go form, with the extension fields that
    /// are present appended (`sandbox`, `stdin`, `requested_by`). Signed as raw bytes, so the
    /// agent verifies it with signature mode 1.
    pub fn to_signed_json(&self) -> Result<String, CanonicalError> {
        let mut out = String::with_capacity(self.size_hint());
        out.push('{');
        self.write_seed_fields(&mut out)?;
        if let Some(sandbox) = &self.sandbox {
            out.push_str(",\"sandbox\":");
            // Serializing a plain struct of strings, numbers and maps cannot fail; an
            // f64 NaN would, and is refused as out of range.
            let text = serde_json::to_string(sandbox)
                .map_err(|_| CanonicalError::NumberOutOfRange("sandbox.cpu_limit".into()))?;
            out.push_str(&text);
        }
        extension::write_stdin_and_requested_by(&mut out, self);
        out.push('}');
        Ok(out)
    }

    /// A starting capacity for the written text; lengths come from a peer, so they add
    /// without wrapping.
    fn size_hint(&self) -> usize {
        let stdin = self
            .stdin
            .as_ref()
            .map_or(0, |bytes| bytes.len() / 3 * 4 + 4);
        256usize
            .saturating_add(self.command.len())
            .saturating_add(self.prompt.len())
            .saturating_add(stdin)
    }

    fn write_seed_fields(&self, out: &mut String) -> Result<(), CanonicalError> {
        let write_map = |out: &mut String, value: &Option<Value>| match value {
            Some(value) => canonical::write_value(out, value),
            None => {
                out.push_str("null");
                Ok(())
            }
        };
        out.push_str("\"job_id\":");
        canonical::write_string(out, &self.job_id);
        out.push_str(",\"prompt\":");
        canonical::write_string(out, &self.prompt);
        out.push_str(",\"command\":");
        canonical::write_string(out, &self.command);
        out.push_str(",\"candidate_metadata\":");
        write_map(out, &self.candidate_metadata)?;
        out.push_str(",\"plugin_metadata\":");
        write_map(out, &self.plugin_metadata)?;
        out.push_str(",\"required_scopes\":");
        match &self.required_scopes {
            Some(scopes) => {
                out.push('[');
                for (index, scope) in scopes.iter().enumerate() {
                    if index > 0 {
                        out.push(',');
                    }
                    canonical::write_string(out, scope);
                }
                out.push(']');
            }
            None => out.push_str("null"),
        }
        out.push_str(",\"snapshot_metadata\":");
        canonical::write_string(out, &self.snapshot_metadata);
        out.push_str(&format!(
            ",\"ttl\":{},\"timestamp\":{}",
            self.ttl, self.timestamp
        ));
        out.push_str(",\"controller_id\":");
        canonical::write_string(out, &self.controller_id);
        Ok(())
    }

    /// Reads a payload object, refusing repeated fields, wrong types, missing required
    /// fields and fields the protocol does not define.
    pub fn from_node(node: &Node) -> Result<JobPayload, PayloadError> {
        JobPayload::from_value(node.value.clone())
    }

    /// [`JobPayload::from_node`] taking the tree, so the metadata objects (the bulk of a
    /// large payload) move into the payload instead of being copied.
    fn from_value(value: Value) -> Result<JobPayload, PayloadError> {
        let pairs = match value {
            Value::Object(pairs) => pairs,
            other => {
                return Err(invalid(format!(
                    "payload must be an object, not {}",
                    other.kind()
                )))
            }
        };
        if let Some(key) = json::first_duplicate_key(&pairs) {
            return Err(invalid(format!(
                "payload field `{key}` is given more than once"
            )));
        }
        let get = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, n)| &n.value);
        if let Some((unknown, _)) = pairs.iter().find(|(k, _)| {
            !PAYLOAD_FIELDS.contains(&k.as_str()) && !EXTENSION_FIELDS.contains(&k.as_str())
        }) {
            return Err(invalid(format!(
                "payload field `{unknown}` is not part of protocol v1"
            )));
        }
        let job_id = required_string(get("job_id"), "job_id")?;
        if !is_valid_job_id(&job_id) {
            return Err(invalid(
                "payload field `job_id` must be 1-128 characters of A-Z a-z 0-9 . _ : -",
            ));
        }
        let command = required_string(get("command"), "command")?;
        if command.is_empty() {
            return Err(invalid("payload field `command` must not be empty"));
        }
        let controller_id = required_string(get("controller_id"), "controller_id")?;
        if controller_id.is_empty() {
            return Err(invalid("payload field `controller_id` must not be empty"));
        }
        check_object(get("candidate_metadata"), "candidate_metadata")?;
        check_object(get("plugin_metadata"), "plugin_metadata")?;
        let mut payload = JobPayload {
            job_id,
            prompt: optional_string(get("prompt"), "prompt")?,
            command,
            candidate_metadata: None,
            plugin_metadata: None,
            required_scopes: optional_string_list(get("required_scopes"), "required_scopes")?,
            snapshot_metadata: optional_string(get("snapshot_metadata"), "snapshot_metadata")?,
            ttl: required_int(get("ttl"), "ttl")?,
            timestamp: required_int(get("timestamp"), "timestamp")?,
            controller_id,
            sandbox: match get(SANDBOX_FIELD) {
                None | Some(Value::Null) => None,
                Some(value) => Some(sandbox_from_value(value)?),
            },
            stdin: extension::stdin_from_value(get("stdin"))?,
            requested_by: extension::requested_by_from_value(get("requested_by"))?,
        };
        for (key, node) in pairs {
            let slot = match key.as_str() {
                "candidate_metadata" => &mut payload.candidate_metadata,
                "plugin_metadata" => &mut payload.plugin_metadata,
                _ => continue,
            };
            // check_object let only an object or null through.
            *slot = matches!(node.value, Value::Object(_)).then_some(node.value);
        }
        Ok(payload)
    }
}

fn required_string(value: Option<&Value>, name: &str) -> Result<String, PayloadError> {
    match value {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(invalid(format!(
            "payload field `{name}` must be a string, not {}",
            other.kind()
        ))),
        None => Err(invalid(format!("payload field `{name}` is missing"))),
    }
}

fn optional_string(value: Option<&Value>, name: &str) -> Result<String, PayloadError> {
    match value {
        None => Ok(String::new()),
        some => required_string(some, name),
    }
}

fn required_int(value: Option<&Value>, name: &str) -> Result<i64, PayloadError> {
    match value {
        Some(Value::Number(text)) => text.parse::<i64>().map_err(|_| {
            invalid(format!(
                "payload field `{name}` must be a whole number of unix seconds"
            ))
        }),
        Some(other) => Err(invalid(format!(
            "payload field `{name}` must be a number, not {}",
            other.kind()
        ))),
        None => Err(invalid(format!("payload field `{name}` is missing"))),
    }
}

/// Refuses a metadata field that is neither an object nor null.
fn check_object(value: Option<&Value>, name: &str) -> Result<(), PayloadError> {
    match value {
        None | Some(Value::Null) | Some(Value::Object(_)) => Ok(()),
        Some(other) => Err(invalid(format!(
            "payload field `{name}` must be an object or null, not {}",
            other.kind()
        ))),
    }
}

fn optional_string_list(
    value: Option<&Value>,
    name: &str,
) -> Result<Option<Vec<String>>, PayloadError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match &item.value {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(format!(
                    "payload field `{name}` must hold strings, not {}",
                    other.kind()
                ))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(other) => Err(invalid(format!(
            "payload field `{name}` must be an array or null, not {}",
            other.kind()
        ))),
    }
}

fn sandbox_from_value(value: &Value) -> Result<SandboxRequest, PayloadError> {
    if !matches!(value, Value::Object(_)) {
        return Err(invalid(format!(
            "payload field `sandbox` must be an object, not {}",
            value.kind()
        )));
    }
    serde_json::from_value::<SandboxRequest>(value.to_serde())
        .map_err(|e| invalid(format!("payload field `sandbox`: {e}")))
}

/// A submit body that has the right shape; nothing about it is trusted yet.
#[derive(Debug, Clone)]
pub struct SubmitRequest<'body> {
    pub payload: JobPayload,
    /// The `payload` value's bytes exactly as they stand in the body (signature mode 1).
    pub payload_raw: &'body [u8],
    pub signature: String,
    pub algorithm: String,
}

/// Parses a `POST /api/v1/jobs` body: size, JSON, then shape (protocol-v1 §1 rows 1–2).
pub fn parse_submit(body: &[u8]) -> Result<SubmitRequest<'_>, PayloadError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(PayloadError::TooLarge { size: body.len() });
    }
    let pairs = match json::parse(body)?.value {
        Value::Object(pairs) => pairs,
        other => {
            return Err(invalid(format!(
                "request body must be an object with `payload` and `signature`, not {}",
                other.kind()
            )))
        }
    };
    // Only two keys may appear, so a repeat is found with two flags, not a scan per key.
    let (mut seen_payload, mut seen_signature) = (false, false);
    for (key, _) in &pairs {
        let seen = match key.as_str() {
            "payload" => &mut seen_payload,
            "signature" => &mut seen_signature,
            _ => {
                return Err(invalid(format!(
                    "body field `{key}` is not part of protocol v1"
                )))
            }
        };
        if std::mem::replace(seen, true) {
            return Err(invalid(format!(
                "body field `{key}` is given more than once"
            )));
        }
    }
    let (mut payload_node, mut signature_node) = (None, None);
    for (key, node) in pairs {
        match key.as_str() {
            "payload" => payload_node = Some(node),
            // The loop above let only `payload` and `signature` through.
            _ => signature_node = Some(node),
        }
    }
    let payload_node = payload_node.ok_or_else(|| invalid("body field `payload` is missing"))?;
    let signature_node =
        signature_node.ok_or_else(|| invalid("body field `signature` is missing"))?;
    let (start, end) = payload_node.span;
    let payload = JobPayload::from_value(payload_node.value)?;
    let Value::Object(sig_pairs) = &signature_node.value else {
        return Err(invalid("body field `signature` must be an object"));
    };
    if let Some(key) = signature_node.value.first_duplicate_key() {
        return Err(invalid(format!(
            "signature field `{key}` is given more than once"
        )));
    }
    if let Some((unknown, _)) = sig_pairs
        .iter()
        .find(|(k, _)| k != "signature" && k != "algorithm")
    {
        return Err(invalid(format!(
            "signature field `{unknown}` is not part of protocol v1"
        )));
    }
    let sig_get = |name: &str| {
        sig_pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, n)| &n.value)
    };
    let signature = match sig_get("signature") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(invalid("signature field `signature` must be a hex string")),
    };
    let algorithm = match sig_get("algorithm") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(invalid("signature field `algorithm` must be a string")),
    };
    Ok(SubmitRequest {
        payload,
        payload_raw: &body[start..end],
        signature,
        algorithm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = r#"{"payload":{"job_id":"job-123","prompt":"list files","command":"ls -la","candidate_metadata":{},"plugin_metadata":{},"required_scopes":[],"snapshot_metadata":"","ttl":1704628800,"timestamp":1704628500,"controller_id":"controller-1"},"signature":{"signature":"ab","algorithm":"HMAC-SHA256"}}"#;

    fn refused(body: &str, needle: &str) {
        match parse_submit(body.as_bytes()) {
            Err(PayloadError::InvalidPayload(message)) => {
                assert!(message.contains(needle), "{message:?} lacks {needle:?}")
            }
            other => panic!("expected InvalidPayload for {body}: {other:?}"),
        }
    }

    #[test]
    fn seed_body_parses_and_round_trips() {
        let request = parse_submit(SEED.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(request.payload.job_id, "job-123");
        let canonical = request
            .payload
            .go_canonical_json()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(canonical.as_bytes(), request.payload_raw);
    }

    #[test]
    fn shape_errors_name_the_field() {
        refused(
            &SEED.replace(r#""ttl":1704628800"#, r#""ttl":"soon""#),
            "`ttl`",
        );
        refused(
            &SEED.replace(r#""ttl":1704628800"#, r#""ttl":1704628800.5"#),
            "`ttl`",
        );
        refused(
            &SEED.replace(r#","ttl":1704628800"#, ""),
            "`ttl` is missing",
        );
        refused(
            &SEED.replace(r#""command":"ls -la""#, r#""command":"""#),
            "`command`",
        );
        refused(
            &SEED.replace(r#""job_id":"job-123""#, r#""job_id":"a/b""#),
            "`job_id`",
        );
        refused(
            &SEED.replace(r#""prompt":"list files""#, r#""prompt":"a","prompt":"b""#),
            "more than once",
        );
        refused(
            &SEED.replace(r#""prompt":"list files""#, r#""prompt":"a","extra":1"#),
            "`extra`",
        );
        refused(
            &SEED.replace(r#""required_scopes":[]"#, r#""required_scopes":[1]"#),
            "strings",
        );
        refused(
            &SEED.replace(r#""candidate_metadata":{}"#, r#""candidate_metadata":[]"#),
            "object or null",
        );
        refused(
            &SEED.replace(r#""algorithm""#, r#""algorithm":"x","algorithm""#),
            "more than once",
        );
        refused(
            &SEED.replace(
                r#""candidate_metadata":{}"#,
                r#""candidate_metadata":{"a":1,"a":2}"#,
            ),
            "more than once",
        );
        refused(
            &SEED.replace(r#"{"payload""#, r#"{"payload":{},"payload""#),
            "more than once",
        );
        refused(
            &SEED.replace(r#""prompt""#, r#""sandbox":{"cpus":2},"prompt""#),
            "`sandbox`",
        );
        refused("[]", "object");
        assert!(matches!(
            parse_submit(b"{"),
            Err(PayloadError::InvalidJson(_))
        ));
    }

    /// Issue 8 finding 1: the review's body, 80,000 keys in `candidate_metadata` (about
    /// 870 KB), parses in linear time; the same body with its last key repeated is refused
    /// naming that key.
    #[test]
    fn flood_of_metadata_keys() {
        let keys = |last: &str| {
            let mut keys: Vec<String> = (0..79_999).map(|i| format!(r#""k{i:05}":1"#)).collect();
            keys.push(format!(r#""{last}":1"#));
            SEED.replace(
                r#""candidate_metadata":{}"#,
                &format!(r#""candidate_metadata":{{{}}}"#, keys.join(",")),
            )
        };
        let body = keys("k79999");
        assert!(body.len() > 850_000 && body.len() < MAX_BODY_BYTES);
        let request = parse_submit(body.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            &request.payload.candidate_metadata,
            Some(Value::Object(pairs)) if pairs.len() == 80_000
        ));
        refused(&keys("k00000"), "`k00000` is given more than once");
    }

    #[test]
    fn size_limit_is_exact() {
        let mut body = SEED.as_bytes().to_vec();
        body.resize(MAX_BODY_BYTES, b' ');
        assert!(parse_submit(&body).is_ok());
        body.push(b' ');
        assert!(matches!(
            parse_submit(&body),
            Err(PayloadError::TooLarge { .. })
        ));
    }

    #[test]
    fn sandbox_rides_only_in_the_signed_form() {
        let mut request = parse_submit(SEED.as_bytes())
            .unwrap_or_else(|e| panic!("{e}"))
            .payload;
        request.sandbox = Some(SandboxRequest {
            timeout_seconds: Some(5),
            ..SandboxRequest::default()
        });
        let signed = request.to_signed_json().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            signed.ends_with(r#""controller_id":"controller-1","sandbox":{"timeout_seconds":5}}"#)
        );
        let reparsed = JobPayload::from_node(
            &json::parse(signed.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(reparsed, request);
        assert!(!request
            .go_canonical_json()
            .unwrap_or_default()
            .contains("sandbox"));
    }
}
