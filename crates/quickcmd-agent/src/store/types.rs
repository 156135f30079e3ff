//! The values the job store takes and returns. They are not wire types: the API maps them
//! to the protocol crate's types.

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// The protocol's job status; the store keeps its spelling (`"pending"`, ...).
pub(crate) use quickcmd_protocol::JobStatus;

/// A text column that is not one of the five job statuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown job status {0:?}")]
pub(crate) struct ParseJobStatusError(pub String);

/// The SQL face of a [`JobStatus`]: its protocol spelling as TEXT.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SqlStatus(pub(crate) JobStatus);

impl ToSql for SqlStatus {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.0.as_str()))
    }
}

impl FromSql for SqlStatus {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        JobStatus::parse(text)
            .map(SqlStatus)
            .ok_or_else(|| FromSqlError::Other(Box::new(ParseJobStatusError(text.to_owned()))))
    }
}

/// A job as accepted (or rejected) at submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewJob {
    pub job_id: String,
    pub controller_id: String,
    pub command: String,
    pub prompt: String,
    /// The signed payload bytes, as text.
    pub payload_json: String,
    /// The hex HMAC the controller sent.
    pub signature: String,
    /// Whether the signature verified over the Go-canonical form rather than the raw bytes.
    pub canonical: bool,
    /// The `sandbox` extension field as JSON, when the payload had one.
    pub sandbox_json: Option<String>,
    /// Unix seconds after which the job must not start; its id is remembered until then.
    pub ttl: i64,
    /// Unix seconds, as signed by the controller.
    pub timestamp: i64,
    pub created_at_ms: i64,
    /// `Pending` for an accepted job, `Rejected` for a refused one.
    pub status: JobStatus,
    pub reason: Option<String>,
    pub error: Option<String>,
    /// The payload's `requested_by` (v1.1).
    pub requested_by: Option<String>,
}

/// A stored job: what was submitted plus what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobRecord {
    pub job_id: String,
    pub controller_id: String,
    pub command: String,
    pub prompt: String,
    pub payload_json: String,
    pub signature: String,
    pub canonical: bool,
    pub sandbox_json: Option<String>,
    pub ttl: i64,
    pub timestamp: i64,
    pub created_at_ms: i64,
    pub status: JobStatus,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub started_at_ms: Option<i64>,
    pub ended_at_ms: Option<i64>,
    pub exit_code: Option<i64>,
    pub sandbox_id: Option<String>,
    pub stdout_bytes: i64,
    pub stderr_bytes: i64,
    pub stdout_sha256: Option<String>,
    pub stderr_sha256: Option<String>,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    pub requested_by: Option<String>,
}

/// How a job ended; `status` must be final.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JobOutcome {
    pub status: JobStatus,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub exit_code: i64,
    pub ended_at_ms: i64,
    /// Replaces the stored sandbox id when `Some`; `None` keeps the one `mark_running` set.
    pub sandbox_id: Option<String>,
    pub stdout_bytes: i64,
    pub stderr_bytes: i64,
    pub stdout_sha256: String,
    pub stderr_sha256: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
}

/// One stored log frame; `(job_id, seq)` is unique.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredFrame {
    pub seq: i64,
    /// `"stdout"` or `"stderr"`.
    pub stream: String,
    /// The exact bytes the command wrote (for rows stored before schema v2, their text).
    pub data: Vec<u8>,
    pub timestamp_ms: i64,
}

/// What `insert_job` did.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(
    clippy::large_enum_variant,
    reason = "made once per submission and matched at once; boxing would only cost callers a deref"
)]
pub(crate) enum InsertOutcome {
    Inserted,
    /// A job with this id was already stored; it is returned unchanged. Whether the new
    /// submission is an idempotent retry or a `DUPLICATE_JOB` is the caller's call.
    Exists(JobRecord),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_through_sql_text() {
        let conn = rusqlite::Connection::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
        for status in JobStatus::ALL {
            let back: SqlStatus = conn
                .query_row("SELECT ?1", [SqlStatus(status)], |row| row.get(0))
                .unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(back.0, status);
        }
        let bogus = conn.query_row("SELECT 'Pending'", [], |row| row.get::<_, SqlStatus>(0));
        assert!(
            bogus.is_err_and(|e| e.to_string().contains("unknown job status \"Pending\"")),
            "a misspelled status must not load"
        );
    }

    #[test]
    fn final_statuses() {
        let finals: Vec<_> = JobStatus::ALL
            .into_iter()
            .filter(|s| s.is_final())
            .collect();
        assert_eq!(
            finals,
            [JobStatus::Completed, JobStatus::Failed, JobStatus::Rejected]
        );
    }
}
