//! HMAC secrets: the `Secret` newtype that never prints itself, reading secret files and
//! environment variables, and `gen-key`.

use std::path::{Path, PathBuf};

use rand::RngCore;
use zeroize::Zeroizing;

/// Environment variable that may hold the controller's default secret.
pub const SECRET_ENV: &str = "QUICKCMD_HMAC_SECRET";

pub use quickcmd_protocol::Secret;

/// Why a secret could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read secret file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("secret file {path} is empty")]
    EmptyFile { path: PathBuf },
    #[error("environment variable {SECRET_ENV} is empty")]
    EmptyEnv,
    #[error("secret file {path} is {size} bytes; a secret file holds one line")]
    TooLarge { path: PathBuf, size: u64 },
}

/// Reads a secret file (blocking; call it before or outside the async runtime).
pub fn read_secret_file(path: &Path) -> Result<Secret, SecretError> {
    // A secret is one line; refusing big files keeps a wrong path from being slurped.
    const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;
    let metadata = std::fs::metadata(path).map_err(|source| SecretError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if metadata.len() > MAX_SECRET_FILE_BYTES {
        return Err(SecretError::TooLarge {
            path: path.to_path_buf(),
            size: metadata.len(),
        });
    }
    // The file's text (the secret with its newline) is wiped when this returns.
    let text =
        Zeroizing::new(
            std::fs::read_to_string(path).map_err(|source| SecretError::Read {
                path: path.to_path_buf(),
                source,
            })?,
        );
    Secret::from_text(&text).ok_or_else(|| SecretError::EmptyFile {
        path: path.to_path_buf(),
    })
}

/// The secret in `QUICKCMD_HMAC_SECRET`, if that variable is set.
pub fn secret_from_env() -> Result<Option<Secret>, SecretError> {
    match std::env::var(SECRET_ENV) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            Secret::from_text(&text)
                .map(Some)
                .ok_or(SecretError::EmptyEnv)
        }
        Err(_) => Ok(None),
    }
}

/// A new random 32-byte secret as 64 lowercase hex characters (`quickcmd agent gen-key`).
pub fn generate_key() -> String {
    let mut bytes = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(bytes.as_mut());
    hex::encode(bytes.as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_64_hex_and_differ() {
        let first = generate_key();
        let second = generate_key();
        assert_eq!(first.len(), 64);
        assert!(first
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(first, second);
    }

    #[test]
    fn secret_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let good = dir.path().join("good");
        std::fs::write(&good, "abc123\n").expect("write");
        assert_eq!(
            read_secret_file(&good).expect("reads").as_bytes(),
            b"abc123"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").expect("write");
        assert!(matches!(
            read_secret_file(&empty),
            Err(SecretError::EmptyFile { .. })
        ));
        let missing = dir.path().join("missing");
        let error = read_secret_file(&missing).expect_err("missing file");
        assert!(error.to_string().contains("missing"), "{error}");
    }
}
