//! Following one submitted job to its end, in three steps: stream its output live, settle
//! its result (waiting for it, and printing what the stream missed), and record what came
//! of it as a report and an output record for the history.

use std::time::Duration;

use quickcmd_protocol::{AuditWitness, Encoding, JobResult, LogFrame, StreamName};
use sha2::{Digest, Sha256};

use super::Context;
use crate::client::Client;
use crate::report::{HostReport, HostStatus, RunEvent};

/// Most output kept per stream for `--output json` and the report.
pub(super) const MAX_CAPTURE_BYTES: usize = 8 * 1024 * 1024;

/// Output collected from a stream: sizes and hashes of everything, bytes up to a bound.
pub(super) struct Capture {
    pub(super) kept: Vec<u8>,
    pub(super) bytes: u64,
    hasher: Sha256,
    pub(super) truncated: bool,
}

impl Capture {
    pub(super) fn new() -> Capture {
        Capture {
            kept: Vec::new(),
            bytes: 0,
            hasher: Sha256::new(),
            truncated: false,
        }
    }

    pub(super) fn add(&mut self, data: &[u8]) {
        self.bytes += data.len() as u64;
        self.hasher.update(data);
        if self.kept.len() + data.len() <= MAX_CAPTURE_BYTES {
            self.kept.extend_from_slice(data);
        } else {
            self.truncated = true;
        }
    }

    pub(super) fn sha256(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

/// Sizes and hashes of a job's output, for the history.
pub(super) struct OutputRecord {
    pub(super) result: Option<JobResult>,
    /// The agent's audit witness of the result (v1.1), from the result or the final frame.
    pub(super) witness: Option<AuditWitness>,
    pub(super) stdout_bytes: u64,
    pub(super) stderr_bytes: u64,
    pub(super) stdout_sha256: String,
    pub(super) stderr_sha256: String,
}

/// What the live stream gave.
struct Streamed {
    stdout: Capture,
    stderr: Capture,
    final_frame: Option<LogFrame>,
    /// The stream ended normally (final frame or clean close), so it holds all output.
    complete: bool,
    reconnects: u32,
    /// How this agent carries output: base64 (exact bytes) from a v1.1 agent.
    encoding: Encoding,
}

/// Follows `job_id` to its end: the report and, when the result could be read or the
/// stream ended, the output record.
pub(super) async fn follow(
    host: usize,
    client: &Client,
    context: &Context,
    job_id: &str,
) -> (HostReport, Option<OutputRecord>) {
    let encoding = client.output_encoding().await;
    let mut streamed = if context.options.stream {
        stream_output(host, client, context, job_id, encoding).await
    } else {
        Streamed {
            stdout: Capture::new(),
            stderr: Capture::new(),
            final_frame: None,
            complete: false,
            reconnects: 0,
            encoding,
        }
    };
    match settle(host, client, context, job_id, &mut streamed).await {
        Ok(result) => record(client, job_id, streamed, result),
        Err(report) => (report, None),
    }
}

/// Prints the job's frames as they come and captures them, until the final frame, the
/// end of the stream, or a failure the stream could not recover from.
async fn stream_output(
    host: usize,
    client: &Client,
    context: &Context,
    job_id: &str,
    encoding: Encoding,
) -> Streamed {
    let mut streamed = Streamed {
        stdout: Capture::new(),
        stderr: Capture::new(),
        final_frame: None,
        complete: false,
        reconnects: 0,
        encoding,
    };
    let mut stream = client.stream_in(job_id, 0, encoding);
    loop {
        let next = stream.next().await.and_then(|frame| match frame {
            Some(frame) => stream.bytes(&frame).map(|bytes| Some((frame, bytes))),
            None => Ok(None),
        });
        match next {
            Ok(Some((frame, _))) if frame.is_final => {
                streamed.final_frame = Some(frame);
                streamed.complete = true;
                break;
            }
            Ok(Some((frame, bytes))) => {
                match frame.stream {
                    StreamName::Stdout => streamed.stdout.add(&bytes),
                    StreamName::Stderr => streamed.stderr.add(&bytes),
                }
                context
                    .emit(RunEvent::Output {
                        host,
                        stream: frame.stream,
                        data: bytes,
                    })
                    .await;
            }
            Ok(None) => {
                streamed.complete = true;
                break;
            }
            Err(error) => {
                context
                    .emit(RunEvent::Notice {
                        host,
                        message: format!(
                            "{error}; waiting for the result (live output may be incomplete)"
                        ),
                    })
                    .await;
                break;
            }
        }
    }
    streamed.reconnects = stream.reconnects();
    streamed
}

/// Reads the job's result (at once after a final frame, else by polling). When the
/// stream did not carry everything, prints what it missed and takes the output from the
/// stored result. `Err` is the report of a host whose result could not be had at all.
async fn settle(
    host: usize,
    client: &Client,
    context: &Context,
    job_id: &str,
    streamed: &mut Streamed,
) -> Result<Option<JobResult>, HostReport> {
    let limit = streamed
        .final_frame
        .as_ref()
        .map(|_| Duration::from_secs(30));
    let result = match client.wait_in(job_id, limit, streamed.encoding).await {
        Ok(result) => result,
        Err(error) if streamed.final_frame.is_some() => {
            context
                .emit(RunEvent::Notice {
                    host,
                    message: format!("could not read the job's result: {error}"),
                })
                .await;
            return Ok(None);
        }
        Err(error) => {
            let mut report = HostReport::from_error(client, Some(job_id.to_string()), &error);
            report.stream_reconnects = streamed.reconnects;
            return Err(report);
        }
    };
    // The result's output in its encoding; as text from here on (for the report).
    let decode = |data: &str| {
        streamed
            .encoding
            .decode(data)
            .unwrap_or_else(|_| data.as_bytes().to_vec())
    };
    let (stdout, stderr) = (decode(&result.stdout), decode(&result.stderr));
    if !streamed.complete {
        // Polled, or the stream was lost: what was already printed live is not printed
        // again.
        for (stream, seen, data) in [
            (StreamName::Stdout, &streamed.stdout.kept, &stdout),
            (StreamName::Stderr, &streamed.stderr.kept, &stderr),
        ] {
            let rest = data.strip_prefix(seen.as_slice()).unwrap_or_default();
            if !rest.is_empty() {
                context
                    .emit(RunEvent::Output {
                        host,
                        stream,
                        data: rest.to_vec(),
                    })
                    .await;
            }
        }
        streamed.stdout = Capture::new();
        streamed.stderr = Capture::new();
        streamed.stdout.add(&stdout);
        streamed.stderr.add(&stderr);
    }
    let result = JobResult {
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
        ..result
    };
    Ok(Some(result))
}

/// The host's report and output record from what was streamed and the result, if any.
/// The agent's sizes and hashes win over ours: they cover output we may not have seen.
fn record(
    client: &Client,
    job_id: &str,
    streamed: Streamed,
    result: Option<JobResult>,
) -> (HostReport, Option<OutputRecord>) {
    let mut report = HostReport::new(client, HostStatus::Error);
    report.job_id = Some(job_id.to_string());
    report.stream_reconnects = streamed.reconnects;
    let Streamed {
        stdout,
        stderr,
        final_frame,
        complete,
        ..
    } = streamed;
    match (&result, &final_frame) {
        (Some(result), _) => {
            report.status = HostStatus::from(result.status);
            report.exit_code = (result.exit_code >= 0).then_some(result.exit_code);
            report.duration_ms = Some(result.duration_ms);
            report.reason = result.reason.clone();
            report.error = result.error.clone();
            // A complete stream carried every byte, also those the agent did not keep;
            // otherwise the text is the agent's stored copy, cut where it cut it.
            report.stdout_truncated = stdout.truncated || (!complete && result.stdout_truncated);
            report.stderr_truncated = stderr.truncated || (!complete && result.stderr_truncated);
        }
        (None, Some(frame)) => {
            report.status = frame.status.map_or(HostStatus::Error, HostStatus::from);
            report.exit_code = frame.exit_code.filter(|code| *code >= 0);
            report.reason = Some("result unavailable".into());
        }
        (None, None) => {}
    }
    let pick = |agent: Option<&String>, ours: String| match agent {
        Some(hash) if !hash.is_empty() => hash.clone(),
        _ => ours,
    };
    let agent_bytes = |bytes: Option<u64>, ours: u64| bytes.filter(|b| *b > 0).unwrap_or(ours);
    let witness = result
        .as_ref()
        .and_then(|r| r.audit.clone())
        .or_else(|| final_frame.as_ref().and_then(|f| f.audit.clone()));
    let output = OutputRecord {
        witness,
        stdout_bytes: agent_bytes(result.as_ref().map(|r| r.stdout_bytes), stdout.bytes),
        stderr_bytes: agent_bytes(result.as_ref().map(|r| r.stderr_bytes), stderr.bytes),
        stdout_sha256: pick(result.as_ref().map(|r| &r.stdout_sha256), stdout.sha256()),
        stderr_sha256: pick(result.as_ref().map(|r| &r.stderr_sha256), stderr.sha256()),
        result,
    };
    report.stdout_bytes = Some(output.stdout_bytes);
    report.stderr_bytes = Some(output.stderr_bytes);
    report.stdout_sha256 = Some(output.stdout_sha256.clone());
    report.stderr_sha256 = Some(output.stderr_sha256.clone());
    report.stdout = String::from_utf8_lossy(&stdout.kept).into_owned();
    report.stderr = String::from_utf8_lossy(&stderr.kept).into_owned();
    (report, Some(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_bounds_text_but_hashes_everything() {
        let mut capture = Capture::new();
        capture.add(b"abc");
        assert_eq!(capture.bytes, 3);
        assert_eq!(
            capture.sha256(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        capture.add("x".repeat(MAX_CAPTURE_BYTES).as_bytes());
        assert!(capture.truncated);
        assert_eq!(capture.kept, b"abc");
        assert_eq!(capture.bytes, 3 + MAX_CAPTURE_BYTES as u64);
    }
}
