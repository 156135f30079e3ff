//! The tamper-evident audit log: one append-only, hash-chained SQLite row per event
//! (submissions accepted or refused, state changes, results, cancels, startup).
//!
//! Each row stores the previous row's hash and its own; a version-2 row's hash links a
//! digest of its content, `SHA-256("v2\n" prev_hash "\n" digest)`, so a segment can be
//! checked link by link without the content (format in [`chain`]). [`AuditLog::verify`]
//! walks the chain and names the first row that was edited, deleted or moved. Triggers
//! refuse `UPDATE` and `DELETE` as well, but anyone holding the file can drop them; the
//! chain is the guarantee.
//!
//! Limits: the chain has no key, so someone who can write the file can rewrite it *from
//! some row to the end* with fresh hashes, or cut rows off the end. Both change the head;
//! [`VerifyReport::head`] is there to compare with a copy kept elsewhere, and every
//! controller keeps one: each job result carries a witness of its audit row
//! ([`AuditLog::result_row`]), and [`AuditLog::segment`] serves the chain to check it.
//!
//! Appends are serialised, in-process by the handle's lock and across processes by an
//! `IMMEDIATE` transaction that reads the last row's hash, so the chain never forks.
//!
//! Schema (`PRAGMA user_version` 2: version 1, then the chain-version migration):
//! ```sql
#![doc = include_str!("schema_v1.sql")]
#![doc = include_str!("schema_v2_chain.sql")]
//! ```

pub mod chain;
mod types;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::types::{Type, Value, ValueRef};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use crate::db::{self, for_job, SetupError, SqliteHandle, Synchronous};

pub use self::types::{
    AuditEvent, AuditKind, AuditRow, BadRow, ChainHead, ParseAuditKindError, VerifyReport,
};

/// Schema migrations; entry `i` takes the file from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    include_str!("schema_v1.sql"),
    include_str!("schema_v2_chain.sql"),
];
const SCHEMA_VERSION: i64 = 2;

/// The first schema with a `version` column.
const SCHEMA_WITH_CHAIN_VERSION: i64 = 2;

/// Everything that can go wrong with the audit log. Every variant names the file; SQL
/// details stay in `source`.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot create audit log {}: parent directory does not exist", .path.display())]
    ParentMissing { path: PathBuf },
    #[error("cannot create audit log {}", .path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit log {} does not exist", .path.display())]
    Missing { path: PathBuf },
    #[error("cannot access audit log {}", .path.display())]
    Access {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open audit log {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<rusqlite::Error>,
    },
    #[error("cannot open audit log {}: journal mode is {mode:?}, WAL is required", .path.display())]
    NoWal { path: PathBuf, mode: String },
    #[error(
        "audit log {} has schema version {found}, this agent supports up to {supported}",
        .path.display()
    )]
    SchemaTooNew {
        path: PathBuf,
        found: i64,
        supported: i64,
    },
    #[error("{} is not an audit log (it has no audit schema)", .path.display())]
    NotAnAuditLog { path: PathBuf },
    #[error("cannot append {kind} event{} to audit log {}", for_job(.job_id), .path.display())]
    Append {
        path: PathBuf,
        kind: AuditKind,
        job_id: Option<String>,
        #[source]
        source: Box<rusqlite::Error>,
    },
    #[error("cannot serialize the details of a {kind} event for audit log {}", .path.display())]
    Details {
        path: PathBuf,
        kind: AuditKind,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot {op}{} in audit log {}", for_job(.job_id), .path.display())]
    Sql {
        path: PathBuf,
        op: &'static str,
        job_id: Option<String>,
        #[source]
        source: Box<rusqlite::Error>,
    },
    #[error("audit log {}: blocking task failed", .path.display())]
    Worker {
        path: PathBuf,
        #[source]
        source: tokio::task::JoinError,
    },
}

fn setup_error(path: &Path, error: SetupError) -> AuditError {
    let path = path.to_path_buf();
    match error {
        SetupError::ParentMissing => AuditError::ParentMissing { path },
        SetupError::Create(source) => AuditError::Create { path, source },
        SetupError::Sqlite(source) => AuditError::Open {
            path,
            source: Box::new(source),
        },
        SetupError::SchemaTooNew { found, supported } => AuditError::SchemaTooNew {
            path,
            found,
            supported,
        },
        SetupError::NoWal { mode } => AuditError::NoWal { path, mode },
    }
}

/// A handle on the audit log; clones share one connection.
#[derive(Clone)]
pub struct AuditLog {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    conn: Mutex<Connection>,
    /// Whether the file has the `version` column: always for a writer (it migrates), not
    /// for a read-only open of a file an older agent wrote.
    has_version: bool,
    /// The newest row's id, 0 when empty: kept for the metrics, so a scrape reads no file.
    head_seq: AtomicI64,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

/// The columns `row_from_sql` reads, in its order.
fn select_columns(has_version: bool) -> String {
    chain::chain_select(has_version)
}

fn row_from_sql(row: &Row<'_>) -> rusqlite::Result<AuditRow> {
    let details: String = row.get(13)?;
    let details = serde_json::from_str(&details).map_err(|error| {
        rusqlite::Error::FromSqlConversionFailure(13, Type::Text, Box::new(error))
    })?;
    Ok(AuditRow {
        id: row.get(0)?,
        time_ms: row.get(1)?,
        kind: row.get(2)?,
        job_id: row.get(3)?,
        controller_id: row.get(4)?,
        remote_addr: row.get(5)?,
        accepted: row.get(6)?,
        code: row.get(7)?,
        status: row.get(8)?,
        reason: row.get(9)?,
        command: row.get(10)?,
        prompt: row.get(11)?,
        exit_code: row.get(12)?,
        details,
        prev_hash: row.get(14)?,
        row_hash: row.get(15)?,
        version: row.get(16)?,
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
        })
}

fn text(value: &Option<String>) -> Value {
    value.clone().map_or(Value::Null, Value::Text)
}

fn value_ref(value: &Value) -> ValueRef<'_> {
    ValueRef::from(value)
}

impl AuditLog {
    /// Opens the audit log at `path` for appending, creating it (mode 0600) and its schema
    /// if needed. The parent directory must exist.
    pub fn open(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref();
        let conn = db::open_read_write(path, Synchronous::Full, MIGRATIONS)
            .map_err(|error| setup_error(path, error))?;
        AuditLog::from_connection(path, conn, true)
    }

    /// Opens an existing audit log for reading only (`verify`, `list`), as the CLI does.
    /// Never creates a file: a missing one is [`AuditError::Missing`]. Appending through
    /// this handle fails.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<AuditLog, AuditError> {
        let path = path.as_ref();
        let (conn, has_version) = open_reader(path)?;
        AuditLog::from_connection(path, conn, has_version)
    }

    fn from_connection(
        path: &Path,
        conn: Connection,
        has_version: bool,
    ) -> Result<AuditLog, AuditError> {
        let head_seq: i64 = conn
            .query_row("SELECT COALESCE(MAX(id), 0) FROM audit_log", [], |row| {
                row.get(0)
            })
            .map_err(|source| AuditError::Sql {
                path: path.to_path_buf(),
                op: "read the head",
                job_id: None,
                source: Box::new(source),
            })?;
        Ok(AuditLog {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                conn: Mutex::new(conn),
                has_version,
                head_seq: AtomicI64::new(head_seq),
            }),
        })
    }

    /// The newest row's id (0 for an empty log) as of this handle's last append.
    pub fn head_seq(&self) -> i64 {
        self.inner.head_seq.load(Ordering::Relaxed)
    }

    /// The file this handle reads and writes.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Appends one event and returns its row id. The row is durable (`synchronous=FULL`)
    /// when this returns.
    pub async fn append(&self, event: AuditEvent) -> Result<i64, AuditError> {
        Ok(self.append_head(event).await?.id)
    }

    /// [`AuditLog::append`], returning the new row's id and hash (what a witness names).
    pub async fn append_head(&self, event: AuditEvent) -> Result<ChainHead, AuditError> {
        self.spawn(move |log| log.append_blocking(event)).await
    }

    /// Blocking twin of [`AuditLog::append_head`].
    fn append_blocking(&self, event: AuditEvent) -> Result<ChainHead, AuditError> {
        let path = &self.inner.path;
        let details =
            serde_json::to_string(&event.details).map_err(|source| AuditError::Details {
                path: path.clone(),
                kind: event.kind,
                source,
            })?;
        let sql = |source| AuditError::Append {
            path: path.clone(),
            kind: event.kind,
            job_id: event.job_id.clone(),
            source: Box::new(source),
        };
        self.with_conn(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(sql)?;
            let last: Option<(i64, String)> = tx
                .query_row(
                    "SELECT id, row_hash FROM audit_log ORDER BY id DESC LIMIT 1",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .map_err(sql)?;
            let (id, prev_hash) = match last {
                // Saturating: a forged row at i64::MAX makes the insert fail, not panic.
                Some((last_id, last_hash)) => (last_id.saturating_add(1), last_hash),
                None => (1, chain::GENESIS_HASH.to_owned()),
            };
            let values: [Value; 15] = [
                Value::Integer(id),
                Value::Integer(now_ms()),
                Value::Text(event.kind.as_str().to_owned()),
                text(&event.job_id),
                text(&event.controller_id),
                text(&event.remote_addr),
                event
                    .accepted
                    .map_or(Value::Null, |accepted| Value::Integer(accepted.into())),
                text(&event.code),
                text(&event.status),
                text(&event.reason),
                text(&event.command),
                text(&event.prompt),
                event.exit_code.map_or(Value::Null, Value::Integer),
                Value::Text(details),
                Value::Text(prev_hash.clone()),
            ];
            let row_hash = chain::row_hash_current(&prev_hash, &values.each_ref().map(value_ref));
            tx.execute(
                &format!(
                    "INSERT INTO audit_log ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, \
                     ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
                    select_columns(true)
                ),
                rusqlite::params_from_iter(values.into_iter().chain([
                    Value::Text(row_hash.clone()),
                    Value::Integer(chain::CURRENT_VERSION),
                ])),
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            self.inner.head_seq.fetch_max(id, Ordering::Relaxed);
            Ok(ChainHead { id, row_hash })
        })
    }

    /// Walks the whole chain, one row at a time (constant memory), and reports the first
    /// row that does not check out. Blocking: from async code, call it inside
    /// `spawn_blocking`.
    ///
    /// It reads through its own read-only connection, so appends through this handle are
    /// not held up, and it checks one consistent snapshot of the file.
    pub fn verify(&self) -> Result<VerifyReport, AuditError> {
        let (conn, has_version) = open_reader(&self.inner.path)?;
        chain::verify(&conn, has_version).map_err(self.sql_error("verify the chain", None))
    }

    /// Rows `from..=to` that exist, oldest first, for `GET /api/v1/audit/chain`: links,
    /// digest and version of each, and the full row (as [`AuditRow::to_json`]) only where
    /// the row's `controller_id` is `caller`. The caller bounds the range.
    pub async fn segment(
        &self,
        from: u64,
        to: u64,
        caller: String,
    ) -> Result<Vec<quickcmd_protocol::ChainRow>, AuditError> {
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let to = i64::try_from(to).unwrap_or(i64::MAX);
        self.spawn(move |log| {
            let sql = log.sql_error("read a chain segment", None);
            log.with_conn(|conn| {
                let rows = chain::segment(conn, log.inner.has_version, from, to).map_err(&sql)?;
                let own: Vec<i64> = rows
                    .iter()
                    .filter(|row| row.controller_id.as_deref() == Some(caller.as_str()))
                    .filter_map(|row| i64::try_from(row.chain.seq).ok())
                    .collect();
                let mut full = std::collections::HashMap::new();
                if !own.is_empty() {
                    let mut statement = conn
                        .prepare_cached(&format!(
                            "SELECT {} FROM audit_log WHERE id BETWEEN ?1 AND ?2 \
                             AND controller_id = ?3 ORDER BY id",
                            select_columns(log.inner.has_version)
                        ))
                        .map_err(&sql)?;
                    let found = statement
                        .query_map(params![from, to, caller], row_from_sql)
                        .map_err(&sql)?;
                    for row in found {
                        let row = row.map_err(&sql)?;
                        full.insert(row.id, row.to_json());
                    }
                }
                Ok(rows
                    .into_iter()
                    .map(|mut row| {
                        let id = i64::try_from(row.chain.seq).unwrap_or(0);
                        row.chain.row = full.remove(&id);
                        row.chain
                    })
                    .collect())
            })
        })
        .await
    }

    /// The newest `result` row of `job_id`: the row a job's witness names.
    pub async fn result_row(&self, job_id: String) -> Result<Option<ChainHead>, AuditError> {
        self.spawn(move |log| {
            let sql = log.sql_error("find the result row", Some(&job_id));
            log.with_conn(|conn| {
                conn.query_row(
                    "SELECT id, row_hash FROM audit_log WHERE job_id = ?1 AND kind = ?2 \
                     ORDER BY id DESC LIMIT 1",
                    params![job_id, AuditKind::Result],
                    |row| {
                        Ok(ChainHead {
                            id: row.get(0)?,
                            row_hash: row.get(1)?,
                        })
                    },
                )
                .optional()
                .map_err(&sql)
            })
        })
        .await
    }

    /// The newest `limit` rows, returned oldest first (ascending id, like `tail`).
    pub fn list(&self, limit: usize) -> Result<Vec<AuditRow>, AuditError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = self.sql_error("list events", None);
        self.with_conn(|conn| {
            let mut statement = conn
                .prepare_cached(&format!(
                    "SELECT * FROM (SELECT {} FROM audit_log ORDER BY id DESC LIMIT ?1) \
                     ORDER BY id",
                    select_columns(self.inner.has_version)
                ))
                .map_err(&sql)?;
            let rows = statement
                .query_map(params![limit], row_from_sql)
                .map_err(&sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&sql)?;
            Ok(rows)
        })
    }

    /// Every row about `job_id`, oldest first.
    pub fn list_for_job(&self, job_id: &str) -> Result<Vec<AuditRow>, AuditError> {
        let sql = self.sql_error("list events", Some(job_id));
        self.with_conn(|conn| {
            let mut statement = conn
                .prepare_cached(&format!(
                    "SELECT {} FROM audit_log WHERE job_id = ?1 ORDER BY id",
                    select_columns(self.inner.has_version)
                ))
                .map_err(&sql)?;
            let rows = statement
                .query_map(params![job_id], row_from_sql)
                .map_err(&sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&sql)?;
            Ok(rows)
        })
    }

    /// A trivial read, for `/health`.
    pub async fn check(&self) -> Result<(), AuditError> {
        self.spawn(|log| log.check_blocking()).await
    }

    /// Blocking twin of [`AuditLog::check`].
    fn check_blocking(&self) -> Result<(), AuditError> {
        self.with_conn(|conn| {
            conn.query_row(
                "SELECT id FROM audit_log ORDER BY id DESC LIMIT 1",
                [],
                |_| Ok(()),
            )
            .optional()
            .map_err(self.sql_error("check the database", None))?;
            Ok(())
        })
    }
}

/// A read-only connection to an existing audit log of a schema this agent knows, and
/// whether it has the `version` column yet (a file an older agent wrote has not).
fn open_reader(path: &Path) -> Result<(Connection, bool), AuditError> {
    match std::fs::metadata(path) {
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(AuditError::Missing {
                path: path.to_path_buf(),
            })
        }
        Err(source) => {
            return Err(AuditError::Access {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    let (conn, version) =
        db::open_read_only(path, SCHEMA_VERSION).map_err(|error| setup_error(path, error))?;
    if version == 0 {
        return Err(AuditError::NotAnAuditLog {
            path: path.to_path_buf(),
        });
    }
    Ok((conn, version >= SCHEMA_WITH_CHAIN_VERSION))
}

impl SqliteHandle for AuditLog {
    type Error = AuditError;

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
    ) -> AuditError {
        AuditError::Sql {
            path,
            op,
            job_id,
            source: Box::new(source),
        }
    }

    fn worker_failure(path: PathBuf, source: tokio::task::JoinError) -> AuditError {
        AuditError::Worker { path, source }
    }
}

#[cfg(test)]
mod tests;
