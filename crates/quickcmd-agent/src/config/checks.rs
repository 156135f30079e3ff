//! Checks that are more than a comparison: who the sandbox runs as, who may read a secret
//! file, and the limits on client connections. Each returns the sentence the config error
//! carries; the caller adds the file and the key.

use std::path::Path;
use std::time::Duration;

use super::RawConfig;

/// Timeouts and the cap that keep a peer sending little from holding sockets and tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections, handshakes and WebSockets included.
    pub max_connections: usize,
    /// A whole HTTP/1.1 request header, also while waiting for the next keep-alive request.
    pub header_read_timeout: Duration,
    /// A whole request body, counted from its header.
    pub body_read_timeout: Duration,
    /// No request in flight (any protocol, or before the first request).
    pub idle_timeout: Duration,
    /// One frame to a WebSocket subscriber.
    pub stream_send_timeout: Duration,
}

/// The connection keys, each at least 1, or the key and the sentence that refuses it.
pub(super) fn connection_limits(
    raw: &RawConfig,
) -> Result<ConnectionLimits, (&'static str, String)> {
    let seconds = |key: &'static str, value: u64| {
        if (1..=86_400).contains(&value) {
            Ok(Duration::from_secs(value))
        } else {
            Err((key, "must be between 1 and 86400 seconds".to_string()))
        }
    };
    if raw.max_connections < 2 {
        return Err((
            "max_connections",
            "must be at least 2 (one for a controller, one for /health)".to_string(),
        ));
    }
    Ok(ConnectionLimits {
        max_connections: raw.max_connections,
        header_read_timeout: seconds(
            "header_read_timeout_seconds",
            raw.header_read_timeout_seconds,
        )?,
        body_read_timeout: seconds("body_read_timeout_seconds", raw.body_read_timeout_seconds)?,
        idle_timeout: seconds("idle_timeout_seconds", raw.idle_timeout_seconds)?,
        stream_send_timeout: seconds(
            "stream_send_timeout_seconds",
            raw.stream_send_timeout_seconds,
        )?,
    })
}

/// `sandbox_user` must be numeric `uid:gid`, neither 0. Docker reads `00` as uid 0 and a
/// bare uid runs with gid 0; a name means whatever the image's /etc/passwd says, which the
/// agent cannot know before the container exists, so names are refused too.
pub(super) fn sandbox_user(value: &str) -> Result<(), String> {
    const FIX: &str = "use numeric non-zero ids as \"uid:gid\", e.g. \"65534:65534\"";
    let Some((uid, gid)) = value.split_once(':') else {
        return Err(format!(
            "`{value}` has no group, and Docker runs a bare user with group 0 (root); {FIX}"
        ));
    };
    for (part, what) in [(uid, "user"), (gid, "group")] {
        if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "the {what} `{part}` in `{value}` is not a number (names resolve inside the image, where `root` or any other name may be id 0); {FIX}"
            ));
        }
        match part.parse::<u32>() {
            Ok(0) => {
                return Err(format!(
                    "the {what} in `{value}` is 0, which is root; {FIX}"
                ))
            }
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "the {what} `{part}` in `{value}` is larger than the largest id (4294967295); {FIX}"
                ))
            }
        }
    }
    Ok(())
}

/// A secret file readable by anyone but its owner is refused, as ssh refuses such a private
/// key: the secret signs jobs that run commands.
pub(super) fn secret_file_mode(path: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "secret file {} is readable or writable by group or others (mode {mode:03o}); run: chmod 600 {}",
            path.display(),
            path.display()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_spelling_of_root_is_refused() {
        for value in [
            "0:0",
            "00:00",
            "0:1000",
            "1000:0",
            "000:1000",
            "1000:00",
            "root",
            "root:root",
            "1000",
            "0",
            "00",
            "1000:root",
            "nobody:nogroup",
            ":1000",
            "1000:",
            "+1:+1",
            "-1:1000",
            " 1000:1000",
            "1000:1000:1",
            "4294967296:1",
        ] {
            assert!(sandbox_user(value).is_err(), "{value} was accepted");
        }
        for value in [
            "65534:65534",
            "1000:1000",
            "1:1",
            "4294967295:1",
            "0001:0001",
        ] {
            assert_eq!(sandbox_user(value), Ok(()), "{value}");
        }
    }

    #[test]
    fn secret_file_modes() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("secret");
        std::fs::write(&path, "x").unwrap_or_else(|e| panic!("{e}"));
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o644, false),
            (0o604, false),
            (0o620, false),
        ] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| panic!("{e}"));
            let result = secret_file_mode(&path);
            assert_eq!(result.is_ok(), ok, "mode {mode:o}: {result:?}");
            if let Err(message) = result {
                assert!(
                    message.contains(&format!("chmod 600 {}", path.display())),
                    "{message}"
                );
            }
        }
    }
}
