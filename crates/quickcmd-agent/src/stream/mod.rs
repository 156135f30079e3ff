//! Live output of running jobs: numbering frames, the head/tail cap on stored output, the
//! full-stream byte counts and hashes, replay for late subscribers and fan-out to many.
//!
//! Frames keep the exact bytes the command wrote ([`Frame`]); each reader gets them in the
//! encoding it asked for (protocol v1.1): text, where bytes that are not UTF-8 become
//! U+FFFD, or base64. Frames are cut on character boundaries, so the text of a frame is
//! the text of its bytes.

mod capped;
mod utf8;

use std::sync::{Arc, Mutex};

use quickcmd_protocol::{AuditWitness, Encoding, JobStatus, LogFrame, StreamName};
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;

pub(crate) use capped::CappedStream;
use utf8::cut_at;
pub(crate) use utf8::Utf8Chunker;

use crate::clock;

/// Stored frames per stream when the config says nothing (`max_output_frames`).
pub(crate) const DEFAULT_MAX_OUTPUT_FRAMES: usize = 4096;

/// Byte count, hash and truncation of one stream once the job has ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamSummary {
    pub bytes: u64,
    pub sha256: String,
    pub truncated: bool,
    /// Stored bytes: head, marker line, tail.
    pub stored: Vec<u8>,
}

/// One frame as the agent keeps it: the wire frame's fields, and the exact bytes that
/// become its `data` in the reader's encoding.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Frame {
    /// The wire frame; its `data` is left empty.
    pub log: LogFrame,
    pub bytes: Vec<u8>,
}

impl Frame {
    /// A frame without output (the final frame).
    pub(crate) fn without_data(log: LogFrame) -> Frame {
        Frame {
            log,
            bytes: Vec::new(),
        }
    }

    /// The wire frame, its `data` in `encoding`.
    pub(crate) fn to_wire(&self, encoding: Encoding) -> LogFrame {
        LogFrame {
            data: encoding.encode(&self.bytes),
            ..self.log.clone()
        }
    }
}

struct StreamState {
    chunker: Utf8Chunker,
    capped: CappedStream,
    hasher: Sha256,
    bytes: u64,
}

impl StreamState {
    fn new(name: StreamName, max_bytes: usize, max_frames: usize) -> StreamState {
        StreamState {
            chunker: Utf8Chunker::default(),
            capped: CappedStream::new(name, max_bytes, max_frames),
            hasher: Sha256::new(),
            bytes: 0,
        }
    }
}

struct Inner {
    seq: u64,
    stdout: StreamState,
    stderr: StreamState,
    final_frame: Option<Arc<Frame>>,
    /// Stored frames not yet written to the database.
    unsaved: Vec<Frame>,
}

/// One running job's output. Frames go out to subscribers at once through a bounded
/// broadcast channel: a subscriber that falls `buffer` frames behind is told it lagged and
/// is dropped; the job never waits for anyone.
pub(crate) struct JobStream {
    job_id: String,
    inner: Mutex<Inner>,
    sender: broadcast::Sender<Arc<Frame>>,
    /// Largest `data` of one frame; bigger writes are sent as several frames.
    max_frame_bytes: usize,
}

/// A frame holds at most an eighth of the stored-output cap (within these bounds), so the
/// stored head and tail each keep several frames however large the sandbox's writes are:
/// whole frames are kept or dropped, and one write bigger than half the cap would otherwise
/// leave both empty.
fn frame_limit(max_output_bytes: usize) -> usize {
    (max_output_bytes / 8).clamp(4, 16 * 1024)
}

/// `bytes` cut into pieces of at most `max` bytes, on character boundaries where the
/// bytes are UTF-8.
fn pieces(bytes: &[u8], max: usize) -> Vec<&[u8]> {
    let mut out = Vec::with_capacity(bytes.len() / max.max(1) + 1);
    let mut rest = bytes;
    while !rest.is_empty() {
        let cut = cut_at(rest, max);
        out.push(&rest[..cut]);
        rest = &rest[cut..];
    }
    out
}

/// What a new subscriber gets: the stored frames after `since`, then the live receiver.
pub(crate) struct Subscription {
    pub replay: Vec<Arc<Frame>>,
    pub live: broadcast::Receiver<Arc<Frame>>,
    /// Highest seq in `replay` (or `since`); live frames at or below it are duplicates.
    pub replayed_up_to: u64,
}

impl JobStream {
    #[cfg(test)]
    pub(crate) fn new(job_id: &str, max_output_bytes: usize, buffer: usize) -> JobStream {
        JobStream::with_frame_cap(job_id, max_output_bytes, DEFAULT_MAX_OUTPUT_FRAMES, buffer)
    }

    /// A stream that stores at most `max_output_bytes` and `max_output_frames` frames of
    /// each of stdout and stderr (head and tail), plus the marker.
    pub(crate) fn with_frame_cap(
        job_id: &str,
        max_output_bytes: usize,
        max_output_frames: usize,
        buffer: usize,
    ) -> JobStream {
        let (sender, _) = broadcast::channel(buffer.max(1));
        JobStream {
            job_id: job_id.to_string(),
            inner: Mutex::new(Inner {
                seq: 0,
                stdout: StreamState::new(StreamName::Stdout, max_output_bytes, max_output_frames),
                stderr: StreamState::new(StreamName::Stderr, max_output_bytes, max_output_frames),
                final_frame: None,
                unsaved: Vec::new(),
            }),
            sender,
            max_frame_bytes: frame_limit(max_output_bytes),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock leaves plain data behind; keep serving it.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Takes bytes as the sandbox wrote them; sends them on in frames of at most
    /// `max_frame_bytes`.
    pub(crate) fn push(&self, stream: StreamName, bytes: &[u8]) {
        let mut inner = self.lock();
        let state = match stream {
            StreamName::Stdout => &mut inner.stdout,
            StreamName::Stderr => &mut inner.stderr,
        };
        state.bytes += bytes.len() as u64;
        state.hasher.update(bytes);
        let whole = state.chunker.push(bytes);
        for piece in pieces(&whole, self.max_frame_bytes) {
            self.emit(&mut inner, stream, piece.to_vec());
        }
    }

    fn emit(&self, inner: &mut Inner, stream: StreamName, bytes: Vec<u8>) {
        inner.seq += 1;
        let frame = Frame {
            log: LogFrame {
                job_id: self.job_id.clone(),
                timestamp: clock::rfc3339_ms(clock::now_ms()),
                stream,
                data: String::new(),
                is_final: false,
                seq: inner.seq,
                status: None,
                exit_code: None,
                audit: None,
            },
            bytes,
        };
        let state = match stream {
            StreamName::Stdout => &mut inner.stdout,
            StreamName::Stderr => &mut inner.stderr,
        };
        if state.capped.accept(&frame) {
            inner.unsaved.push(frame.clone());
        }
        // No receivers is fine: nobody is watching.
        let _ = self.sender.send(Arc::new(frame));
    }

    /// Frames kept in the head since the last call, to write to the database now.
    pub(crate) fn take_unsaved(&self) -> Vec<Frame> {
        std::mem::take(&mut self.lock().unsaved)
    }

    /// Ends the streams: flushes unfinished characters, and returns the frames still to
    /// store (the marker and the tails) and each stream's summary.
    pub(crate) fn finish_output(&self) -> (Vec<Frame>, StreamSummary, StreamSummary) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        for stream in [StreamName::Stdout, StreamName::Stderr] {
            let rest = match stream {
                StreamName::Stdout => inner.stdout.chunker.finish(),
                StreamName::Stderr => inner.stderr.chunker.finish(),
            };
            if !rest.is_empty() {
                self.emit(inner, stream, rest);
            }
        }
        let mut frames = std::mem::take(&mut inner.unsaved);
        let mut summaries = Vec::with_capacity(2);
        for state in [&mut inner.stdout, &mut inner.stderr] {
            frames.extend(state.capped.marker_and_tail());
            let hasher = std::mem::take(&mut state.hasher);
            summaries.push(StreamSummary {
                bytes: state.bytes,
                sha256: hex::encode(hasher.finalize()),
                truncated: state.capped.truncated(),
                stored: state.capped.stored_bytes(),
            });
        }
        frames.sort_by_key(|frame| frame.log.seq);
        let stderr = summaries.pop().unwrap_or_else(empty_summary);
        let stdout = summaries.pop().unwrap_or_else(empty_summary);
        (frames, stdout, stderr)
    }

    /// Sends the final frame, stamped `ended_ms` (the job's stored end, so a replay of it
    /// later carries the same time), and keeps it for subscribers that arrive afterwards.
    /// `witness` is the result's audit witness (protocol v1.1), when there is one.
    pub(crate) fn finish(
        &self,
        status: JobStatus,
        exit_code: i64,
        ended_ms: i64,
        witness: Option<AuditWitness>,
    ) -> Arc<Frame> {
        let mut inner = self.lock();
        let frame = Arc::new(Frame::without_data(LogFrame {
            audit: witness,
            ..final_frame(&self.job_id, inner.seq + 1, status, exit_code, ended_ms)
        }));
        inner.final_frame = Some(frame.clone());
        let _ = self.sender.send(frame.clone());
        frame
    }

    /// Subscribes: stored frames after `since` in seq order (the marker standing in for a
    /// dropped middle), then live frames.
    pub(crate) fn subscribe(&self, since: u64) -> Subscription {
        let inner = self.lock();
        // Subscribing under the lock means no frame falls between replay and live.
        let live = self.sender.subscribe();
        let mut replay: Vec<Frame> = Vec::new();
        replay.extend(inner.stdout.capped.stored_frames());
        replay.extend(inner.stderr.capped.stored_frames());
        replay.retain(|frame| frame.log.seq > since);
        replay.sort_by_key(|frame| frame.log.seq);
        let mut replay: Vec<Arc<Frame>> = replay.into_iter().map(Arc::new).collect();
        if let Some(final_frame) = &inner.final_frame {
            if final_frame.log.seq > since {
                replay.push(final_frame.clone());
            }
        }
        Subscription {
            replay,
            live,
            replayed_up_to: inner.seq.max(since),
        }
    }
}

fn empty_summary() -> StreamSummary {
    StreamSummary {
        bytes: 0,
        sha256: hex::encode(Sha256::digest(b"")),
        truncated: false,
        stored: Vec::new(),
    }
}

/// The last frame of a job: empty stdout data, `final: true`, status and exit code, stamped
/// with the job's end.
pub(crate) fn final_frame(
    job_id: &str,
    seq: u64,
    status: JobStatus,
    exit_code: i64,
    ended_ms: i64,
) -> LogFrame {
    LogFrame {
        job_id: job_id.to_string(),
        timestamp: clock::rfc3339_ms(ended_ms),
        stream: StreamName::Stdout,
        data: String::new(),
        is_final: true,
        seq,
        status: Some(status),
        exit_code: Some(exit_code),
        audit: None,
    }
}

#[cfg(test)]
mod tests;
