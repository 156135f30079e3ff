//! The shared HMAC key. Protocol v1 uses the secret's text as UTF-8 bytes, so a hex
//! secret is used as its 64 characters, not decoded.

/// A secret that never prints itself.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// A secret from its text; surrounding whitespace (a trailing newline) is not part of
    /// it. `None` when nothing is left.
    pub fn from_text(text: &str) -> Option<Secret> {
        let trimmed = text.trim();
        (!trimmed.is_empty()).then(|| Secret(trimmed.as_bytes().to_vec()))
    }

    /// The key bytes for HMAC.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes, for strength checks.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always false for a secret made by `from_text`.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_secret_and_text_is_trimmed() {
        let secret = Secret::from_text("hunter2\n").unwrap_or_else(|| panic!("non-empty"));
        assert_eq!(format!("{secret:?}"), "Secret([redacted])");
        assert_eq!(secret.as_bytes(), b"hunter2");
        assert!(Secret::from_text(" \n\t").is_none());
        assert!(Secret::from_text("").is_none());
    }
}
