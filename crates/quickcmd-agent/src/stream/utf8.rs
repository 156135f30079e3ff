//! Cuts a byte stream into chunks that end on a character boundary, so that each frame,
//! read as text, shows whole characters: an incomplete UTF-8 sequence at the end of a
//! chunk waits for the next one. The bytes themselves are passed on unchanged (protocol
//! v1.1 keeps the exact bytes; only the text rendering turns bad bytes into U+FFFD).

#[derive(Debug, Default)]
pub(crate) struct Utf8Chunker {
    pending: Vec<u8>,
}

/// Length of the longest prefix of `bytes` that does not end inside a character which
/// may still be completed: bytes that can never be UTF-8 are passed through.
fn complete_prefix(bytes: &[u8]) -> usize {
    let mut offset = 0;
    loop {
        match std::str::from_utf8(&bytes[offset..]) {
            Ok(_) => return bytes.len(),
            Err(error) => match error.error_len() {
                Some(bad) => offset += error.valid_up_to() + bad,
                None => return offset + error.valid_up_to(),
            },
        }
    }
}

impl Utf8Chunker {
    /// The bytes of `pending + bytes` up to the last character boundary.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Vec<u8> {
        self.pending.extend_from_slice(bytes);
        let cut = complete_prefix(&self.pending);
        let rest = self.pending.split_off(cut);
        std::mem::replace(&mut self.pending, rest)
    }

    /// What is left at the end of the stream: an unfinished character, as it was written.
    pub(crate) fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.pending)
    }
}

/// Where to cut `bytes` so the first piece has at most `max` bytes and, when possible, does
/// not end inside a character (a UTF-8 continuation byte never starts the next piece,
/// unless the character is longer than `max`).
pub(crate) fn cut_at(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let is_continuation = |b: u8| b & 0b1100_0000 == 0b1000_0000;
    let mut cut = max;
    while cut > 0 && max - cut < 3 && is_continuation(bytes[cut]) {
        cut -= 1;
    }
    if cut > 0 && !is_continuation(bytes[cut]) {
        return cut;
    }
    if cut == 0 && !is_continuation(bytes[0]) {
        // One character longer than `max`: take it whole (at most four bytes).
        let mut end = 1;
        while end < bytes.len() && end < 4 && is_continuation(bytes[end]) {
            end += 1;
        }
        return end;
    }
    // Not UTF-8 here: any cut is as good as another.
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(chunks: &[Vec<u8>]) -> String {
        chunks
            .iter()
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect()
    }

    #[test]
    fn never_splits_a_character() {
        let text = "héllo ✓ 📁!".as_bytes();
        for split in 0..text.len() {
            let mut chunker = Utf8Chunker::default();
            let first = chunker.push(&text[..split]);
            let second = chunker.push(&text[split..]);
            assert!(first.len() <= split);
            assert!(std::str::from_utf8(&first).is_ok(), "split at {split}");
            assert_eq!([first, second].concat(), text, "split at {split}");
            assert!(chunker.finish().is_empty());
        }
    }

    #[test]
    fn one_byte_at_a_time() {
        let bytes = "zähle 📁".as_bytes();
        let mut chunker = Utf8Chunker::default();
        let chunks: Vec<Vec<u8>> = bytes.iter().map(|b| chunker.push(&[*b])).collect();
        assert_eq!(text(&chunks), "zähle 📁");
    }

    #[test]
    fn bytes_that_are_not_utf8_pass_unchanged() {
        let mut chunker = Utf8Chunker::default();
        assert_eq!(chunker.push(b"a\xffb\xc3"), b"a\xffb");
        assert_eq!(chunker.finish(), b"\xc3");
        assert_eq!(chunker.push(b"\xe2\x9c"), b"");
        assert_eq!(chunker.push(b"x"), b"\xe2\x9cx");
        assert_eq!(
            String::from_utf8_lossy(b"\xe2\x9cx"),
            "\u{FFFD}x",
            "read as text, an interrupted character is one U+FFFD"
        );
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        let text = "a✓✓✓b".as_bytes();
        for max in 1..=text.len() {
            let mut rest = text;
            let mut parts = Vec::new();
            while !rest.is_empty() {
                let cut = cut_at(rest, max);
                assert!(cut > 0 && cut <= max.max(3), "max {max}: cut {cut}");
                parts.push(&rest[..cut]);
                rest = &rest[cut..];
            }
            assert!(
                parts.iter().all(|p| std::str::from_utf8(p).is_ok()),
                "max {max}: {parts:?}"
            );
            assert_eq!(parts.concat(), text);
        }
        assert_eq!(cut_at(b"\x80\x80\x80\x80\x80\x80", 2), 2);
    }
}
