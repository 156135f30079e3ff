//! Property tests: what a controller signs, the agent reads back identically and verifies;
//! no byte string makes the reader panic.

use proptest::prelude::*;
use quickcmd_protocol::json::{self, Value};
use quickcmd_protocol::sign;
use quickcmd_protocol::{
    is_valid_requested_by, parse_submit, verify_submit, JobPayload, SandboxRequest,
    SignatureRefusal, SignedForm,
};

fn metadata() -> impl Strategy<Value = Option<Value>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        (-1e12f64..1e12).prop_map(|f| serde_json::json!(f)),
        ".{0,12}".prop_map(serde_json::Value::String),
    ];
    let tree = leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    prop::option::of(
        prop::collection::btree_map(".{0,6}", tree, 0..4)
            .prop_map(|m| Value::from_serde(&serde_json::Value::Object(m.into_iter().collect()))),
    )
}

fn payload() -> impl Strategy<Value = JobPayload> {
    (
        "[A-Za-z0-9._:-]{1,40}",
        ".{0,40}",
        ".{1,80}",
        metadata(),
        metadata(),
        prop::option::of(prop::collection::vec(".{0,10}", 0..3)),
        ".{0,30}",
        (0i64..4_000_000_000, 0i64..4_000_000_000),
        ".{1,30}",
        prop::option::of((prop::option::of(1u64..100_000), any::<bool>())),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..64)),
        prop::option::of("\\PC{1,20}".prop_filter("printable", |s| is_valid_requested_by(s))),
    )
        .prop_map(
            |(
                job_id,
                prompt,
                command,
                candidate,
                plugin,
                scopes,
                snapshot,
                (ttl, timestamp),
                controller_id,
                sandbox,
                stdin,
                requested_by,
            )| JobPayload {
                job_id,
                prompt,
                command,
                candidate_metadata: candidate,
                plugin_metadata: plugin,
                required_scopes: scopes,
                snapshot_metadata: snapshot,
                ttl,
                timestamp,
                controller_id,
                sandbox: sandbox.map(|(timeout_seconds, network)| SandboxRequest {
                    timeout_seconds,
                    network: Some(network),
                    ..SandboxRequest::default()
                }),
                stdin,
                requested_by,
            },
        )
}

proptest! {
    #[test]
    fn signed_payload_round_trips_and_verifies(payload in payload(), secret in "[a-f0-9]{32,64}") {
        let signed = payload.to_signed_json().map_err(|e| TestCaseError::fail(e.to_string()))?;
        let signature = sign(secret.as_bytes(), signed.as_bytes());
        let body = format!(r#"{{"payload":{signed},"signature":{{"signature":"{signature}","algorithm":"HMAC-SHA256"}}}}"#);
        let request = parse_submit(body.as_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(request.payload_raw, signed.as_bytes());
        prop_assert_eq!(verify_submit(secret.as_bytes(), &request), Ok(SignedForm::Raw));
        // The Go form of what was read equals the Go form of what was written.
        prop_assert_eq!(request.payload.go_canonical_json(), payload.go_canonical_json());
        // Metadata compares through its Go form above (spans and number text differ).
        prop_assert_eq!(&request.payload.sandbox, &payload.sandbox);
        prop_assert_eq!(&request.payload.stdin, &payload.stdin);
        prop_assert_eq!(&request.payload.requested_by, &payload.requested_by);
        // Re-indenting the body keeps the Go-form signature valid when there is no
        // extension field; with one, the Go form must not stand in for the raw bytes.
        let go = payload.go_canonical_json().map_err(|e| TestCaseError::fail(e.to_string()))?;
        if let Some(field) = payload.extension_field() {
            let mut go_signed = request.clone();
            go_signed.signature = sign(secret.as_bytes(), go.as_bytes());
            prop_assert_eq!(
                verify_submit(secret.as_bytes(), &go_signed),
                Err(SignatureRefusal::UnsignedExtension { field })
            );
        } else {
            let pretty = serde_json::to_string_pretty(&serde_json::from_str::<serde_json::Value>(&body).map_err(|e| TestCaseError::fail(e.to_string()))?)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            if let Ok(reformatted) = parse_submit(pretty.as_bytes()) {
                let go_signature = sign(secret.as_bytes(), go.as_bytes());
                let mut reformatted = reformatted;
                reformatted.signature = go_signature;
                prop_assert!(verify_submit(secret.as_bytes(), &reformatted).is_ok());
            }
        }
    }

    #[test]
    fn reader_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = json::parse(&bytes);
        let _ = parse_submit(&bytes);
    }

    #[test]
    fn reader_never_panics_on_near_json(text in r#"[\[\]{}",:0-9eE.+\-a-z\\ ]{0,64}"#) {
        let _ = json::parse(text.as_bytes());
        let _ = parse_submit(text.as_bytes());
    }
}
