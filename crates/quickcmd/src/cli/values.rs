//! Value parsers for the command line, with the agents' own rules where they are known
//! (env names, the memory floor, the list limit), so a mistake is a usage error naming
//! the flag instead of a round trip to every agent.

use std::time::Duration;

use crate::units::{parse_duration, parse_size};

/// The agents' cap on `GET /api/v1/jobs?limit=` (protocol v1: 1-1000).
pub(super) const MAX_LIST_LIMIT: i64 = 1000;
/// The agents' floor for `sandbox.memory_limit` (docs/api.md: below it is 400).
pub(super) const MIN_MEMORY_LIMIT: u64 = 6 * 1024 * 1024;

/// A duration of at least one second.
pub(super) fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be at least 1 second".into());
    }
    Ok(duration)
}

/// `history --limit`: a count of rows, at least one.
pub(super) fn parse_history_limit(text: &str) -> Result<u32, String> {
    match text.trim().parse::<u32>() {
        Ok(0) => Err("must be at least 1 (it is a number of rows)".into()),
        Ok(limit) => Ok(limit),
        Err(_) => Err(format!("`{text}` is not a number of rows")),
    }
}

/// A memory size the agents accept (at least 6 MiB).
pub(super) fn parse_memory_limit(text: &str) -> Result<u64, String> {
    let bytes = parse_size(text)?;
    if bytes < MIN_MEMORY_LIMIT {
        return Err(format!(
            "{bytes} bytes is below the agents' floor of 6M ({MIN_MEMORY_LIMIT} bytes)"
        ));
    }
    if i64::try_from(bytes).is_err() {
        return Err(format!("`{text}` is too large"));
    }
    Ok(bytes)
}

/// `NAME=VALUE`, with NAME as the agent requires it: `[A-Za-z_][A-Za-z0-9_]*`.
pub(super) fn parse_env(text: &str) -> Result<(String, String), String> {
    let Some((name, value)) = text.split_once('=') else {
        return Err(format!(
            "`{text}` has no `=`: give NAME=VALUE (NAME= for an empty value)"
        ));
    };
    if !is_env_name(name) {
        return Err(format!(
            "`{name}` is not a variable name: it must start with a letter or `_` and hold \
             only letters, digits and `_` ([A-Za-z_][A-Za-z0-9_]*, as the agent requires)"
        ));
    }
    Ok((name.to_string(), value.to_string()))
}

/// The agent's rule for `sandbox.env` names (docs/api.md).
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_follow_the_agents_rule() {
        for good in ["A=1", "_=1", "a_b9=", "Z1=x"] {
            assert!(parse_env(good).is_ok(), "{good}");
        }
        for bad in ["1BAD=x", "=x", "A-B=1", "NOVALUE", "É=1", "A B=1"] {
            assert!(parse_env(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_and_floors() {
        assert_eq!(parse_history_limit("5"), Ok(5));
        assert!(parse_history_limit("0").is_err());
        assert!(parse_history_limit("x").is_err());
        assert_eq!(parse_memory_limit("6M"), Ok(MIN_MEMORY_LIMIT));
        assert!(parse_memory_limit("5M").is_err());
        assert_eq!(parse_positive_duration("1"), Ok(Duration::from_secs(1)));
        assert!(parse_positive_duration("0s").is_err());
    }
}
