//! Go's own signing vectors (../shared/test-vectors): each must verify as sent and as
//! reformatted, and fail after one changed byte of any payload field or the signature.

use std::path::PathBuf;

use quickcmd_protocol::{parse_submit, verify_submit, SignedForm};
use serde::Deserialize;

#[derive(Deserialize)]
struct Vector {
    name: String,
    secret: String,
    payload_json: String,
    signature: String,
    request_body: String,
    request_body_reformatted: String,
}

fn vectors() -> Vec<Vector> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/test-vectors/go-json-signing.jsonl");
    let path = if path.exists() {
        path
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/go-json-signing.jsonl")
    };
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read test vectors at {}: {e}", path.display()));
    let vectors: Vec<Vector> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("bad vector line: {e}")))
        .collect();
    assert!(
        vectors.len() >= 8,
        "expected the 8 shared vectors, found {}",
        vectors.len()
    );
    vectors
}

#[test]
fn every_vector_verifies_raw_and_reformatted() {
    for vector in vectors() {
        let secret = vector.secret.as_bytes();
        let raw = parse_submit(vector.request_body.as_bytes())
            .unwrap_or_else(|e| panic!("{}: {e}", vector.name));
        assert_eq!(
            raw.payload_raw,
            vector.payload_json.as_bytes(),
            "{}",
            vector.name
        );
        assert_eq!(raw.signature, vector.signature);
        assert_eq!(
            verify_submit(secret, &raw),
            Ok(SignedForm::Raw),
            "{}",
            vector.name
        );
        assert_eq!(
            raw.payload.go_canonical_json().as_deref(),
            Ok(vector.payload_json.as_str()),
            "{}: our Go form differs from Go's",
            vector.name
        );

        let reformatted = parse_submit(vector.request_body_reformatted.as_bytes())
            .unwrap_or_else(|e| panic!("{} reformatted: {e}", vector.name));
        match verify_submit(secret, &reformatted) {
            Ok(SignedForm::GoCanonical(bytes)) => assert_eq!(bytes, vector.payload_json),
            other => panic!("{} reformatted: {other:?}", vector.name),
        }
    }
}

#[test]
fn wrong_secret_fails() {
    for vector in vectors() {
        let request =
            parse_submit(vector.request_body.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let mut secret = vector.secret.clone().into_bytes();
        secret[0] ^= 1;
        assert!(verify_submit(&secret, &request).is_err(), "{}", vector.name);
    }
}

/// Changes one byte inside each string field value (and one digit of each number) of the
/// payload, in both body forms, and one hex digit of the signature: none may verify.
#[test]
fn one_flipped_byte_in_any_payload_field_fails() {
    let fields = [
        "job_id",
        "prompt",
        "command",
        "snapshot_metadata",
        "controller_id",
        "ttl",
        "timestamp",
    ];
    for vector in vectors() {
        let secret = vector.secret.as_bytes();
        for body in [&vector.request_body, &vector.request_body_reformatted] {
            let request = parse_submit(body.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            let mut tried = 0;
            for field in fields {
                let Some(position) = value_start(body, field) else {
                    continue;
                };
                let Some(mutated) = flip_value_byte(body, position) else {
                    continue;
                };
                tried += 1;
                let changed = parse_submit(mutated.as_bytes()).unwrap_or_else(|e| {
                    panic!("{}: mutated `{field}` no longer parses: {e}", vector.name)
                });
                assert!(
                    verify_submit(secret, &changed).is_err(),
                    "{}: changed `{field}` still verifies",
                    vector.name
                );
            }
            assert!(tried >= 5, "{}: only {tried} fields mutated", vector.name);
            // Metadata: change a byte inside candidate_metadata when it has content.
            if let Some(position) = value_start(body, "candidate_metadata") {
                if let Some(mutated) = flip_value_byte(body, position) {
                    if let Ok(changed) = parse_submit(mutated.as_bytes()) {
                        assert!(
                            verify_submit(secret, &changed).is_err(),
                            "{}: metadata",
                            vector.name
                        );
                    }
                }
            }
            let mut signature = request.signature.clone().into_bytes();
            signature[10] = if signature[10] == b'0' { b'1' } else { b'0' };
            let forged = body.replace(&request.signature, &String::from_utf8_lossy(&signature));
            let forged = parse_submit(forged.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                verify_submit(secret, &forged).is_err(),
                "{}: signature flip",
                vector.name
            );
        }
    }
}

/// An unsigned `sandbox` cannot ride along a payload that verifies only in the Go form.
#[test]
fn unsigned_sandbox_in_canonical_mode_fails() {
    for vector in vectors() {
        let body = vector.request_body_reformatted.replacen(
            "\"payload\": {",
            "\"payload\": {\"sandbox\": {\"network\": true},",
            1,
        );
        let request = parse_submit(body.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            verify_submit(vector.secret.as_bytes(), &request).is_err(),
            "{}",
            vector.name
        );
    }
}

/// Byte offset of the first byte of `"field"`'s value.
fn value_start(body: &str, field: &str) -> Option<usize> {
    let key = format!("\"{field}\"");
    let at = body.find(&key)? + key.len();
    let rest = &body[at..];
    let colon = rest.find(':')?;
    let after = at + colon + 1;
    let skip = body[after..].len() - body[after..].trim_start().len();
    Some(after + skip)
}

/// Changes one character inside the value starting at `position`: a letter or digit in a
/// string or number, keeping the JSON valid. None when the value has no such character.
fn flip_value_byte(body: &str, position: usize) -> Option<String> {
    let bytes = body.as_bytes();
    let mut index = position;
    if bytes[index] == b'"' || bytes[index] == b'{' {
        index += 1;
    }
    while index < bytes.len() && !bytes[index].is_ascii_alphanumeric() {
        if bytes[index] == b'"' && bytes[index - 1] != b'\\' && index > position + 1 {
            // Reached a string end; for objects continue into the content.
            if bytes[position] != b'{' {
                return None;
            }
        }
        if bytes[index] == b'}' && bytes[position] == b'{' {
            return None;
        }
        index += 1;
    }
    let original = *bytes.get(index)?;
    let replacement = match original {
        b'0'..=b'8' => original + 1,
        b'9' => b'8',
        b'a'..=b'y' | b'A'..=b'Y' => original + 1,
        _ => original - 1,
    };
    let mut out = bytes.to_vec();
    out[index] = replacement;
    String::from_utf8(out).ok()
}
