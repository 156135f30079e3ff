//! SQLite plumbing shared by the job store and the audit log: creating the file with mode
//! 0600, connection pragmas, `PRAGMA user_version` migrations, and the handle both use
//! (one connection behind a lock, driven from tokio's blocking pool).
//!
//! Errors here carry no path; `store` and `audit` wrap them into their own error types,
//! which do.

use std::fs::{self, OpenOptions, Permissions};
use std::future::Future;
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior};

/// What the job store and the audit log share: a connection behind a lock, run on tokio's
/// blocking pool, and errors that name the file. Each implements the four accessors; the
/// three methods are written once here.
pub(crate) trait SqliteHandle: Clone + Send + Sync + 'static {
    type Error: Send + 'static;

    fn db_path(&self) -> &Path;
    fn connection(&self) -> &Mutex<Connection>;
    fn sql_failure(
        path: PathBuf,
        op: &'static str,
        job_id: Option<String>,
        source: rusqlite::Error,
    ) -> Self::Error;
    fn worker_failure(path: PathBuf, source: tokio::task::JoinError) -> Self::Error;

    /// Runs `f` with the connection. A panic while the lock was held cannot leave a
    /// transaction open (rusqlite rolls back on drop), so a poisoned lock is still usable.
    fn with_conn<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, Self::Error>,
    ) -> Result<T, Self::Error> {
        let mut conn = self
            .connection()
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut conn)
    }

    /// Runs a blocking operation on tokio's blocking pool.
    fn spawn<T, F>(&self, f: F) -> impl Future<Output = Result<T, Self::Error>> + Send
    where
        F: FnOnce(&Self) -> Result<T, Self::Error> + Send + 'static,
        T: Send + 'static,
    {
        let handle = self.clone();
        let path = self.db_path().to_path_buf();
        async move {
            tokio::task::spawn_blocking(move || f(&handle))
                .await
                .map_err(|source| Self::worker_failure(path, source))?
        }
    }

    /// Wraps a SQLite error with the file, the operation and the job.
    fn sql_error<'a>(
        &'a self,
        op: &'static str,
        job_id: Option<&'a str>,
    ) -> impl Fn(rusqlite::Error) -> Self::Error + 'a {
        move |source| {
            Self::sql_failure(
                self.db_path().to_path_buf(),
                op,
                job_id.map(str::to_owned),
                source,
            )
        }
    }
}

/// Whether a failure comes from a full disk: SQLite's `SQLITE_FULL`, or `ENOSPC` anywhere
/// in the chain of sources.
pub(crate) fn is_disk_full(error: &(dyn std::error::Error + 'static)) -> bool {
    let sqlite_full = |e: &rusqlite::Error| matches!(e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull);
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(e) = error.downcast_ref::<rusqlite::Error>() {
            if sqlite_full(e) {
                return true;
            }
        }
        if let Some(e) = error.downcast_ref::<Box<rusqlite::Error>>() {
            if sqlite_full(e) {
                return true;
            }
        }
        if let Some(e) = error.downcast_ref::<io::Error>() {
            if e.kind() == io::ErrorKind::StorageFull {
                return true;
            }
        }
        next = error.source();
    }
    false
}

/// ` for job <id>` in error messages, or nothing.
pub(crate) fn for_job(job_id: &Option<String>) -> String {
    job_id
        .as_deref()
        .map(|id| format!(" for job {id}"))
        .unwrap_or_default()
}

/// How long a statement waits for another connection's write lock before giving up.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a database could not be prepared; the caller adds the path.
#[derive(Debug)]
pub(crate) enum SetupError {
    /// The directory that should hold the file does not exist.
    ParentMissing,
    /// Creating the file or setting its mode failed.
    Create(io::Error),
    /// SQLite refused to open the file, set a pragma or run a migration.
    Sqlite(rusqlite::Error),
    /// The file was written by a newer agent.
    SchemaTooNew { found: i64, supported: i64 },
    /// `journal_mode=WAL` was refused (the filesystem may not support shared memory).
    NoWal { mode: String },
}

impl From<rusqlite::Error> for SetupError {
    fn from(source: rusqlite::Error) -> Self {
        SetupError::Sqlite(source)
    }
}

/// `synchronous` settings the two databases use.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Synchronous {
    /// Job state: a power cut may lose the last transactions, never corrupt the file.
    Normal,
    /// Audit: a committed row survives a power cut.
    Full,
}

/// Opens (creating if needed) the database at `path` read-write, with WAL, the given
/// `synchronous` level and a busy timeout, and brings its schema up to `migrations.len()`.
///
/// `migrations[i]` upgrades the schema from version `i` to `i + 1`.
pub(crate) fn open_read_write(
    path: &Path,
    synchronous: Synchronous,
    migrations: &[&str],
) -> Result<Connection, SetupError> {
    ensure_private_file(path)?;
    // The file exists now, so SQLite is not allowed to create it: if it vanished in
    // between we would rather fail than create it with the default mode.
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(SetupError::NoWal { mode });
    }
    let level = match synchronous {
        Synchronous::Normal => "NORMAL",
        Synchronous::Full => "FULL",
    };
    conn.pragma_update(None, "synchronous", level)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    migrate(&mut conn, migrations)?;
    Ok(conn)
}

/// Opens an existing database without write access and without creating anything.
///
/// Returns the connection and its schema version; the caller decides what a version of 0
/// (an empty or foreign file) means.
pub(crate) fn open_read_only(path: &Path, supported: i64) -> Result<(Connection, i64), SetupError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "query_only", "ON")?;
    let found = user_version(&conn)?;
    if found > supported {
        return Err(SetupError::SchemaTooNew { found, supported });
    }
    Ok((conn, found))
}

fn user_version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.pragma_query_value(None, "user_version", |row| row.get(0))
}

/// Applies the migrations the file has not seen yet, each in its own write transaction.
///
/// The version is read again inside the transaction, so two processes opening the same new
/// file at once do not both run a migration.
fn migrate(conn: &mut Connection, migrations: &[&str]) -> Result<(), SetupError> {
    let supported = i64::try_from(migrations.len()).unwrap_or(i64::MAX);
    loop {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let found = user_version(&tx)?;
        if found > supported {
            return Err(SetupError::SchemaTooNew { found, supported });
        }
        let Some(sql) = usize::try_from(found)
            .ok()
            .and_then(|index| migrations.get(index))
        else {
            return Ok(());
        };
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", found + 1)?;
        tx.commit()?;
    }
}

/// Makes sure `path` is a file that only its owner can read and write, creating it empty
/// if it does not exist. An empty file is a valid, empty SQLite database.
///
/// SQLite gives the `-wal` and `-shm` files it creates the mode of the database file, so
/// they end up 0600 as well.
pub(crate) fn ensure_private_file(path: &Path) -> Result<(), SetupError> {
    if let Some(parent) = path.parent() {
        if !parent.as_os_str().is_empty() && !parent.is_dir() {
            return Err(SetupError::ParentMissing);
        }
    }
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match created {
        // The mode given to open() is filtered through the umask; setting it afterwards
        // makes the result exactly 0600 whatever the umask is.
        Ok(file) => file
            .set_permissions(Permissions::from_mode(0o600))
            .map_err(SetupError::Create),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => tighten_existing(path),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Err(SetupError::ParentMissing),
        Err(error) => Err(SetupError::Create(error)),
    }
}

/// A database made by an older tool or by hand may be readable by others; job output and
/// the audit trail can hold secrets, so take group and world access away.
fn tighten_existing(path: &Path) -> Result<(), SetupError> {
    let metadata = fs::metadata(path).map_err(SetupError::Create)?;
    let mode = metadata.permissions().mode();
    if metadata.is_file() && mode & 0o077 != 0 {
        fs::set_permissions(path, Permissions::from_mode(mode & 0o700))
            .map_err(SetupError::Create)?;
        tracing::warn!(
            path = %path.display(),
            old_mode = format_args!("{:o}", mode & 0o777),
            "database file was accessible to other users; restricted it to its owner"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIGRATIONS: &[&str] = &[
        "CREATE TABLE a (x INTEGER) STRICT;",
        "CREATE TABLE b (y INTEGER) STRICT;",
    ];

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("stat").permissions().mode() & 0o777
    }

    #[test]
    fn creates_file_0600_with_wal_and_schema() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.db");
        let conn = open_read_write(&path, Synchronous::Full, MIGRATIONS).expect("open");
        assert_eq!(user_version(&conn).expect("version"), 2);
        conn.execute("INSERT INTO b (y) VALUES (1)", [])
            .expect("insert");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(&dir.path().join("x.db-wal")), 0o600);
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .expect("synchronous");
        assert_eq!(sync, 2, "FULL is 2");
    }

    #[test]
    fn loose_existing_file_is_tightened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.db");
        fs::write(&path, b"").expect("write");
        fs::set_permissions(&path, Permissions::from_mode(0o644)).expect("chmod");
        open_read_write(&path, Synchronous::Normal, MIGRATIONS).expect("open");
        assert_eq!(mode(&path), 0o600);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.db");
        open_read_write(&path, Synchronous::Normal, MIGRATIONS).expect("open");
        let err =
            open_read_write(&path, Synchronous::Normal, &MIGRATIONS[..1]).expect_err("too new");
        assert!(matches!(
            err,
            SetupError::SchemaTooNew {
                found: 2,
                supported: 1
            }
        ));
    }

    #[test]
    fn missing_parent_is_reported() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nope").join("x.db");
        let err = open_read_write(&path, Synchronous::Normal, MIGRATIONS).expect_err("no parent");
        assert!(matches!(err, SetupError::ParentMissing));
        assert!(!path.exists());
    }

    #[test]
    fn read_only_open_never_creates() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("x.db");
        assert!(open_read_only(&path, 2).is_err());
        assert!(!path.exists());
    }
}
