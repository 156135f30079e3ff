//! Turns a byte stream into UTF-8 text chunks without ever splitting a character: an
//! incomplete sequence at the end of a chunk waits for the next one; bytes that can never
//! be UTF-8 become U+FFFD.

#[derive(Debug, Default)]
pub(crate) struct Utf8Chunker {
    pending: Vec<u8>,
}

impl Utf8Chunker {
    /// Decodes as much of `pending + bytes` as forms whole characters.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::with_capacity(self.pending.len());
        let mut rest: &[u8] = &self.pending;
        loop {
            match std::str::from_utf8(rest) {
                Ok(text) => {
                    out.push_str(text);
                    rest = &[];
                    break;
                }
                Err(error) => {
                    let valid = error.valid_up_to();
                    // `valid_up_to` bytes are checked UTF-8.
                    out.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or_default());
                    match error.error_len() {
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            rest = &rest[valid + bad..];
                        }
                        None => {
                            rest = &rest[valid..];
                            break;
                        }
                    }
                }
            }
        }
        self.pending = rest.to_vec();
        out
    }

    /// What is left at the end of the stream: an unfinished character becomes U+FFFD.
    pub(crate) fn finish(&mut self) -> String {
        if self.pending.is_empty() {
            String::new()
        } else {
            self.pending.clear();
            "\u{FFFD}".to_string()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_splits_a_character() {
        let text = "héllo ✓ 📁!".as_bytes();
        for split in 0..text.len() {
            let mut chunker = Utf8Chunker::default();
            let first = chunker.push(&text[..split]);
            let second = chunker.push(&text[split..]);
            assert!(first.len() <= split);
            assert_eq!(
                format!("{first}{second}"),
                "héllo ✓ 📁!",
                "split at {split}"
            );
            assert_eq!(chunker.finish(), "");
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let text = "zähle 📁".as_bytes();
        let mut chunker = Utf8Chunker::default();
        let joined: String = text.iter().map(|b| chunker.push(&[*b])).collect();
        assert_eq!(joined, "zähle 📁");
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut chunker = Utf8Chunker::default();
        assert_eq!(chunker.push(b"a\xffb\xc3"), "a\u{FFFD}b");
        assert_eq!(chunker.finish(), "\u{FFFD}");
        assert_eq!(chunker.push(b"\xe2\x9c"), "");
        assert_eq!(chunker.push(b"x"), "\u{FFFD}x");
    }
}
