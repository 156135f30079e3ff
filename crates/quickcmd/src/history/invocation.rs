//! Runs as objects: one `invocations` row per `quickcmd run`, `submit` or `rerun`, with the
//! job as asked and the hosts it targeted, so that `wait`, `cancel --run` and
//! `rerun --failed` can act on the run as a whole.

use std::time::Duration;

use quickcmd_protocol::SandboxRequest;
use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{now_rfc3339, History, HistoryError, HistoryRow};
use crate::job::JobSpec;

/// One host a run targeted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationTarget {
    /// The inventory name (or `host:port` for an ad-hoc URL).
    pub name: String,
    pub url: String,
}

/// The job as the operator asked for it, as stored (a [`JobSpec`] without its clock).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct StoredSpec {
    command: String,
    prompt: Option<String>,
    #[serde(default)]
    required_scopes: Vec<String>,
    sandbox: Option<SandboxRequest>,
    ttl_seconds: u64,
}

/// One invocation of `quickcmd run`, `submit` or `rerun`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Invocation {
    /// A UUIDv7, so run ids sort by time like job ids.
    pub run_id: String,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// `run`, `submit` or `rerun`.
    pub kind: String,
    pub user: String,
    pub command: String,
    /// Every host the run targeted, in order (also those never started).
    pub targets: Vec<InvocationTarget>,
    /// The run this one re-ran (`rerun --failed`).
    pub rerun_of: Option<String>,
    #[serde(skip)]
    spec: Option<StoredSpec>,
}

impl Invocation {
    /// A new invocation of `spec` on `targets`.
    pub fn new(
        run_id: &str,
        kind: &str,
        spec: &JobSpec,
        targets: Vec<InvocationTarget>,
        rerun_of: Option<String>,
    ) -> Invocation {
        Invocation {
            run_id: run_id.to_string(),
            created_at: now_rfc3339(),
            kind: kind.to_string(),
            user: super::local_user(),
            command: spec.command.clone(),
            targets,
            rerun_of,
            spec: Some(StoredSpec {
                command: spec.command.clone(),
                prompt: spec.prompt.clone(),
                required_scopes: spec.required_scopes.clone(),
                sandbox: spec.sandbox.clone(),
                ttl_seconds: spec.ttl.as_secs(),
            }),
        }
    }

    /// The job as it was asked for, to run again.
    pub fn spec(&self) -> Option<JobSpec> {
        let stored = self.spec.as_ref()?;
        Some(JobSpec {
            prompt: stored.prompt.clone(),
            required_scopes: stored.required_scopes.clone(),
            sandbox: stored.sandbox.clone(),
            ttl: Duration::from_secs(stored.ttl_seconds),
            ..JobSpec::new(stored.command.clone())
        })
    }
}

const INVOCATION_COLUMNS: &str =
    "run_id, created_at, kind, user, command, spec_json, targets_json, rerun_of";

fn invocation_from_sql(row: &rusqlite::Row<'_>) -> rusqlite::Result<Invocation> {
    let spec_json: String = row.get(5)?;
    let targets_json: String = row.get(6)?;
    Ok(Invocation {
        run_id: row.get(0)?,
        created_at: row.get(1)?,
        kind: row.get(2)?,
        user: row.get(3)?,
        command: row.get(4)?,
        // A row this version cannot read still names its run; it just cannot be re-run.
        spec: serde_json::from_str(&spec_json).ok(),
        targets: serde_json::from_str(&targets_json).unwrap_or_default(),
        rerun_of: row.get(7)?,
    })
}

impl History {
    /// Records an invocation before any of its jobs is sent.
    pub async fn record_invocation(&self, invocation: &Invocation) -> Result<(), HistoryError> {
        let invocation = invocation.clone();
        self.call(move |connection| {
            let spec_json = serde_json::to_string(&invocation.spec).unwrap_or_default();
            let targets_json = serde_json::to_string(&invocation.targets).unwrap_or_default();
            connection.execute(
                &format!(
                    "INSERT INTO invocations ({INVOCATION_COLUMNS}) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
                ),
                params![
                    invocation.run_id,
                    invocation.created_at,
                    invocation.kind,
                    invocation.user,
                    invocation.command,
                    spec_json,
                    targets_json,
                    invocation.rerun_of
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// The invocation `run_id`; `last` names the most recent one.
    pub async fn find_invocation(&self, run_id: &str) -> Result<Option<Invocation>, HistoryError> {
        let run_id = run_id.to_string();
        self.call(move |connection| {
            let sql = if run_id == "last" {
                format!(
                    "SELECT {INVOCATION_COLUMNS} FROM invocations \
                     WHERE ?1 = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1"
                )
            } else {
                format!("SELECT {INVOCATION_COLUMNS} FROM invocations WHERE run_id = ?1")
            };
            connection
                .query_row(&sql, params![run_id], invocation_from_sql)
                .optional()
        })
        .await
    }

    /// Every job row of run `run_id`, in submission order.
    pub async fn jobs_of_run(&self, run_id: &str) -> Result<Vec<HistoryRow>, HistoryError> {
        let run_id = run_id.to_string();
        self.call(move |connection| {
            let mut statement = connection.prepare(&format!(
                "SELECT {} FROM runs WHERE run_id = ?1 ORDER BY id",
                super::sql::COLUMNS
            ))?;
            let rows = statement.query_map(params![run_id], super::sql::row_from_sql)?;
            rows.collect()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::NewRun;

    #[tokio::test]
    async fn invocations_keep_the_spec_and_targets_and_find_their_jobs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let history = History::open(&dir.path().join("h.db")).await.expect("open");
        let spec = JobSpec {
            prompt: Some("why".into()),
            sandbox: Some(SandboxRequest {
                timeout_seconds: Some(5),
                ..SandboxRequest::default()
            }),
            ttl: Duration::from_secs(60),
            ..JobSpec::new("echo hi")
        };
        let targets = vec![
            InvocationTarget {
                name: "a".into(),
                url: "https://a:1/".into(),
            },
            InvocationTarget {
                name: "b".into(),
                url: "https://b:1/".into(),
            },
        ];
        for run_id in ["r1", "r2"] {
            history
                .record_invocation(&Invocation::new(
                    run_id,
                    "run",
                    &spec,
                    targets.clone(),
                    None,
                ))
                .await
                .expect("record");
        }
        let found = history
            .find_invocation("r1")
            .await
            .expect("find")
            .expect("present");
        assert_eq!(found.targets, targets);
        assert_eq!(found.spec(), Some(spec.clone()));
        let last = history.find_invocation("last").await.expect("find");
        assert_eq!(last.map(|i| i.run_id), Some("r2".to_string()));
        assert!(history
            .find_invocation("nope")
            .await
            .expect("find")
            .is_none());

        history
            .record_submission(NewRun {
                job_id: "j1".into(),
                agent: "a".into(),
                agent_url: "https://a:1/".into(),
                controller_id: "c".into(),
                user: "u".into(),
                command: "echo hi".into(),
                prompt: "why".into(),
                payload_sha256: "h".into(),
                signature: "s".into(),
                run_id: Some("r1".into()),
                requested_by: None,
            })
            .await
            .expect("submission");
        let jobs = history.jobs_of_run("r1").await.expect("jobs");
        assert_eq!(jobs.len(), 1);
        assert_eq!(jobs[0].run_id.as_deref(), Some("r1"));
        assert!(history.jobs_of_run("r2").await.expect("jobs").is_empty());
    }
}
