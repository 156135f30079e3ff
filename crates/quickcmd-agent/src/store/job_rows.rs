//! Job rows: insert once, move forward through the statuses, recover after a restart,
//! purge when both old and expired.

use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::types::SqlStatus;
use super::{InsertOutcome, JobOutcome, JobRecord, JobStatus, NewJob, Store, StoreError};
use crate::db::SqliteHandle;

/// The columns `job_from_row` reads, in its order.
const JOB_COLUMNS: &str = "job_id, controller_id, command, prompt, payload_json, signature, \
     canonical, sandbox_json, ttl, timestamp, created_at_ms, status, reason, error, \
     started_at_ms, ended_at_ms, exit_code, sandbox_id, stdout_bytes, stderr_bytes, \
     stdout_sha256, stderr_sha256, stdout_truncated, stderr_truncated, requested_by";

/// SQL for "not final yet", kept in one place so every query agrees.
const UNFINISHED: &str = "status IN ('pending', 'running')";

fn job_from_row(row: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        job_id: row.get(0)?,
        controller_id: row.get(1)?,
        command: row.get(2)?,
        prompt: row.get(3)?,
        payload_json: row.get(4)?,
        signature: row.get(5)?,
        canonical: row.get(6)?,
        sandbox_json: row.get(7)?,
        ttl: row.get(8)?,
        timestamp: row.get(9)?,
        created_at_ms: row.get(10)?,
        status: row.get::<_, SqlStatus>(11)?.0,
        reason: row.get(12)?,
        error: row.get(13)?,
        started_at_ms: row.get(14)?,
        ended_at_ms: row.get(15)?,
        exit_code: row.get(16)?,
        sandbox_id: row.get(17)?,
        stdout_bytes: row.get(18)?,
        stderr_bytes: row.get(19)?,
        stdout_sha256: row.get(20)?,
        stderr_sha256: row.get(21)?,
        stdout_truncated: row.get(22)?,
        stderr_truncated: row.get(23)?,
        requested_by: row.get(24)?,
    })
}

fn select_job(conn: &Connection, job_id: &str) -> rusqlite::Result<Option<JobRecord>> {
    conn.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE job_id = ?1"),
        [job_id],
        job_from_row,
    )
    .optional()
}

fn job_exists(conn: &Connection, job_id: &str) -> rusqlite::Result<bool> {
    conn.query_row("SELECT 1 FROM jobs WHERE job_id = ?1", [job_id], |_| Ok(()))
        .optional()
        .map(|found| found.is_some())
}

fn select_unfinished(conn: &Connection) -> rusqlite::Result<Vec<JobRecord>> {
    let mut statement = conn.prepare(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs WHERE {UNFINISHED} ORDER BY created_at_ms, rowid"
    ))?;
    let jobs = statement.query_map([], job_from_row)?.collect();
    jobs
}

impl Store {
    /// Stores a new job, atomically: when the id is already taken the stored job is
    /// returned as [`InsertOutcome::Exists`] and nothing is written.
    ///
    /// A job inserted with a final status (`Rejected`) never ran: it gets
    /// `ended_at_ms = created_at_ms` and exit code -1.
    pub(crate) async fn insert_job(&self, job: NewJob) -> Result<InsertOutcome, StoreError> {
        self.spawn(move |store| store.insert_job_blocking(job))
            .await
    }

    /// Blocking twin of [`Store::insert_job`].
    pub(super) fn insert_job_blocking(&self, job: NewJob) -> Result<InsertOutcome, StoreError> {
        let sql = self.sql_error("insert job", Some(&job.job_id));
        self.with_conn(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&sql)?;
            let (ended_at_ms, exit_code) = if job.status.is_final() {
                (Some(job.created_at_ms), Some(-1_i64))
            } else {
                (None, None)
            };
            let inserted = tx
                .execute(
                    "INSERT INTO jobs (job_id, controller_id, command, prompt, payload_json, \
                     signature, canonical, sandbox_json, ttl, timestamp, created_at_ms, status, \
                     reason, error, ended_at_ms, exit_code, requested_by) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17) \
                     ON CONFLICT (job_id) DO NOTHING",
                    params![
                        job.job_id,
                        job.controller_id,
                        job.command,
                        job.prompt,
                        job.payload_json,
                        job.signature,
                        job.canonical,
                        job.sandbox_json,
                        job.ttl,
                        job.timestamp,
                        job.created_at_ms,
                        SqlStatus(job.status),
                        job.reason,
                        job.error,
                        ended_at_ms,
                        exit_code,
                        job.requested_by,
                    ],
                )
                .map_err(&sql)?;
            let outcome = if inserted == 1 {
                InsertOutcome::Inserted
            } else {
                let existing = select_job(&tx, &job.job_id)
                    .map_err(&sql)?
                    .ok_or_else(|| self.not_found(&job.job_id))?;
                InsertOutcome::Exists(existing)
            };
            tx.commit().map_err(&sql)?;
            Ok(outcome)
        })
    }

    /// The job with this id, if it is stored.
    pub(crate) async fn get_job(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        let job_id = job_id.to_owned();
        self.spawn(move |store| store.get_job_blocking(&job_id))
            .await
    }

    /// Blocking twin of [`Store::get_job`].
    pub(super) fn get_job_blocking(&self, job_id: &str) -> Result<Option<JobRecord>, StoreError> {
        self.with_conn(|conn| {
            select_job(conn, job_id).map_err(self.sql_error("read job", Some(job_id)))
        })
    }

    /// One controller's jobs, newest first (by `created_at_ms`, then insertion order),
    /// optionally only those with `status`, at most `limit` of them.
    pub(crate) async fn list_jobs(
        &self,
        controller_id: &str,
        status: Option<JobStatus>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let controller_id = controller_id.to_owned();
        self.spawn(move |store| store.list_jobs_blocking(&controller_id, status, limit))
            .await
    }

    /// Blocking twin of [`Store::list_jobs`].
    fn list_jobs_blocking(
        &self,
        controller_id: &str,
        status: Option<JobStatus>,
        limit: usize,
    ) -> Result<Vec<JobRecord>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = self.sql_error("list jobs", None);
        self.with_conn(|conn| {
            let mut statement = conn
                .prepare_cached(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs \
                     WHERE controller_id = ?1 AND (?2 IS NULL OR status = ?2) \
                     ORDER BY created_at_ms DESC, rowid DESC LIMIT ?3"
                ))
                .map_err(&sql)?;
            let jobs = statement
                .query_map(
                    params![controller_id, status.map(SqlStatus), limit],
                    job_from_row,
                )
                .map_err(&sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&sql)?;
            Ok(jobs)
        })
    }

    /// Moves a pending job to running. Returns false, changing nothing, when the job is
    /// no longer pending (cancelled or expired meanwhile); a job id that is not stored is
    /// [`StoreError::JobNotFound`].
    ///
    /// `sandbox_id` is stored when `Some`.
    pub(crate) async fn mark_running(
        &self,
        job_id: &str,
        started_at_ms: i64,
        sandbox_id: Option<String>,
    ) -> Result<bool, StoreError> {
        let job_id = job_id.to_owned();
        self.spawn(move |store| store.mark_running_blocking(&job_id, started_at_ms, sandbox_id))
            .await
    }

    /// Blocking twin of [`Store::mark_running`].
    fn mark_running_blocking(
        &self,
        job_id: &str,
        started_at_ms: i64,
        sandbox_id: Option<String>,
    ) -> Result<bool, StoreError> {
        let sql = self.sql_error("mark job running", Some(job_id));
        self.with_conn(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&sql)?;
            let changed = tx
                .execute(
                    "UPDATE jobs SET status = 'running', started_at_ms = ?2, \
                     sandbox_id = COALESCE(?3, sandbox_id) \
                     WHERE job_id = ?1 AND status = 'pending'",
                    params![job_id, started_at_ms, sandbox_id],
                )
                .map_err(&sql)?;
            if changed == 0 && !job_exists(&tx, job_id).map_err(&sql)? {
                return Err(self.not_found(job_id));
            }
            tx.commit().map_err(&sql)?;
            Ok(changed == 1)
        })
    }

    /// Records how a pending or running job ended. Returns false, changing nothing, when
    /// the job already has a final status: the first outcome wins (a cancel racing a
    /// normal exit cannot overwrite it). `outcome.status` must be final
    /// ([`StoreError::NotFinal`] otherwise); an unknown id is [`StoreError::JobNotFound`].
    pub(crate) async fn finish_job(
        &self,
        job_id: &str,
        outcome: JobOutcome,
    ) -> Result<bool, StoreError> {
        let job_id = job_id.to_owned();
        self.spawn(move |store| store.finish_job_blocking(&job_id, outcome))
            .await
    }

    /// Blocking twin of [`Store::finish_job`].
    fn finish_job_blocking(&self, job_id: &str, outcome: JobOutcome) -> Result<bool, StoreError> {
        if !outcome.status.is_final() {
            return Err(StoreError::NotFinal {
                job_id: job_id.to_owned(),
                status: outcome.status,
            });
        }
        let sql = self.sql_error("finish job", Some(job_id));
        self.with_conn(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&sql)?;
            let changed = tx
                .execute(
                    &format!(
                        "UPDATE jobs SET status = ?2, reason = ?3, error = ?4, exit_code = ?5, \
                         ended_at_ms = ?6, sandbox_id = COALESCE(?7, sandbox_id), \
                         stdout_bytes = ?8, stderr_bytes = ?9, stdout_sha256 = ?10, \
                         stderr_sha256 = ?11, stdout_truncated = ?12, stderr_truncated = ?13 \
                         WHERE job_id = ?1 AND {UNFINISHED}"
                    ),
                    params![
                        job_id,
                        SqlStatus(outcome.status),
                        outcome.reason,
                        outcome.error,
                        outcome.exit_code,
                        outcome.ended_at_ms,
                        outcome.sandbox_id,
                        outcome.stdout_bytes,
                        outcome.stderr_bytes,
                        outcome.stdout_sha256,
                        outcome.stderr_sha256,
                        outcome.stdout_truncated,
                        outcome.stderr_truncated,
                    ],
                )
                .map_err(&sql)?;
            if changed == 0 && !job_exists(&tx, job_id).map_err(&sql)? {
                return Err(self.not_found(job_id));
            }
            tx.commit().map_err(&sql)?;
            Ok(changed == 1)
        })
    }

    /// Jobs that were pending or running, oldest first: after a restart, these are the
    /// ones the previous process left unfinished.
    #[cfg(test)]
    pub(crate) async fn interrupted_jobs(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.spawn(|store| store.interrupted_jobs_blocking()).await
    }

    /// Blocking twin of [`Store::interrupted_jobs`].
    #[cfg(test)]
    fn interrupted_jobs_blocking(&self) -> Result<Vec<JobRecord>, StoreError> {
        self.with_conn(|conn| {
            select_unfinished(conn).map_err(self.sql_error("list interrupted jobs", None))
        })
    }

    /// Fails every pending or running job in one transaction: status `failed`, the given
    /// `reason` (e.g. `agent_restart`), exit code -1, an error sentence naming the reason.
    /// Returns their ids, oldest first.
    pub(crate) async fn fail_interrupted(
        &self,
        reason: &str,
        ended_at_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let reason = reason.to_owned();
        self.spawn(move |store| store.fail_interrupted_blocking(&reason, ended_at_ms))
            .await
    }

    /// Blocking twin of [`Store::fail_interrupted`].
    fn fail_interrupted_blocking(
        &self,
        reason: &str,
        ended_at_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        let sql = self.sql_error("fail interrupted jobs", None);
        let error = format!("the job was interrupted before it finished ({reason})");
        self.with_conn(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&sql)?;
            let ids: Vec<String> = select_unfinished(&tx)
                .map_err(&sql)?
                .into_iter()
                .map(|job| job.job_id)
                .collect();
            tx.execute(
                &format!(
                    "UPDATE jobs SET status = 'failed', reason = ?1, error = ?2, exit_code = -1, \
                     ended_at_ms = ?3 WHERE {UNFINISHED}"
                ),
                params![reason, error, ended_at_ms],
            )
            .map_err(&sql)?;
            tx.commit().map_err(&sql)?;
            Ok(ids)
        })
    }

    /// How many jobs have each status; every status is listed, in [`JobStatus::ALL`]
    /// order, with 0 when there are none.
    #[cfg(test)]
    pub(crate) async fn count_by_status(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        self.spawn(|store| store.count_by_status_blocking()).await
    }

    /// Blocking twin of [`Store::count_by_status`].
    #[cfg(test)]
    fn count_by_status_blocking(&self) -> Result<Vec<(JobStatus, i64)>, StoreError> {
        let sql = self.sql_error("count jobs", None);
        self.with_conn(|conn| {
            let mut statement = conn
                .prepare_cached("SELECT status, count(*) FROM jobs GROUP BY status")
                .map_err(&sql)?;
            let found = statement
                .query_map([], |row| {
                    Ok((row.get::<_, SqlStatus>(0)?.0, row.get::<_, i64>(1)?))
                })
                .map_err(&sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(&sql)?;
            Ok(JobStatus::ALL
                .into_iter()
                .map(|status| {
                    let count = found
                        .iter()
                        .find(|(found_status, _)| *found_status == status)
                        .map_or(0, |(_, count)| *count);
                    (status, count)
                })
                .collect())
        })
    }

    /// Deletes final jobs created before `older_than_ms`, with their frames, and returns
    /// how many jobs went. A job whose `ttl` (unix seconds) is still `>= now` stays, so a
    /// replay of its payload is still refused; an unfinished job always stays.
    pub(crate) async fn purge(&self, older_than_ms: i64, now_ms: i64) -> Result<usize, StoreError> {
        self.spawn(move |store| store.purge_blocking(older_than_ms, now_ms))
            .await
    }

    /// Blocking twin of [`Store::purge`].
    fn purge_blocking(&self, older_than_ms: i64, now_ms: i64) -> Result<usize, StoreError> {
        // Compare in seconds, rounding now down: a job is kept through its ttl second.
        let now_seconds = now_ms.div_euclid(1000);
        let purgeable = format!("created_at_ms < ?1 AND ttl < ?2 AND NOT ({UNFINISHED})");
        let sql = self.sql_error("purge jobs", None);
        self.with_conn(|conn| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(&sql)?;
            tx.execute(
                &format!("DELETE FROM frames WHERE job_id IN (SELECT job_id FROM jobs WHERE {purgeable})"),
                params![older_than_ms, now_seconds],
            )
            .map_err(&sql)?;
            let deleted = tx
                .execute(
                    &format!("DELETE FROM jobs WHERE {purgeable}"),
                    params![older_than_ms, now_seconds],
                )
                .map_err(&sql)?;
            tx.commit().map_err(&sql)?;
            Ok(deleted)
        })
    }
}

#[cfg(test)]
pub(super) mod tests;
