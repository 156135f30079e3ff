//! Response bodies and log frames (protocol-v1 §1–§4), shared by agent and controller.

use serde::{Deserialize, Serialize};

use crate::audit::AuditWitness;

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
    /// The payload's `requested_by` (v1.1), omitted when the payload had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
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
    /// The agent's witness of the audit row that recorded this result (v1.1); omitted
    /// when absent, so v1 clients see no change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditWitness>,
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
    /// The payload's `requested_by` (v1.1), omitted when the payload had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
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
    /// Only on the final frame, and only from a v1.1 agent: the result's audit witness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit: Option<AuditWitness>,
}

/// `GET /api/v1/whoami` (v1.1): who the agent took the caller for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub controller_id: String,
    pub agent_id: String,
    pub version: String,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn result() -> JobResult {
        JobResult {
            job_id: "j1".into(),
            status: JobStatus::Completed,
            sandbox_id: "c1".into(),
            exit_code: 0,
            stdout: "hi\n".into(),
            stderr: String::new(),
            start_time: "2024-01-07T12:00:00Z".into(),
            end_time: "2024-01-07T12:00:01Z".into(),
            duration_ms: 1000,
            error: None,
            reason: None,
            stdout_truncated: false,
            stderr_truncated: false,
            stdout_bytes: 3,
            stderr_bytes: 0,
            stdout_sha256: String::new(),
            stderr_sha256: String::new(),
            audit: None,
        }
    }

    fn round_trip<T>(value: &T) -> String
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let text = serde_json::to_string(value).unwrap_or_else(|e| panic!("{e}"));
        let back: T = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(&back, value);
        text
    }

    /// A v1 client sees exactly the v1 fields when the v1.1 ones are absent, and a v1
    /// agent's answers still read.
    #[test]
    fn v11_fields_are_omitted_when_absent() {
        let view = JobView {
            job_id: "j1".into(),
            status: JobStatus::Completed,
            requested_by: None,
            result: Some(result()),
        };
        let text = round_trip(&view);
        assert!(
            !text.contains("requested_by") && !text.contains("audit"),
            "{text}"
        );
        let v1: JobView =
            serde_json::from_str(r#"{"job_id":"j","status":"pending","result":null}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v1.requested_by, None);

        let frame = LogFrame {
            job_id: "j1".into(),
            timestamp: "2024-01-07T12:00:01.000Z".into(),
            stream: StreamName::Stdout,
            data: String::new(),
            is_final: true,
            seq: 4,
            status: Some(JobStatus::Completed),
            exit_code: Some(0),
            audit: None,
        };
        assert!(!round_trip(&frame).contains("audit"));
    }

    #[test]
    fn v11_fields_round_trip() {
        let witness = AuditWitness {
            seq: 12,
            head: "ab".repeat(32),
            mac: "cd".repeat(32),
        };
        let view = JobView {
            job_id: "j1".into(),
            status: JobStatus::Completed,
            requested_by: Some("ann@host".into()),
            result: Some(JobResult {
                audit: Some(witness.clone()),
                ..result()
            }),
        };
        let text = round_trip(&view);
        assert!(text.contains(r#""status":"completed","requested_by":"ann@host","result""#));
        assert!(text.contains(r#""audit":{"seq":12,"head":"abab"#));
        let frame = LogFrame {
            job_id: "j1".into(),
            timestamp: "2024-01-07T12:00:01.000Z".into(),
            stream: StreamName::Stdout,
            data: String::new(),
            is_final: true,
            seq: 4,
            status: Some(JobStatus::Completed),
            exit_code: Some(0),
            audit: Some(witness),
        };
        assert!(round_trip(&frame).ends_with(&format!(
            r#""exit_code":0,"audit":{{"seq":12,"head":"{}","mac":"{}"}}}}"#,
            "ab".repeat(32),
            "cd".repeat(32)
        )));
        let whoami = WhoAmI {
            controller_id: "ctl-1".into(),
            agent_id: "agent-7".into(),
            version: "0.1.0".into(),
        };
        assert_eq!(
            round_trip(&whoami),
            r#"{"controller_id":"ctl-1","agent_id":"agent-7","version":"0.1.0"}"#
        );
    }
}
