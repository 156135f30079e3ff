//! What a run says about each host: its final [`HostReport`] (a summary row, or one JSON
//! object of `--output json`) and the [`RunEvent`]s the printer receives while it runs.

use quickcmd_protocol::{JobStatus, StreamName};
use serde::Serialize;

use crate::client::{Client, ClientError};

/// What became of one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    /// The command ran and exited (see `exit_code`).
    Completed,
    /// The job could not run, timed out, was killed or cancelled by the agent.
    Failed,
    /// The agent accepted the signature but refused the job.
    Rejected,
    /// The agent refused the request (401, 403, 409, 4xx).
    Refused,
    /// We could not reach the agent (refused connection, TLS, timeout).
    Unreachable,
    /// Something else went wrong; `reason` says what.
    Error,
    /// Not started because too many hosts had failed (`--max-errors`).
    Skipped,
    /// Cancelled by us (Ctrl-C, or we gave up waiting).
    Cancelled,
    /// Accepted by the agent; not waited for (`quickcmd submit`).
    Submitted,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Completed => "completed",
            HostStatus::Failed => "failed",
            HostStatus::Rejected => "rejected",
            HostStatus::Refused => "refused",
            HostStatus::Unreachable => "unreachable",
            HostStatus::Error => "error",
            HostStatus::Skipped => "skipped",
            HostStatus::Cancelled => "cancelled",
            HostStatus::Submitted => "submitted",
        }
    }
}

/// The host status of an ended job. A job that has not ended (`pending`, `running`) where
/// an end was expected is an error of the exchange.
impl From<JobStatus> for HostStatus {
    fn from(status: JobStatus) -> HostStatus {
        match status {
            JobStatus::Completed => HostStatus::Completed,
            JobStatus::Failed => HostStatus::Failed,
            JobStatus::Rejected => HostStatus::Rejected,
            JobStatus::Pending | JobStatus::Running => HostStatus::Error,
        }
    }
}

impl std::fmt::Display for HostStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host's result: a summary row, or one JSON object of `--output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostReport {
    pub agent: String,
    pub url: String,
    pub job_id: Option<String>,
    pub status: HostStatus,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
    /// Short cause: the agent's `reason`, an error code, "connection refused", …
    pub reason: Option<String>,
    /// Longer explanation, when there is one.
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    /// `stdout` holds only the start of the stream (our capture bound, or the agent's
    /// `max_output_bytes`); `stdout_bytes` and `stdout_sha256` then describe all of it.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Size of the whole stream in bytes, as the agent (or, failing that, we) counted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_bytes: Option<u64>,
    /// SHA-256 (hex) of the whole stream.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stdout_sha256: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stderr_sha256: Option<String>,
    /// How often the log stream had to be re-established.
    pub stream_reconnects: u32,
}

impl HostReport {
    /// An empty report of `status` for the agent at `url`.
    pub fn empty(agent: &str, url: &str, status: HostStatus) -> HostReport {
        HostReport {
            agent: agent.to_string(),
            url: url.to_string(),
            job_id: None,
            status,
            exit_code: None,
            duration_ms: None,
            reason: None,
            error: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_bytes: None,
            stderr_bytes: None,
            stdout_sha256: None,
            stderr_sha256: None,
            stream_reconnects: 0,
        }
    }

    /// An empty report of `status` for `client`'s agent.
    pub fn new(client: &Client, status: HostStatus) -> HostReport {
        HostReport::empty(client.name(), client.url().as_str(), status)
    }

    /// A report for a host whose request failed.
    pub fn from_error(client: &Client, job_id: Option<String>, error: &ClientError) -> HostReport {
        let status = if error.is_unreachable() {
            HostStatus::Unreachable
        } else if matches!(error, ClientError::Api { status, .. } if *status < 500) {
            HostStatus::Refused
        } else {
            HostStatus::Error
        };
        let reason = match error {
            ClientError::Api { status, code, .. } if !code.is_empty() => {
                format!("{status} {code}")
            }
            ClientError::Api { status, .. } => format!("HTTP {status}"),
            ClientError::Tls { .. } => "TLS error".to_string(),
            ClientError::Timeout { .. } => "timeout".to_string(),
            ClientError::ConnectionRefused => "connection refused".to_string(),
            other => other.to_string(),
        };
        HostReport {
            job_id,
            reason: Some(reason),
            error: Some(error.to_string()),
            ..HostReport::new(client, status)
        }
    }

    /// Whether this host counts as a success: the command ran and exited 0 (or, for
    /// `submit`, the agent accepted the job).
    pub fn succeeded(&self) -> bool {
        match self.status {
            HostStatus::Completed => self.exit_code == Some(0),
            HostStatus::Submitted => true,
            _ => false,
        }
    }

    /// The exit code a single-host run ends with, as ssh's: the job's own (a timeout is
    /// 124), 255 when it could not run (unreachable, TLS, auth, refused, never started),
    /// 1 for a code out of range, 130 when cancelled by us.
    pub fn single_host_exit_code(&self) -> u8 {
        match (self.status, self.exit_code) {
            (HostStatus::Submitted, _) => 0,
            (HostStatus::Cancelled, _) => 130,
            (HostStatus::Completed | HostStatus::Failed, Some(code)) => {
                u8::try_from(code).unwrap_or(1)
            }
            _ => 255,
        }
    }

    /// Which count of the summary this host adds to.
    pub fn tally(&self) -> Tally {
        match self.status {
            _ if self.succeeded() => Tally::Succeeded,
            HostStatus::Completed | HostStatus::Failed | HostStatus::Error => Tally::Failed,
            HostStatus::Unreachable => Tally::Unreachable,
            HostStatus::Refused | HostStatus::Rejected => Tally::Refused,
            HostStatus::Cancelled => Tally::Cancelled,
            HostStatus::Skipped => Tally::Skipped,
            HostStatus::Submitted => Tally::Succeeded,
        }
    }
}

/// The summary's counts: each host is in exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    /// Ran and exited 0 (or, for `submit`, accepted).
    Succeeded,
    /// Ran and failed: non-zero exit, timeout, killed, never started on the agent.
    Failed,
    /// Could not be reached: connection refused, TLS, timeout.
    Unreachable,
    /// The agent said no: authentication, scopes, image, caps, queue.
    Refused,
    /// Cancelled by us: Ctrl-C or `--wait-timeout`.
    Cancelled,
    /// Not started, over `--max-errors`.
    Skipped,
}

impl Tally {
    /// In the summary's order.
    pub const ALL: [Tally; 6] = [
        Tally::Succeeded,
        Tally::Failed,
        Tally::Unreachable,
        Tally::Refused,
        Tally::Cancelled,
        Tally::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tally::Succeeded => "succeeded",
            Tally::Failed => "failed",
            Tally::Unreachable => "unreachable",
            Tally::Refused => "refused",
            Tally::Cancelled => "cancelled",
            Tally::Skipped => "skipped",
        }
    }
}

/// What a fan-out reports while it runs, in order per host.
// `Finished` is the big one, and there is one per host: boxing it would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Started {
        host: usize,
    },
    Submitted {
        host: usize,
        job_id: String,
    },
    Output {
        host: usize,
        stream: StreamName,
        /// The exact bytes (from a v1.1 agent; an older one's text).
        data: Vec<u8>,
    },
    /// Something the operator should know that is not the job's output.
    Notice {
        host: usize,
        message: String,
    },
    /// The same, about the run rather than one host.
    Message {
        message: String,
    },
    Finished {
        host: usize,
        report: HostReport,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_statuses_map_to_host_statuses() {
        for (job, host) in [
            (JobStatus::Completed, HostStatus::Completed),
            (JobStatus::Failed, HostStatus::Failed),
            (JobStatus::Rejected, HostStatus::Rejected),
            (JobStatus::Pending, HostStatus::Error),
            (JobStatus::Running, HostStatus::Error),
        ] {
            assert_eq!(HostStatus::from(job), host, "{job:?}");
        }
    }
}
