//! Durable job state: jobs and their stored log frames in one SQLite file
//! (`<data_dir>/agent.db`), so job ids, results and output survive a restart.
//!
//! [`Store`] is a cheap `Clone` handle over one connection. Every operation is `async` and
//! runs its SQL on tokio's blocking pool; the private `foo_blocking` beside each `foo` is
//! its body, run on the calling thread (the unit tests call it directly).
//!
//! Invariants the SQL keeps, whatever the caller does:
//! - a job id is inserted once; a second insert returns the stored job untouched;
//! - a final status (`completed`, `failed`, `rejected`) is never changed;
//! - `purge` never deletes a job that is not final or whose `ttl` has not passed, so a
//!   replayed payload is still recognised as one.
//!
//! Schema (`PRAGMA user_version` 2: version 1, then the columns version 2 adds):
//! ```sql
#![doc = include_str!("schema_v1.sql")]
#![doc = include_str!("schema_v2.sql")]
//! ```

mod frames;
mod job_rows;
mod types;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, OptionalExtension};

pub(crate) use self::types::{
    InsertOutcome, JobOutcome, JobRecord, JobStatus, NewJob, StoredFrame,
};
use crate::db::{self, for_job, SetupError, SqliteHandle, Synchronous};

/// Schema migrations; entry `i` takes the file from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[include_str!("schema_v1.sql"), include_str!("schema_v2.sql")];

/// Everything that can go wrong in the job store. Every variant names the database file or
/// the job it is about; SQL details stay in `source`, for the log rather than the client.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("cannot create job database {}: parent directory does not exist", .path.display())]
    ParentMissing { path: PathBuf },
    #[error("cannot create job database {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open job database {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<rusqlite::Error>,
    },
    #[error("cannot open job database {}: journal mode is {mode:?}, WAL is required", .path.display())]
    NoWal { path: PathBuf, mode: String },
    #[error(
        "job database {} has schema version {found}, this agent supports up to {supported}",
        .path.display()
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("cannot {op}{} in job database {}", for_job(.job_id), .path.display())]
    Sql {
        path: PathBuf,
        op: &'static str,
        job_id: Option<String>,
        #[source]
        source: Box<rusqlite::Error>,
    },
    #[error("job {job_id} not found in job database {}", .path.display())]
    JobNotFound { path: PathBuf, job_id: String },
    #[error("cannot finish job {job_id} with status {status}: not a final status")]
    NotFinal { job_id: String, status: JobStatus },
    #[error("invalid stream {stream:?} in frame {seq} of job {job_id}: expected stdout or stderr")]
    InvalidStream {
        job_id: String,
        seq: i64,
        stream: String,
    },
    #[error("frame {seq} of job {job_id} is already stored")]
    DuplicateFrame { job_id: String, seq: i64 },
    #[error("job database {}: blocking task failed", .path.display())]
    Worker {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

/// A handle on the job database; clones share one connection.
#[derive(Clone)]
pub(crate) struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens the job database at `path`, creating it (mode 0600) and its schema if needed.
    /// The parent directory must exist.
    pub(crate) fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = db::open_read_write(&path, Synchronous::Normal, MIGRATIONS).map_err(
            |error| match error {
                SetupError::ParentMissing => StoreError::ParentMissing { path: path.clone() },
                SetupError::Create(source) => StoreError::Create {
                    path: path.clone(),
                    source,
                },
                SetupError::Sqlite(source) => StoreError::Open {
                    path: path.clone(),
                    source: Box::new(source),
                },
                SetupError::SchemaTooNew { found, supported } => StoreError::SchemaTooNew {
                    path: path.clone(),
                    found,
                    supported,
                },
                SetupError::NoWal { mode } => StoreError::NoWal {
                    path: path.clone(),
                    mode,
                },
            },
        )?;
        Ok(Store {
            inner: Arc::new(Inner {
                path,
                conn: Mutex::new(conn),
            }),
        })
    }

    /// A trivial read, for `/health`: fails when the file is unreadable or locked for
    /// longer than the busy timeout.
    pub(crate) async fn check(&self) -> Result<(), StoreError> {
        self.spawn(|store| store.check_blocking()).await
    }

    /// Blocking twin of [`Store::check`].
    fn check_blocking(&self) -> Result<(), StoreError> {
        self.with_conn(|conn| {
            conn.query_row("SELECT job_id FROM jobs LIMIT 1", [], |_| Ok(()))
                .optional()
                .map_err(self.sql_error("check the database", None))?;
            Ok(())
        })
    }

    fn not_found(&self, job_id: &str) -> StoreError {
        StoreError::JobNotFound {
            path: self.inner.path.clone(),
            job_id: job_id.to_owned(),
        }
    }
}

impl SqliteHandle for Store {
    type Error = StoreError;

    fn db_path(&self) -> &Path {
        &self.inner.path
    }

    fn connection(&self) -> &Mutex<Connection> {
        &self.inner.conn
    }

    fn sql_failure(
        path: PathBuf,
        op: &'static str,
        job_id: Option<String>,
        source: rusqlite::Error,
    ) -> StoreError {
        StoreError::Sql {
            path,
            op,
            job_id,
            source: Box::new(source),
        }
    }

    fn worker_failure(path: PathBuf, source: tokio::task::JoinError) -> StoreError {
        StoreError::Worker { path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn open_creates_private_file_with_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        let store = Store::open(&path).expect("open");
        store.check_blocking().expect("check");
        let mode = std::fs::metadata(&path).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let wal = std::fs::metadata(dir.path().join("agent.db-wal")).expect("stat wal");
        assert_eq!(wal.permissions().mode() & 0o777, 0o600);

        let conn = Connection::open(&path).expect("raw open");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .expect("user_version");
        assert_eq!(version, 2);
        let journal: String = conn
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .expect("journal_mode");
        assert_eq!(journal, "wal");
    }

    #[test]
    fn open_twice_keeps_data_and_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        Store::open(&path).expect("first open");
        Store::open(&path).expect("second open");
    }

    #[test]
    fn a_v1_file_is_migrated_without_touching_its_rows() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        let conn = db::open_read_write(&path, Synchronous::Normal, &MIGRATIONS[..1]).expect("v1");
        conn.execute(
            "INSERT INTO jobs (job_id, controller_id, command, prompt, payload_json, signature, \
             canonical, ttl, timestamp, created_at_ms, status) \
             VALUES ('old', 'c', 'echo', '', '{}', 'ab', 0, 9, 1, 1, 'completed')",
            [],
        )
        .expect("v1 row");
        drop(conn);
        let store = Store::open(&path).expect("migrate");
        let job = store.get_job_blocking("old").expect("read").expect("kept");
        assert_eq!((job.command.as_str(), job.requested_by), ("echo", None));
    }

    #[test]
    fn missing_parent_names_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("missing").join("agent.db");
        let err = Store::open(&path).expect_err("parent is missing");
        assert!(matches!(err, StoreError::ParentMissing { .. }));
        let message = err.to_string();
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(!path.exists());
    }

    #[test]
    fn newer_schema_is_refused_with_the_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        drop(Store::open(&path).expect("open"));
        let conn = Connection::open(&path).expect("raw open");
        conn.pragma_update(None, "user_version", 7)
            .expect("bump version");
        drop(conn);
        let err = Store::open(&path).expect_err("too new");
        assert!(
            matches!(
                err,
                StoreError::SchemaTooNew {
                    found: 7,
                    supported: 2,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("agent.db"));
    }

    #[test]
    fn not_a_database_is_an_open_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("agent.db");
        std::fs::write(
            &path,
            b"this is not sqlite, just some text long enough to be a header",
        )
        .expect("write");
        let err = Store::open(&path).expect_err("garbage file");
        assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn check_runs_from_async_code() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path().join("agent.db")).expect("open");
        store.check().await.expect("check");
    }
}
