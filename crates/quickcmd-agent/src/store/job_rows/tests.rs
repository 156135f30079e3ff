use super::*;
use crate::store::StoredFrame;

pub(in crate::store) fn new_job(job_id: &str, controller_id: &str, created_at_ms: i64) -> NewJob {
    NewJob {
        job_id: job_id.to_owned(),
        controller_id: controller_id.to_owned(),
        command: format!("echo {job_id}"),
        prompt: "say the id".to_owned(),
        payload_json: format!(r#"{{"job_id":"{job_id}"}}"#),
        signature: "ab".repeat(32),
        canonical: false,
        sandbox_json: None,
        ttl: 2_000_000_000,
        timestamp: 1_700_000_000,
        created_at_ms,
        status: JobStatus::Pending,
        reason: None,
        error: None,
        requested_by: None,
    }
}

fn outcome(status: JobStatus, exit_code: i64) -> JobOutcome {
    JobOutcome {
        status,
        reason: None,
        error: None,
        exit_code,
        ended_at_ms: 5_000,
        sandbox_id: None,
        stdout_bytes: 3,
        stderr_bytes: 0,
        stdout_sha256: "a".repeat(64),
        stderr_sha256: "b".repeat(64),
        stdout_truncated: false,
        stderr_truncated: true,
    }
}

pub(in crate::store) fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path().join("agent.db")).expect("open store");
    (dir, store)
}

fn status_of(store: &Store, job_id: &str) -> JobStatus {
    store
        .get_job_blocking(job_id)
        .expect("get")
        .expect("job exists")
        .status
}

#[test]
fn insert_then_get_round_trips_every_field() {
    let (_dir, store) = open();
    let job = NewJob {
        canonical: true,
        sandbox_json: Some(r#"{"image":"alpine:latest"}"#.to_owned()),
        reason: Some("r".to_owned()),
        error: Some("e".to_owned()),
        requested_by: Some("ann@laptop".to_owned()),
        ..new_job("job-1", "ctl", 1_000)
    };
    assert_eq!(
        store.insert_job_blocking(job.clone()).expect("insert"),
        InsertOutcome::Inserted
    );
    let record = store
        .get_job_blocking("job-1")
        .expect("get")
        .expect("stored");
    assert_eq!(
        record,
        JobRecord {
            job_id: job.job_id,
            controller_id: job.controller_id,
            command: job.command,
            prompt: job.prompt,
            payload_json: job.payload_json,
            signature: job.signature,
            canonical: true,
            sandbox_json: job.sandbox_json,
            ttl: job.ttl,
            timestamp: job.timestamp,
            created_at_ms: 1_000,
            status: JobStatus::Pending,
            reason: job.reason,
            error: job.error,
            started_at_ms: None,
            ended_at_ms: None,
            exit_code: None,
            sandbox_id: None,
            stdout_bytes: 0,
            stderr_bytes: 0,
            stdout_sha256: None,
            stderr_sha256: None,
            stdout_truncated: false,
            stderr_truncated: false,
            requested_by: job.requested_by,
        }
    );
    assert_eq!(store.get_job_blocking("job-2").expect("get"), None);
}

#[test]
fn second_insert_returns_the_stored_job_and_never_overwrites() {
    let (_dir, store) = open();
    let first = new_job("job-1", "ctl-a", 1_000);
    store.insert_job_blocking(first.clone()).expect("insert");
    // Same id, different controller and payload: a replay attempt or a collision.
    let second = NewJob {
        command: "rm -rf /".to_owned(),
        payload_json: "{}".to_owned(),
        ..new_job("job-1", "ctl-b", 2_000)
    };
    let InsertOutcome::Exists(existing) = store.insert_job_blocking(second).expect("second insert")
    else {
        panic!("second insert must not succeed");
    };
    assert_eq!(existing.controller_id, "ctl-a");
    assert_eq!(existing.command, first.command);
    assert_eq!(existing.payload_json, first.payload_json);
    let stored = store
        .get_job_blocking("job-1")
        .expect("get")
        .expect("stored");
    assert_eq!(stored, existing);
}

#[test]
fn rejected_insert_is_final_with_exit_code_minus_one() {
    let (_dir, store) = open();
    let job = NewJob {
        status: JobStatus::Rejected,
        reason: Some("image_not_allowed".to_owned()),
        ..new_job("job-r", "ctl", 1_000)
    };
    store.insert_job_blocking(job).expect("insert");
    let record = store
        .get_job_blocking("job-r")
        .expect("get")
        .expect("stored");
    assert_eq!(record.ended_at_ms, Some(1_000));
    assert_eq!(record.exit_code, Some(-1));
    assert!(!store
        .mark_running_blocking("job-r", 2_000, None)
        .expect("mark"));
    assert!(!store
        .finish_job_blocking("job-r", outcome(JobStatus::Completed, 0))
        .expect("finish"));
    assert_eq!(status_of(&store, "job-r"), JobStatus::Rejected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_inserts_of_one_id_insert_once() {
    let (_dir, store) = open();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .insert_job(new_job("same", &format!("ctl-{i}"), i))
                    .await
            })
        })
        .collect();
    let mut inserted = 0;
    for task in tasks {
        if task.await.expect("join").expect("insert") == InsertOutcome::Inserted {
            inserted += 1;
        }
    }
    assert_eq!(inserted, 1);
}

#[test]
fn list_is_per_controller_newest_first_filtered_and_limited() {
    let (_dir, store) = open();
    for (id, controller, created) in [
        ("a1", "a", 100),
        ("b1", "b", 150),
        ("a2", "a", 200),
        ("a3", "a", 300),
        ("a3b", "a", 300),
    ] {
        store
            .insert_job_blocking(new_job(id, controller, created))
            .expect("insert");
    }
    store
        .finish_job_blocking("a2", outcome(JobStatus::Completed, 0))
        .expect("finish");
    let ids = |jobs: Vec<JobRecord>| jobs.into_iter().map(|j| j.job_id).collect::<Vec<_>>();

    let all = store.list_jobs_blocking("a", None, 10).expect("list");
    assert_eq!(ids(all), ["a3b", "a3", "a2", "a1"]);
    let limited = store.list_jobs_blocking("a", None, 2).expect("list");
    assert_eq!(ids(limited), ["a3b", "a3"]);
    let pending = store
        .list_jobs_blocking("a", Some(JobStatus::Pending), 10)
        .expect("list");
    assert_eq!(ids(pending), ["a3b", "a3", "a1"]);
    let completed = store
        .list_jobs_blocking("a", Some(JobStatus::Completed), 10)
        .expect("list");
    assert_eq!(ids(completed), ["a2"]);
    assert!(store
        .list_jobs_blocking("c", None, 10)
        .expect("list")
        .is_empty());
    assert!(store
        .list_jobs_blocking("a", None, 0)
        .expect("list")
        .is_empty());
    assert_eq!(
        store
            .list_jobs_blocking("a", None, usize::MAX)
            .expect("list")
            .len(),
        4
    );
}

#[test]
fn mark_running_only_from_pending() {
    let (_dir, store) = open();
    store
        .insert_job_blocking(new_job("j", "c", 1))
        .expect("insert");
    assert!(store
        .mark_running_blocking("j", 10, Some("sandbox-1".to_owned()))
        .expect("mark"));
    assert!(!store
        .mark_running_blocking("j", 20, Some("sandbox-2".to_owned()))
        .expect("again"));
    let record = store.get_job_blocking("j").expect("get").expect("stored");
    assert_eq!(record.status, JobStatus::Running);
    assert_eq!(record.started_at_ms, Some(10));
    assert_eq!(record.sandbox_id.as_deref(), Some("sandbox-1"));

    let err = store
        .mark_running_blocking("missing", 10, None)
        .expect_err("unknown id");
    assert!(matches!(err, StoreError::JobNotFound { ref job_id, .. } if job_id == "missing"));
}

#[test]
fn finish_records_the_outcome_once_and_never_overwrites_a_final_state() {
    let (_dir, store) = open();
    store
        .insert_job_blocking(new_job("j", "c", 1))
        .expect("insert");
    store
        .mark_running_blocking("j", 10, Some("sandbox-1".to_owned()))
        .expect("mark");
    let first = JobOutcome {
        reason: Some("cancelled".to_owned()),
        error: Some("the job was cancelled".to_owned()),
        ..outcome(JobStatus::Failed, 137)
    };
    assert!(store.finish_job_blocking("j", first).expect("finish"));
    // A late normal exit racing the cancel must lose.
    assert!(!store
        .finish_job_blocking("j", outcome(JobStatus::Completed, 0))
        .expect("second finish"));
    let record = store.get_job_blocking("j").expect("get").expect("stored");
    assert_eq!(record.status, JobStatus::Failed);
    assert_eq!(record.exit_code, Some(137));
    assert_eq!(record.reason.as_deref(), Some("cancelled"));
    assert_eq!(
        record.sandbox_id.as_deref(),
        Some("sandbox-1"),
        "None keeps the id"
    );
    assert_eq!(record.ended_at_ms, Some(5_000));
    assert_eq!(record.stdout_bytes, 3);
    assert_eq!(record.stdout_sha256, Some("a".repeat(64)));
    assert_eq!(record.stderr_sha256, Some("b".repeat(64)));
    assert!(!record.stdout_truncated);
    assert!(record.stderr_truncated);
    // Nor can it be reopened.
    assert!(!store.mark_running_blocking("j", 99, None).expect("mark"));
    assert_eq!(status_of(&store, "j"), JobStatus::Failed);
}

#[test]
fn finish_from_pending_and_bad_arguments() {
    let (_dir, store) = open();
    store
        .insert_job_blocking(new_job("j", "c", 1))
        .expect("insert");
    let err = store
        .finish_job_blocking("j", outcome(JobStatus::Running, 0))
        .expect_err("running is not final");
    assert!(matches!(
        err,
        StoreError::NotFinal {
            status: JobStatus::Running,
            ..
        }
    ));
    assert_eq!(status_of(&store, "j"), JobStatus::Pending);

    let expired = JobOutcome {
        reason: Some("expired".to_owned()),
        ..outcome(JobStatus::Failed, -1)
    };
    assert!(store
        .finish_job_blocking("j", expired)
        .expect("finish pending"));
    assert_eq!(status_of(&store, "j"), JobStatus::Failed);

    let err = store
        .finish_job_blocking("nope", outcome(JobStatus::Completed, 0))
        .expect_err("unknown id");
    assert!(matches!(err, StoreError::JobNotFound { .. }));
    assert!(err.to_string().contains("nope"), "{err}");
}

#[test]
fn fail_interrupted_fails_only_unfinished_jobs() {
    let (_dir, store) = open();
    for (id, created) in [("pending", 3), ("running", 2), ("done", 1)] {
        store
            .insert_job_blocking(new_job(id, "c", created))
            .expect("insert");
    }
    store
        .mark_running_blocking("running", 10, None)
        .expect("mark");
    store
        .finish_job_blocking("done", outcome(JobStatus::Completed, 0))
        .expect("finish");

    let interrupted = store.interrupted_jobs_blocking().expect("interrupted");
    let ids: Vec<_> = interrupted.iter().map(|j| j.job_id.as_str()).collect();
    assert_eq!(ids, ["running", "pending"], "oldest first");

    let failed = store
        .fail_interrupted_blocking("agent_restart", 9_000)
        .expect("fail");
    assert_eq!(failed, ["running", "pending"]);
    for id in ["running", "pending"] {
        let record = store.get_job_blocking(id).expect("get").expect("stored");
        assert_eq!(record.status, JobStatus::Failed);
        assert_eq!(record.reason.as_deref(), Some("agent_restart"));
        assert_eq!(record.exit_code, Some(-1));
        assert_eq!(record.ended_at_ms, Some(9_000));
        assert!(record
            .error
            .as_deref()
            .is_some_and(|e| e.contains("agent_restart")));
    }
    let done = store
        .get_job_blocking("done")
        .expect("get")
        .expect("stored");
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.exit_code, Some(0));
    assert!(store.interrupted_jobs_blocking().expect("again").is_empty());
    assert!(store
        .fail_interrupted_blocking("agent_restart", 9_500)
        .expect("again")
        .is_empty());
}

#[test]
fn counts_every_status() {
    let (_dir, store) = open();
    for id in ["a", "b", "c", "d"] {
        store
            .insert_job_blocking(new_job(id, "c", 1))
            .expect("insert");
    }
    store.mark_running_blocking("b", 1, None).expect("mark");
    store
        .finish_job_blocking("c", outcome(JobStatus::Completed, 0))
        .expect("finish");
    store
        .finish_job_blocking("d", outcome(JobStatus::Completed, 1))
        .expect("finish");
    assert_eq!(
        store.count_by_status_blocking().expect("count"),
        [
            (JobStatus::Pending, 1),
            (JobStatus::Running, 1),
            (JobStatus::Completed, 2),
            (JobStatus::Failed, 0),
            (JobStatus::Rejected, 0),
        ]
    );
}

#[test]
fn purge_keeps_unexpired_ids_unfinished_jobs_and_recent_jobs() {
    let (_dir, store) = open();
    let now_ms = 1_700_000_000_500;
    let now_s = 1_700_000_000;
    let old = 1_000;
    let jobs = [
        // (id, created_at_ms, ttl, finished)
        ("old-expired", old, now_s - 1, true),
        ("old-ttl-is-now", old, now_s, true),
        ("old-unexpired", old, now_s + 600, true),
        ("old-running-expired", old, now_s - 1, false),
        ("recent-expired", now_ms - 10, now_s - 1, true),
    ];
    for (id, created, ttl, finished) in jobs {
        store
            .insert_job_blocking(NewJob {
                ttl,
                ..new_job(id, "c", created)
            })
            .expect("insert");
        store
            .append_frames_blocking(
                id,
                &[StoredFrame {
                    seq: 1,
                    stream: "stdout".to_owned(),
                    data: b"x".to_vec(),
                    timestamp_ms: created,
                }],
            )
            .expect("frames");
        if finished {
            store
                .finish_job_blocking(id, outcome(JobStatus::Completed, 0))
                .expect("finish");
        } else {
            store
                .mark_running_blocking(id, created, None)
                .expect("mark");
        }
    }
    let deleted = store.purge_blocking(now_ms - 1_000, now_ms).expect("purge");
    assert_eq!(deleted, 1);
    assert_eq!(store.get_job_blocking("old-expired").expect("get"), None);
    assert!(store
        .frames_since_blocking("old-expired", 0)
        .expect("frames")
        .is_empty());
    for kept in [
        "old-ttl-is-now",
        "old-unexpired",
        "old-running-expired",
        "recent-expired",
    ] {
        assert!(
            store.get_job_blocking(kept).expect("get").is_some(),
            "{kept} must stay"
        );
        assert_eq!(
            store.frames_since_blocking(kept, 0).expect("frames").len(),
            1
        );
    }
    // A replay of a kept id is still recognised.
    assert!(matches!(
        store
            .insert_job_blocking(new_job("old-unexpired", "c", now_ms))
            .expect("insert"),
        InsertOutcome::Exists(_)
    ));
    assert_eq!(
        store.purge_blocking(now_ms - 1_000, now_ms).expect("again"),
        0
    );
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent.db");
    {
        let store = Store::open(&path).expect("open");
        store
            .insert_job_blocking(new_job("j", "c", 1))
            .expect("insert");
        store.mark_running_blocking("j", 2, None).expect("mark");
    }
    let store = Store::open(&path).expect("reopen");
    assert_eq!(status_of(&store, "j"), JobStatus::Running);
    assert_eq!(
        store
            .fail_interrupted_blocking("agent_restart", 3)
            .expect("fail"),
        ["j"]
    );
}

#[tokio::test]
async fn async_methods_work_end_to_end() {
    let (_dir, store) = open();
    assert_eq!(
        store
            .insert_job(new_job("j", "c", 1))
            .await
            .expect("insert"),
        InsertOutcome::Inserted
    );
    assert!(store
        .mark_running("j", 2, Some("s".to_owned()))
        .await
        .expect("mark"));
    assert!(store
        .finish_job("j", outcome(JobStatus::Completed, 0))
        .await
        .expect("finish"));
    let listed = store
        .list_jobs("c", Some(JobStatus::Completed), 5)
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        store.get_job("j").await.expect("get").map(|j| j.status),
        Some(JobStatus::Completed)
    );
    assert!(store
        .interrupted_jobs()
        .await
        .expect("interrupted")
        .is_empty());
    assert!(store
        .fail_interrupted("agent_restart", 3)
        .await
        .expect("fail")
        .is_empty());
    assert_eq!(
        store.count_by_status().await.expect("count")[2],
        (JobStatus::Completed, 1)
    );
    assert_eq!(store.purge(i64::MAX, i64::MAX).await.expect("purge"), 1);
}

#[test]
fn corrupt_status_is_an_error_not_a_panic() {
    let (dir, store) = open();
    store
        .insert_job_blocking(new_job("j", "c", 1))
        .expect("insert");
    let raw = Connection::open(dir.path().join("agent.db")).expect("raw open");
    // The CHECK constraint stops this, so an attacker must turn checks off first.
    raw.pragma_update(None, "ignore_check_constraints", "ON")
        .expect("pragma");
    raw.execute("UPDATE jobs SET status = 'bogus'", [])
        .expect("update");
    let err = store.get_job_blocking("j").expect_err("bogus status");
    assert!(matches!(err, StoreError::Sql { .. }), "{err:?}");
    assert!(err.to_string().contains("for job j"), "{err}");
}
