//! Any `Authorization` header: parsing never panics, and a parsed header verifies only
//! when its signature is the HMAC of the request line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quickcmd_protocol::ReadAuth;

fuzz_target!(|text: &str| {
    let Ok(auth) = ReadAuth::parse_header(text) else {
        return;
    };
    // The clock window takes any peer timestamp against any clock, without overflow.
    for now in [0, 1_700_000_000, i64::MIN, i64::MAX] {
        let inside = auth.within_clock_window(now, 300);
        assert_eq!(inside, auth.timestamp.abs_diff(now) <= 300);
    }
    let genuine = ReadAuth::sign(
        &auth.controller_id,
        b"k",
        "GET",
        "/api/v1/jobs/x",
        auth.timestamp,
    );
    assert!(genuine.verify(b"k", "GET", "/api/v1/jobs/x"));
    if auth.signature.to_ascii_lowercase() != genuine.signature {
        assert!(!auth.verify(b"k", "GET", "/api/v1/jobs/x"));
    }
    let reparsed = ReadAuth::parse_header(&genuine.header_value());
    if !auth.controller_id.contains(',') && !auth.controller_id.contains(' ') {
        assert_eq!(reparsed.ok(), Some(genuine));
    }
});
