//! The parsers of untrusted or operator-written bytes, as the fuzz targets under `fuzz/`
//! drive them. Not an API: hidden, unstable, and only plain data crosses it, so the modules
//! behind it stay private.

use std::collections::HashMap;
use std::path::Path;

use quickcmd_protocol::StreamName;

use crate::config::{AgentConfig, ConfigError};
use crate::stream::JobStream;

/// One live frame as a subscriber saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub stderr: bool,
    pub seq: u64,
    /// The frame's text as a text reader gets it.
    pub data: String,
    /// The exact bytes the frame carries (what `encoding=base64` sends).
    pub bytes: Vec<u8>,
}

/// One stream's end: byte count and SHA-256 of everything written, the stored text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    pub bytes: u64,
    pub sha256: String,
    pub truncated: bool,
    pub text: String,
    /// The stored bytes: head, marker line, tail.
    pub stored: Vec<u8>,
}

/// What a job's output became.
#[derive(Debug, Clone)]
pub struct Output {
    /// Every frame live subscribers got, in order.
    pub live: Vec<Frame>,
    /// The frames written to the database (head, marker, tail of each stream), by seq.
    pub stored: Vec<Frame>,
    pub stdout: Summary,
    pub stderr: Summary,
}

/// A frame's bytes as a text reader gets them (the stream cuts on character boundaries).
fn frame(f: &crate::stream::Frame) -> Frame {
    Frame {
        stderr: f.log.stream == StreamName::Stderr,
        seq: f.log.seq,
        data: String::from_utf8_lossy(&f.bytes).into_owned(),
        bytes: f.bytes.clone(),
    }
}

fn summary(s: crate::stream::StreamSummary) -> Summary {
    Summary {
        bytes: s.bytes,
        sha256: s.sha256,
        truncated: s.truncated,
        text: String::from_utf8_lossy(&s.stored).into_owned(),
        stored: s.stored,
    }
}

/// Feeds `writes` (`true`: stderr) through a job's output stream with `max_output_bytes`,
/// as the runner does with the sandbox's writes, and ends it.
pub fn run_output(max_output_bytes: usize, writes: &[(bool, &[u8])]) -> Output {
    // Every frame holds at least one character: the channel never lags.
    let frames_bound = writes.iter().map(|(_, b)| b.len()).sum::<usize>() + 8;
    let stream = JobStream::with_frame_cap("fuzz", max_output_bytes, 4096, frames_bound);
    let mut live_rx = stream.subscribe(0).live;
    for (stderr, bytes) in writes {
        let name = if *stderr {
            StreamName::Stderr
        } else {
            StreamName::Stdout
        };
        stream.push(name, bytes);
    }
    let (stored, stdout, stderr) = stream.finish_output();
    let mut live = Vec::new();
    while let Ok(f) = live_rx.try_recv() {
        live.push(frame(&f));
    }
    Output {
        live,
        stored: stored.iter().map(frame).collect(),
        stdout: summary(stdout),
        stderr: summary(stderr),
    }
}

/// The `since` of a stream request whose URI query is `query`, as the handler reads it:
/// `None` when the query does not decode (the router answers 400 before the handler),
/// otherwise the decoded `since` value and what the handler made of it.
pub fn since_from_query(query: &str) -> Option<(Option<String>, Result<u64, String>)> {
    let uri: axum::http::Uri = format!("/api/v1/stream/x?{query}").parse().ok()?;
    let axum::extract::Query(map) =
        axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri).ok()?;
    let parsed = crate::api::parse_since(&map).map_err(|e| e.message);
    Some((map.get("since").cloned(), parsed))
}

/// Parses and validates config text as `quickcmd-agent` does with the file's contents.
pub fn load_config(text: &str) -> Result<AgentConfig, ConfigError> {
    AgentConfig::from_text(Path::new("fuzz-config.yaml"), text, None)
}
