//! Any bytes as a `POST /api/v1/jobs` body: parsing and both signature forms must never
//! panic, and what parses must verify only under the key that signed it; v1.1 extension
//! fields round-trip and never ride under the Go-form signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quickcmd_protocol::{parse_submit, sign, verify_submit, SignatureRefusal};

fuzz_target!(|body: &[u8]| {
    let Ok(request) = parse_submit(body) else {
        return;
    };
    let _ = verify_submit(b"fuzz-secret-fuzz-secret-fuzz-secret", &request);
    // Re-sign the raw payload bytes: the agent must accept exactly that.
    let mut signed = request.clone();
    signed.signature = sign(b"k", request.payload_raw);
    assert!(
        verify_submit(b"k", &signed).is_ok(),
        "raw-signed payload refused"
    );
    assert!(
        verify_submit(b"other", &signed).is_err(),
        "wrong key accepted"
    );
    // What a controller writes for this payload reads back with the same v1.1 fields.
    if let Ok(written) = request.payload.to_signed_json() {
        let node = quickcmd_protocol::json::parse(written.as_bytes()).expect("written is JSON");
        let again = quickcmd_protocol::JobPayload::from_node(&node).expect("written is a payload");
        assert_eq!(again.stdin, request.payload.stdin);
        assert_eq!(again.requested_by, request.payload.requested_by);
        assert_eq!(again.extension_field(), request.payload.extension_field());
    }
    // A payload with an extension field never verifies in the Go form, which omits it.
    if let (Some(field), Ok(go)) = (
        request.payload.extension_field(),
        request.payload.go_canonical_json(),
    ) {
        let mut go_signed = request.clone();
        go_signed.signature = sign(b"k", go.as_bytes());
        if go.as_bytes() != request.payload_raw {
            assert_eq!(
                verify_submit(b"k", &go_signed),
                Err(SignatureRefusal::UnsignedExtension { field })
            );
        }
    }
    if let Ok(go) = request.payload.go_canonical_json() {
        // The Go form is itself a payload that parses to the same Go form.
        let node = quickcmd_protocol::json::parse(go.as_bytes()).expect("Go form is JSON");
        let again = quickcmd_protocol::JobPayload::from_node(&node).expect("Go form is a payload");
        assert_eq!(again.go_canonical_json().ok().as_deref(), Some(go.as_str()));
    }
});
