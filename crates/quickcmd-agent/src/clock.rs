//! Wall-clock helpers: unix seconds and milliseconds, RFC 3339 with milliseconds.

use time::OffsetDateTime;

pub fn now_ms() -> i64 {
    (OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

pub fn now_unix() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// `2025-01-07T10:00:01.123Z`.
pub fn rfc3339_ms(ms: i64) -> String {
    let Ok(at) = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return String::new();
    };
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    at.format(&format).unwrap_or_default()
}

/// Milliseconds since the epoch of an RFC 3339 time (as `rfc3339_ms` writes it).
pub fn parse_rfc3339_ms(text: &str) -> Option<i64> {
    let at = OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_milliseconds_in_utc() {
        assert_eq!(
            super::rfc3339_ms(1_704_621_601_123),
            "2024-01-07T10:00:01.123Z"
        );
    }

    #[test]
    fn parses_what_it_formats() {
        for ms in [0, 1_704_621_601_123, 1_704_621_601_000] {
            assert_eq!(super::parse_rfc3339_ms(&super::rfc3339_ms(ms)), Some(ms));
        }
        assert_eq!(super::parse_rfc3339_ms("yesterday"), None);
    }
}
