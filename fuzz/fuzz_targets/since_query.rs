//! The query of `GET /api/v1/stream/{id}`: decoding never panics; `since` is taken exactly
//! when it is a whole number that fits in u64 (absent: 0), and any u64 round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use quickcmd_agent::fuzzing::since_from_query;

/// What `since` must be: a run of ASCII digits (Rust's integer syntax also allows one
/// leading `+`) no larger than u64::MAX.
fn expected(value: &str) -> Option<u64> {
    let digits = value.strip_prefix('+').unwrap_or(value);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let significant = digits.trim_start_matches('0');
    if significant.is_empty() {
        return Some(0);
    }
    if significant.len() > 20 {
        return None;
    }
    significant
        .parse::<u128>()
        .ok()
        .and_then(|n| u64::try_from(n).ok())
}

fuzz_target!(|data: &[u8]| {
    let query = String::from_utf8_lossy(data);
    if let Some((value, parsed)) = since_from_query(&query) {
        match value {
            None => assert_eq!(parsed, Ok(0)),
            Some(v) => assert_eq!(parsed.ok(), expected(&v), "since={v:?}"),
        }
    }
    if data.len() >= 8 {
        let n = u64::from_le_bytes(data[..8].try_into().unwrap_or_default());
        let (value, parsed) =
            since_from_query(&format!("since={n}")).expect("a plain query decodes");
        assert_eq!((value, parsed), (Some(n.to_string()), Ok(n)));
    }
});
