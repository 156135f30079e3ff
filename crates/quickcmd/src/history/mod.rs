//! The controller's own audit trail: every submission and its outcome in a SQLite file, so
//! an operator can later show who ran what where. SQLite is blocking, so every call runs on
//! tokio's blocking pool.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, OptionalExtension};

mod invocation;
mod migrate;
mod sql;
mod user;
mod witness;

pub use invocation::{Invocation, InvocationTarget};
use serde::Serialize;
use sql::{open_blocking, row_from_sql, COLUMNS};
pub use user::{default_requested_by, local_user};
pub use witness::StoredWitness;

/// Why the history could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("history database {path}: {message}")]
    Open { path: PathBuf, message: String },
    #[error("history database {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("history database task failed: {0}")]
    Task(String),
}

/// Every status a history row can hold, for `quickcmd history --status`.
pub const STATUSES: [&str; 10] = [
    "submitting",
    "pending",
    "running",
    "completed",
    "failed",
    "rejected",
    "refused",
    "unreachable",
    "error",
    "cancelled",
];

/// A submission about to be sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewRun {
    pub job_id: String,
    pub agent: String,
    pub agent_url: String,
    pub controller_id: String,
    /// The local user who ran us.
    pub user: String,
    pub command: String,
    pub prompt: String,
    /// SHA-256 of the signed payload bytes; with `signature`, proof of what was sent.
    pub payload_sha256: String,
    pub signature: String,
    /// The invocation this job belongs to.
    pub run_id: Option<String>,
    /// Who the job was signed for (v1.1 `requested_by`).
    pub requested_by: Option<String>,
}

/// What became of a submission.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunOutcome {
    /// One of [`STATUSES`]: a job status (`pending` … `rejected`) or a controller-side one:
    /// `submitting` (not yet answered), `refused` (the agent said no), `unreachable`,
    /// `error`, `cancelled`.
    pub status: String,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub stdout_bytes: Option<u64>,
    pub stderr_bytes: Option<u64>,
    pub stdout_sha256: Option<String>,
    pub stderr_sha256: Option<String>,
}

/// One row of `quickcmd history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryRow {
    pub job_id: String,
    pub agent: String,
    pub agent_url: String,
    pub controller_id: String,
    pub user: String,
    pub command: String,
    pub prompt: String,
    pub payload_sha256: String,
    pub signature: String,
    /// RFC 3339 UTC.
    pub submitted_at: String,
    pub status: String,
    pub exit_code: Option<i64>,
    pub reason: Option<String>,
    pub error: Option<String>,
    pub started_at: Option<String>,
    pub ended_at: Option<String>,
    pub duration_ms: Option<i64>,
    pub stdout_bytes: Option<u64>,
    pub stderr_bytes: Option<u64>,
    pub stdout_sha256: Option<String>,
    pub stderr_sha256: Option<String>,
    pub updated_at: String,
    /// The invocation (`quickcmd run`, `submit`, `rerun`) the job belongs to; none for
    /// rows written before runs were recorded.
    pub run_id: Option<String>,
    /// Who the job was signed for; `None` in rows written before it was recorded.
    pub requested_by: Option<String>,
}

impl HistoryRow {
    /// Whether the row's status can still change (the job had not ended when written).
    pub fn is_open(&self) -> bool {
        matches!(self.status.as_str(), "submitting" | "pending" | "running")
    }
}

/// Which rows `query` returns, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryFilter {
    pub limit: u32,
    pub agent: Option<String>,
    pub status: Option<String>,
    pub job_id: Option<String>,
    pub run_id: Option<String>,
}

impl Default for HistoryFilter {
    fn default() -> HistoryFilter {
        HistoryFilter {
            limit: 20,
            agent: None,
            status: None,
            job_id: None,
            run_id: None,
        }
    }
}

/// The history database. Cheap to clone; one connection, used from the blocking pool.
#[derive(Debug, Clone)]
pub struct History {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
}

pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl History {
    /// Opens (creating, with a private folder and file) the database at `path`.
    pub async fn open(path: &Path) -> Result<History, HistoryError> {
        let path = path.to_path_buf();
        let task_path = path.clone();
        let connection = tokio::task::spawn_blocking(move || open_blocking(&task_path))
            .await
            .map_err(|e| HistoryError::Task(e.to_string()))??;
        Ok(History {
            path,
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn call<T, F>(&self, work: F) -> Result<T, HistoryError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = self.connection.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            // A panic while holding the lock leaves SQLite consistent; keep going.
            let guard = connection.lock().unwrap_or_else(|p| p.into_inner());
            work(&guard).map_err(|source| HistoryError::Sql { path, source })
        })
        .await
        .map_err(|e| HistoryError::Task(e.to_string()))?
    }

    /// Records a submission before it is sent, with status `submitting`.
    pub async fn record_submission(&self, run: NewRun) -> Result<(), HistoryError> {
        self.call(move |connection| {
            let now = now_rfc3339();
            connection.execute(
                "INSERT INTO runs (job_id, agent, agent_url, controller_id, user, command, \
                 prompt, payload_sha256, signature, submitted_at, status, updated_at, run_id, \
                 requested_by) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'submitting', ?10, ?11, ?12)",
                params![
                    run.job_id,
                    run.agent,
                    run.agent_url,
                    run.controller_id,
                    run.user,
                    run.command,
                    run.prompt,
                    run.payload_sha256,
                    run.signature,
                    now,
                    run.run_id,
                    run.requested_by
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Records what became of job `job_id` on the agent at `agent_url`. Fields left `None`
    /// keep what they held.
    pub async fn record_outcome(
        &self,
        job_id: &str,
        agent_url: &str,
        outcome: RunOutcome,
    ) -> Result<bool, HistoryError> {
        let (job_id, agent_url) = (job_id.to_string(), agent_url.to_string());
        self.call(move |connection| {
            let to_i64 = |v: Option<u64>| v.map(|v| i64::try_from(v).unwrap_or(i64::MAX));
            let changed = connection.execute(
                "UPDATE runs SET status = ?3, exit_code = COALESCE(?4, exit_code), \
                 reason = COALESCE(?5, reason), error = COALESCE(?6, error), \
                 started_at = COALESCE(?7, started_at), ended_at = COALESCE(?8, ended_at), \
                 duration_ms = COALESCE(?9, duration_ms), \
                 stdout_bytes = COALESCE(?10, stdout_bytes), \
                 stderr_bytes = COALESCE(?11, stderr_bytes), \
                 stdout_sha256 = COALESCE(?12, stdout_sha256), \
                 stderr_sha256 = COALESCE(?13, stderr_sha256), updated_at = ?14 \
                 WHERE job_id = ?1 AND agent_url = ?2",
                params![
                    job_id,
                    agent_url,
                    outcome.status,
                    outcome.exit_code,
                    outcome.reason,
                    outcome.error,
                    outcome.started_at,
                    outcome.ended_at,
                    outcome.duration_ms,
                    to_i64(outcome.stdout_bytes),
                    to_i64(outcome.stderr_bytes),
                    outcome.stdout_sha256,
                    outcome.stderr_sha256,
                    now_rfc3339()
                ],
            )?;
            Ok(changed > 0)
        })
        .await
    }

    /// Rows matching `filter`, newest first.
    pub async fn query(&self, filter: HistoryFilter) -> Result<Vec<HistoryRow>, HistoryError> {
        self.call(move |connection| {
            let sql = format!(
                "SELECT {COLUMNS} FROM runs WHERE (?1 IS NULL OR agent = ?1) \
                 AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR job_id = ?3) \
                 AND (?5 IS NULL OR run_id = ?5) \
                 ORDER BY submitted_at DESC, id DESC LIMIT ?4"
            );
            let mut statement = connection.prepare(&sql)?;
            let rows = statement.query_map(
                params![
                    filter.agent,
                    filter.status,
                    filter.job_id,
                    filter.limit,
                    filter.run_id
                ],
                row_from_sql,
            )?;
            rows.collect()
        })
        .await
    }

    /// The most recent row for `job_id`, if we ever submitted it.
    pub async fn find_job(&self, job_id: &str) -> Result<Option<HistoryRow>, HistoryError> {
        let job_id = job_id.to_string();
        self.call(move |connection| {
            connection
                .query_row(
                    &format!(
                        "SELECT {COLUMNS} FROM runs WHERE job_id = ?1 ORDER BY id DESC LIMIT 1"
                    ),
                    params![job_id],
                    row_from_sql,
                )
                .optional()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(job_id: &str, agent: &str) -> NewRun {
        NewRun {
            job_id: job_id.into(),
            agent: agent.into(),
            agent_url: format!("https://{agent}:8443/"),
            controller_id: "ctl".into(),
            user: "alice".into(),
            command: "echo hi".into(),
            prompt: "say hi".into(),
            payload_sha256: "ab".into(),
            signature: "cd".into(),
            run_id: Some("r1".into()),
            requested_by: Some("alice@laptop".into()),
        }
    }

    #[tokio::test]
    async fn a_history_without_requested_by_gains_the_column_and_keeps_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.db");
        {
            let connection = Connection::open(&path).expect("open");
            connection.execute_batch(
                "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, \
                 agent TEXT NOT NULL, agent_url TEXT NOT NULL, controller_id TEXT NOT NULL, \
                 user TEXT NOT NULL, command TEXT NOT NULL, prompt TEXT NOT NULL, \
                 payload_sha256 TEXT NOT NULL, signature TEXT NOT NULL, submitted_at TEXT NOT NULL, \
                 status TEXT NOT NULL, exit_code INTEGER, reason TEXT, error TEXT, started_at TEXT, \
                 ended_at TEXT, duration_ms INTEGER, stdout_bytes INTEGER, stderr_bytes INTEGER, \
                 stdout_sha256 TEXT, stderr_sha256 TEXT, updated_at TEXT NOT NULL, \
                 UNIQUE (job_id, agent_url)); \
                 INSERT INTO runs (job_id, agent, agent_url, controller_id, user, command, prompt, \
                 payload_sha256, signature, submitted_at, status, updated_at) VALUES ('old', 'a', \
                 'https://a/', 'c', 'bob', 'true', 'true', 'ab', 'cd', '2024-01-01T00:00:00Z', \
                 'completed', '2024-01-01T00:00:00Z'); PRAGMA user_version = 1;",
            )
            .expect("an older history");
        }
        for _ in 0..2 {
            let history = History::open(&path).await.expect("open migrates, twice");
            let rows = history
                .query(HistoryFilter::default())
                .await
                .expect("query");
            assert_eq!(rows.len(), 1);
            assert_eq!(
                (rows[0].job_id.as_str(), rows[0].requested_by.as_deref()),
                ("old", None)
            );
        }
        let history = History::open(&path).await.expect("open");
        history
            .record_submission(run("new", "a"))
            .await
            .expect("insert");
        let rows = history
            .query(HistoryFilter {
                job_id: Some("new".into()),
                ..HistoryFilter::default()
            })
            .await
            .expect("query");
        assert_eq!(rows[0].requested_by.as_deref(), Some("alice@laptop"));
    }

    #[tokio::test]
    async fn history_files_are_owner_only_also_when_an_older_file_was_looser() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.db");
        std::fs::write(&path, b"").expect("an empty older file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let history = History::open(&path).await.expect("open");
        history
            .record_submission(run("j1", "a"))
            .await
            .expect("insert");
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        for file in [path.clone(), wal.into()] {
            let mode = std::fs::metadata(&file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
    }

    #[tokio::test]
    async fn records_and_queries_runs() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("history.db");
        let history = History::open(&path).await.expect("open");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        history
            .record_submission(run("j1", "a"))
            .await
            .expect("insert");
        history
            .record_submission(run("j2", "b"))
            .await
            .expect("insert");
        let updated = history
            .record_outcome(
                "j1",
                "https://a:8443/",
                RunOutcome {
                    status: "completed".into(),
                    exit_code: Some(3),
                    duration_ms: Some(1200),
                    stdout_bytes: Some(3),
                    stdout_sha256: Some("ff".into()),
                    ..RunOutcome::default()
                },
            )
            .await
            .expect("update");
        assert!(updated);
        assert!(!history
            .record_outcome("nope", "x", RunOutcome::default())
            .await
            .expect("update"));

        let all = history
            .query(HistoryFilter::default())
            .await
            .expect("query");
        assert_eq!(all.len(), 2);
        assert_eq!(all[0].job_id, "j2", "newest first");
        assert_eq!(all[0].status, "submitting");
        let only_a = history
            .query(HistoryFilter {
                agent: Some("a".into()),
                ..HistoryFilter::default()
            })
            .await
            .expect("query");
        assert_eq!(only_a.len(), 1);
        assert_eq!(only_a[0].exit_code, Some(3));
        assert_eq!(only_a[0].stdout_bytes, Some(3));
        assert_eq!(only_a[0].user, "alice");
        let completed = history
            .query(HistoryFilter {
                status: Some("completed".into()),
                limit: 1,
                ..HistoryFilter::default()
            })
            .await
            .expect("query");
        assert_eq!(completed.len(), 1);
        let found = history.find_job("j2").await.expect("find");
        assert_eq!(found.map(|r| r.agent), Some("b".to_string()));
        assert!(history.find_job("j9").await.expect("find").is_none());

        // Reopening keeps everything.
        drop(history);
        let again = History::open(&path).await.expect("reopen");
        assert_eq!(
            again
                .query(HistoryFilter::default())
                .await
                .expect("query")
                .len(),
            2
        );
    }

    #[test]
    fn local_user_is_never_empty() {
        assert!(!local_user().is_empty());
    }
}
