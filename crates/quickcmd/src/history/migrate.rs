//! Schema changes after the first version, each one idempotent and keyed on what the file
//! holds (a column or table that is missing), not on a version number: helpers that add
//! columns on other branches then merge without renumbering, and an older file opened by
//! a newer `quickcmd` gains what it lacks.

use rusqlite::{params, Connection};

/// Columns added to `runs` after version 1: name and SQL type.
const RUN_COLUMNS: [(&str, &str); 2] = [
    // The invocation (`invocations.run_id`) the job belongs to; NULL for older rows.
    ("run_id", "TEXT"),
    // Who the job was signed for (protocol v1.1 `requested_by`); NULL for older rows.
    ("requested_by", "TEXT"),
];

/// One row per `quickcmd run` / `submit` / `rerun`: what was asked and of whom, so a run
/// can be waited for, cancelled and re-run as a whole (a host skipped by `--max-errors`
/// has no job row, but is one of the run's targets).
const INVOCATIONS: &str = "
CREATE TABLE IF NOT EXISTS invocations (
    run_id      TEXT PRIMARY KEY,
    created_at  TEXT NOT NULL,
    kind        TEXT NOT NULL,
    user        TEXT NOT NULL,
    command     TEXT NOT NULL,
    spec_json   TEXT NOT NULL,
    targets_json TEXT NOT NULL,
    rerun_of    TEXT
);
CREATE INDEX IF NOT EXISTS invocations_by_time ON invocations (created_at);
";

/// Brings an opened database up to date.
pub(super) fn migrate(connection: &Connection) -> rusqlite::Result<()> {
    let existing: Vec<String> = {
        let mut statement = connection.prepare("SELECT name FROM pragma_table_info(?1)")?;
        let names = statement.query_map(params!["runs"], |row| row.get(0))?;
        names.collect::<rusqlite::Result<_>>()?
    };
    for (name, kind) in RUN_COLUMNS {
        if !existing.iter().any(|column| column == name) {
            connection.execute_batch(&format!("ALTER TABLE runs ADD COLUMN {name} {kind};"))?;
        }
    }
    connection
        .execute_batch("CREATE INDEX IF NOT EXISTS runs_by_run ON runs (run_id, submitted_at);")?;
    connection.execute_batch(INVOCATIONS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 file (as `quickcmd` 0.1 wrote it) gains the run columns and keeps its
    /// rows; migrating twice changes nothing.
    #[test]
    fn a_version_one_file_is_migrated_in_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("old.db");
        let old = Connection::open(&path).expect("open");
        old.execute_batch(
            "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, \
             agent TEXT NOT NULL, agent_url TEXT NOT NULL, controller_id TEXT NOT NULL, \
             user TEXT NOT NULL, command TEXT NOT NULL, prompt TEXT NOT NULL, \
             payload_sha256 TEXT NOT NULL, signature TEXT NOT NULL, submitted_at TEXT NOT NULL, \
             status TEXT NOT NULL, exit_code INTEGER, reason TEXT, error TEXT, \
             started_at TEXT, ended_at TEXT, duration_ms INTEGER, stdout_bytes INTEGER, \
             stderr_bytes INTEGER, stdout_sha256 TEXT, stderr_sha256 TEXT, \
             updated_at TEXT NOT NULL, UNIQUE (job_id, agent_url)); \
             INSERT INTO runs (job_id, agent, agent_url, controller_id, user, command, prompt, \
             payload_sha256, signature, submitted_at, status, updated_at) VALUES \
             ('j1', 'a', 'https://a/', 'c', 'u', 'true', 'true', 'h', 's', 't', 'completed', 't');",
        )
        .expect("old schema");
        migrate(&old).expect("migrate");
        migrate(&old).expect("migrate again");
        let (job, run): (String, Option<String>) = old
            .query_row("SELECT job_id, run_id FROM runs", [], |row| {
                Ok((row.get(0)?, row.get(1)?))
            })
            .expect("row kept");
        assert_eq!((job.as_str(), run), ("j1", None));
        let invocations: i64 = old
            .query_row("SELECT COUNT(*) FROM invocations", [], |row| row.get(0))
            .expect("invocations table");
        assert_eq!(invocations, 0);
    }

    /// A file written by either branch's step alone (only `requested_by`, or only
    /// `run_id` and `invocations`) gains the other column and keeps its values: the
    /// steps apply in any order.
    #[test]
    fn files_with_either_later_column_gain_the_other() {
        for (extra, value) in [("requested_by", "ann@ops"), ("run_id", "r1")] {
            let dir = tempfile::tempdir().expect("tempdir");
            let old = Connection::open(dir.path().join("old.db")).expect("open");
            old.execute_batch(&format!(
                "CREATE TABLE runs (id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, \
                 agent TEXT NOT NULL, agent_url TEXT NOT NULL, controller_id TEXT NOT NULL, \
                 user TEXT NOT NULL, command TEXT NOT NULL, prompt TEXT NOT NULL, \
                 payload_sha256 TEXT NOT NULL, signature TEXT NOT NULL, \
                 submitted_at TEXT NOT NULL, status TEXT NOT NULL, exit_code INTEGER, \
                 reason TEXT, error TEXT, started_at TEXT, ended_at TEXT, duration_ms INTEGER, \
                 stdout_bytes INTEGER, stderr_bytes INTEGER, stdout_sha256 TEXT, \
                 stderr_sha256 TEXT, updated_at TEXT NOT NULL, {extra} TEXT, \
                 UNIQUE (job_id, agent_url)); \
                 INSERT INTO runs (job_id, agent, agent_url, controller_id, user, command, \
                 prompt, payload_sha256, signature, submitted_at, status, updated_at, {extra}) \
                 VALUES ('j1', 'a', 'https://a/', 'c', 'u', 'true', 'true', 'h', 's', 't', \
                 'completed', 't', '{value}');"
            ))
            .expect("old schema");
            migrate(&old).expect("migrate");
            migrate(&old).expect("migrate again");
            let (run, requested_by): (Option<String>, Option<String>) = old
                .query_row("SELECT run_id, requested_by FROM runs", [], |row| {
                    Ok((row.get(0)?, row.get(1)?))
                })
                .expect("both columns");
            let kept = if extra == "run_id" { run } else { requested_by };
            assert_eq!(kept.as_deref(), Some(value), "{extra} kept");
            old.query_row("SELECT COUNT(*) FROM invocations", [], |row| {
                row.get::<_, i64>(0)
            })
            .expect("invocations table");
        }
    }
}
