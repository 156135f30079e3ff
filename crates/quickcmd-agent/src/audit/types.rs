//! What the audit log records and what verifying it reports.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

/// What happened. Stored as [`AuditKind::as_str`]; the spelling is part of the hashed
/// content, so a variant's string must never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditKind {
    /// A job submission, accepted or refused (`accepted`, `code`).
    Submission,
    /// A job moved between statuses (`status`, `reason`).
    StateChange,
    /// A job ended (`status`, `exit_code`, output sizes and hashes in `details`).
    Result,
    /// A cancel request (`DELETE /api/v1/jobs/:id`).
    Cancel,
    /// The agent started (config summary in `details`).
    Startup,
    /// The agent stopped cleanly.
    Shutdown,
    /// Jobs the previous process left unfinished were failed at startup.
    Recovery,
    /// Old jobs were purged from the job store.
    Purge,
    /// A read (job status, list, stream) was refused or served.
    Access,
}

impl AuditKind {
    /// Every kind, for parsing.
    pub const ALL: [AuditKind; 9] = [
        AuditKind::Submission,
        AuditKind::StateChange,
        AuditKind::Result,
        AuditKind::Cancel,
        AuditKind::Startup,
        AuditKind::Shutdown,
        AuditKind::Recovery,
        AuditKind::Purge,
        AuditKind::Access,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::Submission => "submission",
            AuditKind::StateChange => "state_change",
            AuditKind::Result => "result",
            AuditKind::Cancel => "cancel",
            AuditKind::Startup => "startup",
            AuditKind::Shutdown => "shutdown",
            AuditKind::Recovery => "recovery",
            AuditKind::Purge => "purge",
            AuditKind::Access => "access",
        }
    }
}

impl fmt::Display for AuditKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that is not an audit event kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown audit event kind {0:?}")]
pub struct ParseAuditKindError(pub String);

impl FromStr for AuditKind {
    type Err = ParseAuditKindError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        AuditKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| ParseAuditKindError(text.to_owned()))
    }
}

impl ToSql for AuditKind {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for AuditKind {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|error| FromSqlError::Other(Box::new(error)))
    }
}

/// One event to record. Build it from [`AuditEvent::new`] and fill what applies:
/// `AuditEvent { job_id: Some(id), ..AuditEvent::new(AuditKind::Cancel) }`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEvent {
    pub kind: AuditKind,
    pub job_id: Option<String>,
    pub controller_id: Option<String>,
    pub remote_addr: Option<String>,
    /// For submissions: whether the job was accepted.
    pub accepted: Option<bool>,
    /// The protocol error code of a refusal (`INVALID_SIGNATURE`, ...).
    pub code: Option<String>,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub command: Option<String>,
    pub prompt: Option<String>,
    pub exit_code: Option<i64>,
    /// Anything else worth keeping (output sizes and hashes, config summary); `Null` when
    /// there is nothing.
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// An event of `kind` with every other field empty.
    pub fn new(kind: AuditKind) -> AuditEvent {
        AuditEvent {
            kind,
            job_id: None,
            controller_id: None,
            remote_addr: None,
            accepted: None,
            code: None,
            status: None,
            reason: None,
            command: None,
            prompt: None,
            exit_code: None,
            details: serde_json::Value::Null,
        }
    }
}

/// A stored event with its place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    /// 1, 2, 3, ... with no gaps.
    pub id: i64,
    /// Unix milliseconds when the row was appended.
    pub time_ms: i64,
    pub kind: AuditKind,
    pub job_id: Option<String>,
    pub controller_id: Option<String>,
    pub remote_addr: Option<String>,
    pub accepted: Option<bool>,
    pub code: Option<String>,
    pub status: Option<String>,
    pub reason: Option<String>,
    pub command: Option<String>,
    pub prompt: Option<String>,
    pub exit_code: Option<i64>,
    pub details: serde_json::Value,
    /// The previous row's `row_hash`; 64 zeros for row 1.
    pub prev_hash: String,
    /// Lowercase hex SHA-256 chaining this row to the previous one (see `audit::chain`).
    pub row_hash: String,
    /// The chain version whose hash rule this row follows: 1 (before v1.1) or 2.
    pub version: i64,
}

impl AuditRow {
    /// The row as JSON, as `audit list --json` prints it and `GET /api/v1/audit/chain`
    /// serves a caller's own rows.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "time": crate::clock::rfc3339_ms(self.time_ms),
            "kind": self.kind.as_str(),
            "job_id": self.job_id,
            "controller_id": self.controller_id,
            "remote_addr": self.remote_addr,
            "accepted": self.accepted,
            "code": self.code,
            "status": self.status,
            "reason": self.reason,
            "command": self.command,
            "prompt": self.prompt,
            "exit_code": self.exit_code,
            "details": self.details,
            "prev_hash": self.prev_hash,
            "row_hash": self.row_hash,
            "version": self.version,
        })
    }
}

/// What [`AuditLog::verify`](super::AuditLog::verify) found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Rows read (all of them, including any after the first bad one).
    pub rows: u64,
    /// The first place the chain breaks; `None` when every row checks out.
    pub first_bad: Option<BadRow>,
    /// The last row's id and hash. The chain cannot show that rows were cut off the end;
    /// comparing this with a head recorded elsewhere (e.g. in the system journal) can.
    pub head: Option<ChainHead>,
}

impl VerifyReport {
    /// Whether the whole chain checks out.
    pub fn is_valid(&self) -> bool {
        self.first_bad.is_none()
    }
}

/// Where and how the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadRow {
    /// The row that fails; for a deleted row, the id that is missing.
    pub id: i64,
    /// A sentence: "row hash does not match its content", "prev_hash does not match row
    /// 41", "row 17 missing (ids jump 16 -> 18)", ...
    pub problem: String,
}

/// The newest row of a chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub id: i64,
    pub row_hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_and_are_unique() {
        for kind in AuditKind::ALL {
            assert_eq!(kind.as_str().parse::<AuditKind>(), Ok(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        let mut names: Vec<_> = AuditKind::ALL.iter().map(|k| k.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), AuditKind::ALL.len());
        assert!("Submission".parse::<AuditKind>().is_err());
    }
}
