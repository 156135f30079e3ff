//! Coalescing of the sandbox's output chunks into frames: a program that writes one byte
//! at a time would otherwise cost one frame (one stored row, one WebSocket message) per
//! write. Bytes wait here until [`COALESCE_BYTES`] have gathered, the other stream writes,
//! or the oldest has waited [`COALESCE_DELAY`] — so live output is late by a few ms at
//! most, and the order of stdout and stderr writes is kept.

use std::time::Duration;

use quickcmd_protocol::StreamName;
use tokio::time::Instant;

use crate::stream::JobStream;

/// A pending buffer this large is sent at once.
pub(super) const COALESCE_BYTES: usize = 8 * 1024;
/// The longest a byte waits before it is sent.
pub(super) const COALESCE_DELAY: Duration = Duration::from_millis(5);

/// Output of one stream waiting to become a frame.
pub(super) struct Coalescer {
    stream: StreamName,
    pending: Vec<u8>,
    /// When the oldest pending byte arrived.
    since: Option<Instant>,
}

impl Default for Coalescer {
    fn default() -> Coalescer {
        Coalescer {
            stream: StreamName::Stdout,
            pending: Vec::with_capacity(COALESCE_BYTES),
            since: None,
        }
    }
}

impl Coalescer {
    /// Takes one chunk; sends what must go now to `out`.
    pub(super) fn add(&mut self, out: &JobStream, stream: StreamName, bytes: &[u8]) {
        if stream != self.stream {
            // Keep the order of writes across the two streams.
            self.flush(out);
            self.stream = stream;
        }
        if self.pending.is_empty() && bytes.len() >= COALESCE_BYTES {
            out.push(stream, bytes);
            return;
        }
        self.pending.extend_from_slice(bytes);
        self.since.get_or_insert_with(Instant::now);
        if self.pending.len() >= COALESCE_BYTES {
            self.flush(out);
        }
    }

    /// When the pending bytes must be sent, if any wait.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.since.map(|since| since + COALESCE_DELAY)
    }

    /// Sends whatever waits.
    pub(super) fn flush(&mut self, out: &JobStream) {
        if !self.pending.is_empty() {
            out.push(self.stream, &self.pending);
            self.pending.clear();
        }
        self.since = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiny_writes_become_few_frames_in_order() {
        let out = JobStream::new("j", 1 << 20, 1024);
        let mut coalescer = Coalescer::default();
        let mut expected = String::new();
        for i in 0..20_000 {
            let (stream, text) = if i % 5_000 == 4_999 {
                (StreamName::Stderr, "e")
            } else {
                (StreamName::Stdout, "x")
            };
            expected.push_str(text);
            coalescer.add(&out, stream, text.as_bytes());
        }
        assert!(coalescer.deadline().is_some());
        coalescer.flush(&out);
        assert!(coalescer.deadline().is_none());
        let frames = out.subscribe(0).replay;
        // 8 KiB frames, cut wherever the stream changes: a handful, not 20,000.
        assert!(frames.len() <= 16, "{} frames", frames.len());
        assert!(frames.windows(2).all(|w| w[0].log.seq < w[1].log.seq));
        let text: String = frames.iter().map(|f| f.log.data.as_str()).collect();
        assert_eq!(text, expected);
        let errs: Vec<&str> = frames
            .iter()
            .filter(|f| f.log.stream == StreamName::Stderr)
            .map(|f| f.log.data.as_str())
            .collect();
        assert_eq!(errs, ["e"; 4]);
    }
}
