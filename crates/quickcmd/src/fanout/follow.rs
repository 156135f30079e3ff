//! Following one submitted job to its end, in three steps: stream its output live, settle
//! its result (waiting for it, and printing what the stream missed), and record what came
//! of it as a report and an output record for the history.

use std::time::Duration;

use quickcmd_protocol::{AuditWitness, JobResult, LogFrame, StreamName};
use sha2::{Digest, Sha256};

use super::Context;
use crate::client::Client;
use crate::report::{HostReport, HostStatus, RunEvent};

/// Most output text kept per stream for `--output json` and the report.
pub(super) const MAX_CAPTURE_BYTES: usize = 8 * 1024 * 1024;

/// Output collected from a stream: sizes and hashes of everything, text up to a bound.
pub(super) struct Capture {
    pub(super) text: String,
    pub(super) bytes: u64,
    hasher: Sha256,
    pub(super) truncated: bool,
}

impl Capture {
    pub(super) fn new() -> Capture {
        Capture {
            text: String::new(),
            bytes: 0,
            hasher: Sha256::new(),
            truncated: false,
        }
    }

    pub(super) fn add(&mut self, data: &str) {
        self.bytes += data.len() as u64;
        self.hasher.update(data.as_bytes());
        if self.text.len() + data.len() <= MAX_CAPTURE_BYTES {
            self.text.push_str(data);
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
}

/// Follows `job_id` to its end: the report and, when the result could be read or the
/// stream ended, the output record.
pub(super) async fn follow(
    host: usize,
    client: &Client,
    context: &Context,
    job_id: &str,
) -> (HostReport, Option<OutputRecord>) {
    let mut streamed = if context.options.stream {
        stream_output(host, client, context, job_id).await
    } else {
        Streamed {
            stdout: Capture::new(),
            stderr: Capture::new(),
            final_frame: None,
            complete: false,
            reconnects: 0,
        }
    };
    match settle(host, client, context, job_id, &mut streamed).await {
        Ok(result) => record(client, job_id, streamed, result),
        Err(report) => (report, None),
    }
}

/// Prints the job's frames as they come and captures them, until the final frame, the
/// end of the stream, or a failure the stream could not recover from.
async fn stream_output(host: usize, client: &Client, context: &Context, job_id: &str) -> Streamed {
    let mut streamed = Streamed {
        stdout: Capture::new(),
        stderr: Capture::new(),
        final_frame: None,
        complete: false,
        reconnects: 0,
    };
    let mut stream = client.stream(job_id, 0);
    loop {
        match stream.next().await {
            Ok(Some(frame)) if frame.is_final => {
                streamed.final_frame = Some(frame);
                streamed.complete = true;
                break;
            }
            Ok(Some(frame)) => {
                match frame.stream {
                    StreamName::Stdout => streamed.stdout.add(&frame.data),
                    StreamName::Stderr => streamed.stderr.add(&frame.data),
                }
                context
                    .emit(RunEvent::Output {
                        host,
                        stream: frame.stream,
                        data: frame.data,
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
    let result = match client.wait(job_id, limit).await {
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
    if !streamed.complete {
        // Polled, or the stream was lost: what was already printed live is not printed
        // again.
        for (stream, seen, data) in [
            (StreamName::Stdout, &streamed.stdout.text, &result.stdout),
            (StreamName::Stderr, &streamed.stderr.text, &result.stderr),
        ] {
            let rest = data.strip_prefix(seen.as_str()).unwrap_or_default();
            if !rest.is_empty() {
                context
                    .emit(RunEvent::Output {
                        host,
                        stream,
                        data: rest.to_string(),
                    })
                    .await;
            }
        }
        streamed.stdout = Capture::new();
        streamed.stderr = Capture::new();
        streamed.stdout.add(&result.stdout);
        streamed.stderr.add(&result.stderr);
    }
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
    report.stdout = stdout.text;
    report.stderr = stderr.text;
    (report, Some(output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_bounds_text_but_hashes_everything() {
        let mut capture = Capture::new();
        capture.add("abc");
        assert_eq!(capture.bytes, 3);
        assert_eq!(
            capture.sha256(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        capture.add(&"x".repeat(MAX_CAPTURE_BYTES));
        assert!(capture.truncated);
        assert_eq!(capture.text, "abc");
        assert_eq!(capture.bytes, 3 + MAX_CAPTURE_BYTES as u64);
    }
}
