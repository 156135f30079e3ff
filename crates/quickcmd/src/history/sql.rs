//! The history's SQLite side: the schema, the column list and how a row is read.

use std::path::Path;

use rusqlite::Connection;

use super::{HistoryError, HistoryRow};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id         TEXT NOT NULL,
    agent          TEXT NOT NULL,
    agent_url      TEXT NOT NULL,
    controller_id  TEXT NOT NULL,
    user           TEXT NOT NULL,
    command        TEXT NOT NULL,
    prompt         TEXT NOT NULL,
    payload_sha256 TEXT NOT NULL,
    signature      TEXT NOT NULL,
    submitted_at   TEXT NOT NULL,
    status         TEXT NOT NULL,
    exit_code      INTEGER,
    reason         TEXT,
    error          TEXT,
    started_at     TEXT,
    ended_at       TEXT,
    duration_ms    INTEGER,
    stdout_bytes   INTEGER,
    stderr_bytes   INTEGER,
    stdout_sha256  TEXT,
    stderr_sha256  TEXT,
    updated_at     TEXT NOT NULL,
    UNIQUE (job_id, agent_url)
);
CREATE INDEX IF NOT EXISTS runs_by_time ON runs (submitted_at);
CREATE INDEX IF NOT EXISTS runs_by_agent ON runs (agent, submitted_at);
PRAGMA user_version = 1;
";

pub(super) const COLUMNS: &str = "job_id, agent, agent_url, controller_id, user, command, prompt, \
    payload_sha256, signature, submitted_at, status, exit_code, reason, error, started_at, \
    ended_at, duration_ms, stdout_bytes, stderr_bytes, stdout_sha256, stderr_sha256, updated_at, \
    run_id, requested_by";

pub(super) fn row_from_sql(row: &rusqlite::Row<'_>) -> rusqlite::Result<HistoryRow> {
    let to_u64 = |v: Option<i64>| v.map(|v| u64::try_from(v).unwrap_or(0));
    Ok(HistoryRow {
        job_id: row.get(0)?,
        agent: row.get(1)?,
        agent_url: row.get(2)?,
        controller_id: row.get(3)?,
        user: row.get(4)?,
        command: row.get(5)?,
        prompt: row.get(6)?,
        payload_sha256: row.get(7)?,
        signature: row.get(8)?,
        submitted_at: row.get(9)?,
        status: row.get(10)?,
        exit_code: row.get(11)?,
        reason: row.get(12)?,
        error: row.get(13)?,
        started_at: row.get(14)?,
        ended_at: row.get(15)?,
        duration_ms: row.get(16)?,
        stdout_bytes: to_u64(row.get(17)?),
        stderr_bytes: to_u64(row.get(18)?),
        stdout_sha256: row.get(19)?,
        stderr_sha256: row.get(20)?,
        updated_at: row.get(21)?,
        run_id: row.get(22)?,
        requested_by: row.get(23)?,
    })
}

pub(super) fn open_blocking(path: &Path) -> Result<Connection, HistoryError> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    let open_error = |message: String| HistoryError::Open {
        path: path.to_path_buf(),
        message,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| open_error(format!("cannot create {}: {e}", parent.display())))?;
        }
    }
    let sql = |source| HistoryError::Sql {
        path: path.to_path_buf(),
        source,
    };
    // Commands and their output hashes are nobody else's business: the file is created
    // owner-only before SQLite opens it (SQLite gives its WAL and shared-memory files the
    // same mode), so it is never readable by others, not even for an instant; an older,
    // looser file is tightened.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|e| open_error(format!("cannot create: {e}")))?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| open_error(format!("cannot restrict permissions: {e}")))?;
    drop(file);
    let connection = Connection::open(path).map_err(sql)?;
    connection
        .busy_timeout(std::time::Duration::from_secs(5))
        .map_err(sql)?;
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .map_err(sql)?;
    connection
        .pragma_update(None, "synchronous", "NORMAL")
        .map_err(sql)?;
    connection.execute_batch(SCHEMA).map_err(sql)?;
    super::migrate::migrate(&connection).map_err(sql)?;
    super::witness::create(&connection).map_err(sql)?;
    Ok(connection)
}
