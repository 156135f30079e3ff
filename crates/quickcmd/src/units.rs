//! Durations and sizes as an operator types them: `90`, `90s`, `5m`, `2h`, `1d`; `512M`,
//! `1G`, `256MiB`. A plain number keeps the unit the flag always had (seconds, bytes).

use std::time::Duration;

/// Parses a duration; a plain number is seconds. Units: `s`, `m`, `h`, `d`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let bad = || {
        format!("`{text}` is not a duration: give seconds (90) or a number with s, m, h or d (5m)")
    };
    let count: u64 = number.parse().map_err(|_| bad())?;
    let scale = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    count
        .checked_mul(scale)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("`{text}` is too long"))
}

/// Parses a size in bytes; a plain number is bytes. Units are binary, as Docker's are:
/// `K`, `M`, `G`, `T` (or `KiB` …; lowercase works too).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let bad = || {
        format!(
            "`{text}` is not a size: give bytes (536870912) or a number with K, M, G or T (512M)"
        )
    };
    let count: u64 = number.parse().map_err(|_| bad())?;
    let unit = unit.strip_suffix("iB").unwrap_or(unit);
    let power = match unit {
        "" | "B" | "b" => 0,
        "K" | "k" => 1,
        "M" | "m" => 2,
        "G" | "g" => 3,
        "T" | "t" => 4,
        _ => return Err(bad()),
    };
    count
        .checked_mul(1024u64.pow(power))
        .ok_or_else(|| format!("`{text}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (text, seconds) in [
            ("90", 90),
            ("90s", 90),
            ("5m", 300),
            ("2h", 7200),
            ("1d", 86_400),
            ("0", 0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_secs(seconds)),
                "{text}"
            );
        }
        for bad in [
            "",
            "m",
            "5 m",
            "1.5m",
            "-1",
            "5x",
            "5ms",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        for (text, bytes) in [
            ("1024", 1024),
            ("512M", 512 << 20),
            ("512m", 512 << 20),
            ("512MiB", 512 << 20),
            ("1G", 1 << 30),
            ("2k", 2048),
            ("1T", 1 << 40),
            ("7B", 7),
        ] {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
        for bad in ["", "M", "1.5G", "512MB", "-1", "1P", "99999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }
}
