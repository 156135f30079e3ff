//! Response bodies and log frames (protocol-v1 §1–§4), shared by agent and controller.

use serde::{Deserialize, Serialize};

/// Job statuses on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Rejected,
}

impl JobStatus {
    /// Every status, in life-cycle order.
    pub const ALL: [JobStatus; 5] = [
        JobStatus::Pending,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Failed,
        JobStatus::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
            JobStatus::Rejected => "rejected",
        }
    }

    pub fn parse(text: &str) -> Option<JobStatus> {
        JobStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == text)
    }

    /// Whether the job has ended and will not change again.
    pub fn is_final(self) -> bool {
        !matches!(self, JobStatus::Pending | JobStatus::Running)
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a job failed (`result.reason`).
pub mod reason {
    pub const TIMEOUT: &str = "timeout";
    pub const CANCELLED: &str = "cancelled";
    pub const OOM: &str = "oom";
    pub const EXPIRED: &str = "expired";
    pub const AGENT_RESTART: &str = "agent_restart";
    pub const AGENT_SHUTDOWN: &str = "agent_shutdown";
    pub const SANDBOX_ERROR: &str = "sandbox_error";
    pub const IMAGE_UNAVAILABLE: &str = "image_unavailable";
    /// The audit log could not be written, so the job did not run.
    pub const AUDIT_UNAVAILABLE: &str = "audit_unavailable";
}

/// `202` answer to a submit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubmitResponse {
    pub job_id: String,
    pub status: JobStatus,
}

/// `GET /api/v1/jobs/:id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    pub job_id: String,
    pub status: JobStatus,
    pub result: Option<JobResult>,
}

/// The result of an ended job: the seed's fields plus protocol-v1's additions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job_id: String,
    pub status: JobStatus,
    pub sandbox_id: String,
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
    /// RFC 3339 UTC.
    pub start_time: String,
    /// RFC 3339 UTC.
    pub end_time: String,
    pub duration_ms: i64,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    #[serde(default)]
    pub stdout_bytes: u64,
    #[serde(default)]
    pub stderr_bytes: u64,
    #[serde(default)]
    pub stdout_sha256: String,
    #[serde(default)]
    pub stderr_sha256: String,
}

/// One row of `GET /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSummary {
    pub job_id: String,
    pub status: JobStatus,
    /// RFC 3339 UTC.
    pub created_at: String,
    pub command: String,
    pub exit_code: Option<i64>,
}

/// `GET /api/v1/jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobList {
    pub jobs: Vec<JobSummary>,
}

/// Which output stream a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StreamName {
    Stdout,
    Stderr,
}

impl StreamName {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamName::Stdout => "stdout",
            StreamName::Stderr => "stderr",
        }
    }
}

/// One WebSocket text message of `/api/v1/stream/:id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogFrame {
    pub job_id: String,
    /// RFC 3339 UTC with milliseconds.
    pub timestamp: String,
    pub stream: StreamName,
    pub data: String,
    #[serde(rename = "final")]
    pub is_final: bool,
    pub seq: u64,
    /// Only on the final frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<JobStatus>,
    /// Only on the final frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i64>,
}

/// `GET /health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `healthy` or `unhealthy`.
    pub status: String,
    pub timestamp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running_jobs: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checks: Option<std::collections::BTreeMap<String, String>>,
}
