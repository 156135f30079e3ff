//! The agent process's life: a crash (SIGKILL) and restart on the same data dir, the audit
//! chain catching an edited row, config reload on SIGHUP, and the drain on SIGTERM.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use quickcmd_protocol::JobStatus;
use quickcmd_testkit::{
    containers, metric, next_frame, payload, unique, Config, TestAgent, PATIENCE,
};
use serde_json::json;

/// Waits until the job's output frames are in the job store on disk (they are flushed a
/// few times a second), so a crash cannot lose them.
async fn wait_frames_stored(agent: &TestAgent, job_id: &str, count: i64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let stored = rusqlite::Connection::open_with_flags(
            agent.data_dir().join("agent.db"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|db| {
            db.query_row(
                "SELECT count(*) FROM frames WHERE job_id = ?1",
                [job_id],
                |row| row.get::<_, i64>(0),
            )
        })
        .unwrap_or(0);
        if stored >= count {
            return;
        }
        assert!(Instant::now() < deadline, "frames of {job_id} never stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_killed_with_the_agent_is_agent_restart_after_restart() {
    let mut agent = TestAgent::start("crash", Config::default());
    let job_id = unique("crash");
    let body = agent.body(&payload("ctl-a", &job_id, "echo started; sleep 60"));
    agent.post(body.clone()).await.assert_accepted(&job_id);
    {
        let mut ws = agent.subscribe("ctl-a", &job_id, None).await;
        let mut close = None;
        let first = next_frame(&mut ws, &mut close).await.expect("first frame");
        assert_eq!(first.data, "started\n");
    }
    wait_frames_stored(&agent, &job_id, 1).await;
    let by_agent = format!("label=quickcmd.agent={}", agent.agent_id);
    assert_eq!(containers(&by_agent).len(), 1);

    agent.kill9();
    // The crash leaves the sandbox behind…
    assert_eq!(
        containers(&format!("label=quickcmd.job={job_id}")).len(),
        1,
        "the container outlives a SIGKILLed agent"
    );

    // …and the restarted agent fails the job and removes it.
    agent.spawn();
    let view = agent.view("ctl-a", &job_id).await;
    assert_eq!(view.status, JobStatus::Failed, "{view:?}");
    let result = view.result.expect("result");
    assert_eq!(
        (result.reason.as_deref(), result.exit_code),
        (Some("agent_restart"), -1),
        "{result:#?}"
    );
    assert_eq!(
        result.stdout, "started\n",
        "output stored before the crash survives"
    );
    assert!(
        containers(&by_agent).is_empty(),
        "no container labelled with this agent remains"
    );
    // The stored frames and the final frame replay after the restart.
    let transcript =
        quickcmd_testkit::read_to_close(agent.subscribe("ctl-a", &job_id, None).await).await;
    transcript.assert_complete(1, JobStatus::Failed, -1);
    assert_eq!(transcript.text("stdout"), "started\n");

    // The id is remembered: the same body is still a retry, another payload a duplicate.
    assert_eq!(agent.post(body).await.assert_accepted(&job_id), "failed");
    let other = agent.body(&payload("ctl-a", &job_id, "echo again"));
    agent.post(other).await.assert_error(409, "DUPLICATE_JOB");
    let metrics = agent.metrics().await;
    assert_eq!(
        metric(&metrics, "quickcmd_agent_jobs_total"),
        Some(0.0),
        "{metrics}"
    );

    let rows = agent.audit_for(&job_id);
    assert!(
        rows.iter().any(|r| r["kind"] == "recovery"
            && r["status"] == "failed"
            && r["reason"] == "agent_restart"
            && r["exit_code"] == json!(-1)),
        "{rows:#?}"
    );
    assert!(
        agent
            .audit_rows()
            .iter()
            .filter(|r| r["kind"] == "startup")
            .count()
            == 2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_passes_then_names_an_edited_row() {
    let mut agent = TestAgent::start("audit", Config::default());
    let mut ids = Vec::new();
    for command in ["echo one", "echo two", "exit 4"] {
        let job_id = unique("audit");
        agent.submit("ctl-a", &job_id, command).await;
        ids.push(job_id);
    }
    for id in &ids {
        agent.wait_final("ctl-a", id).await;
    }
    let mut forged = payload("ctl-a", &unique("audit"), "true");
    forged.prompt = "forged".into();
    agent
        .post(quickcmd_testkit::signed_body(
            &forged,
            &agent.secret_of("ctl-b"),
        ))
        .await
        .assert_error(401, "INVALID_SIGNATURE");

    let (code, out) = agent.audit_verify();
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("intact"), "{out}");

    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit().await.success());
    let (code, out) = agent.audit_verify();
    assert_eq!(code, 0, "{out}");

    let db = rusqlite::Connection::open(agent.audit_db()).expect("open the audit db");
    let row_id: i64 = db
        .query_row(
            "SELECT id FROM audit_log WHERE job_id = ?1 AND kind = 'submission'",
            [&ids[1]],
            |row| row.get(0),
        )
        .expect("the submission row of the second job");
    let refused = db.execute(
        "UPDATE audit_log SET command = 'rm -rf /' WHERE id = ?1",
        [row_id],
    );
    assert!(
        refused.is_err_and(|e| e.to_string().contains("append-only")),
        "the trigger refuses an UPDATE"
    );
    db.execute_batch("DROP TRIGGER audit_log_no_update;")
        .expect("drop the trigger");
    let changed = db
        .execute(
            "UPDATE audit_log SET command = 'rm -rf /' WHERE id = ?1",
            [row_id],
        )
        .expect("edit the row");
    assert_eq!(changed, 1);
    drop(db);

    let (code, out) = agent.audit_verify();
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("row {row_id}")),
        "names the edited row: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_controllers_and_keeps_the_old_config_when_the_new_is_broken() {
    let config = Config {
        controllers: Vec::new(),
        ..Config::default()
    }
    .shared(&["ctl-s1", "ctl-s2"]);
    let mut agent = TestAgent::start("reload", config.clone());
    agent.submit("ctl-s2", &unique("reload"), "true").await;

    let reloaded = config.shared(&["ctl-s1", "ctl-s3"]);
    agent.write_config(reloaded.clone());
    agent.signal(Signal::SIGHUP);
    agent.wait_log("config reloaded", 1).await;
    let removed = payload("ctl-s2", &unique("reload"), "true");
    agent
        .post(agent.body(&removed))
        .await
        .assert_error(403, "CONTROLLER_NOT_ALLOWED");
    agent.assert_refusal_audited(
        "CONTROLLER_NOT_ALLOWED",
        Some(&removed.job_id),
        Some("ctl-s2"),
    );
    agent.submit("ctl-s3", &unique("reload"), "true").await;
    agent.submit("ctl-s1", &unique("reload"), "true").await;

    // A typo'd key: refused, and the running config stays.
    let broken = format!("{}bogus_key: 1\n", agent.config_text());
    agent.write_config_text(&broken);
    agent.signal(Signal::SIGHUP);
    agent.wait_log("config reload refused", 1).await;
    assert!(agent.log().contains("bogus_key"), "the log names the key");
    assert!(agent.is_running());
    agent.submit("ctl-s3", &unique("reload"), "true").await;
    agent
        .post(agent.body(&payload("ctl-s2", &unique("reload"), "true")))
        .await
        .assert_error(403, "CONTROLLER_NOT_ALLOWED");
    assert_eq!(agent.log().matches("config reloaded").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_fails_what_is_left_and_exits_zero() {
    let mut agent = TestAgent::start(
        "drain",
        Config::default()
            .set("shutdown_grace_seconds", json!(1))
            .set("max_concurrent_jobs", json!(1)),
    );
    let running = unique("drain-run");
    let waiting = unique("drain-wait");
    agent.submit("ctl-a", &running, "echo go; sleep 30").await;
    agent.submit("ctl-a", &waiting, "echo never").await;
    {
        let mut ws = agent.subscribe("ctl-a", &running, None).await;
        let mut close = None;
        let first = next_frame(&mut ws, &mut close).await.expect("first frame");
        assert_eq!(first.data, "go\n");
    }
    assert_eq!(
        agent.view("ctl-a", &waiting).await.status,
        JobStatus::Pending
    );

    agent.signal(Signal::SIGTERM);
    // A submit on an open connection while the agent drains is refused with 503 (if the
    // drain is over before one gets through, the connection is simply gone).
    let mut late_accepted = Vec::new();
    let mut refused_during_drain = None;
    while agent.is_running() {
        let job_id = unique("drain-late");
        let body = agent.body(&payload("ctl-a", &job_id, "echo late"));
        match agent.try_post(body).await {
            Ok(reply) if reply.status == 503 => {
                reply.assert_error(503, "SHUTTING_DOWN");
                eprintln!("a submit during the drain was refused with 503 SHUTTING_DOWN");
                refused_during_drain = Some(job_id);
                break;
            }
            Ok(reply) => {
                // Only possible before the signal was handled.
                reply.assert_accepted(&job_id);
                late_accepted.push(job_id);
            }
            Err(_) => break,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = agent.wait_exit().await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        agent.log()
    );
    assert!(
        containers(&format!("label=quickcmd.agent={}", agent.agent_id)).is_empty(),
        "the drain removes its sandboxes"
    );

    agent.spawn();
    let result = agent
        .wait_final("ctl-a", &running)
        .await
        .result
        .expect("result");
    assert_eq!(
        (result.status, result.reason.as_deref(), result.exit_code),
        (JobStatus::Failed, Some("agent_shutdown"), 137),
        "{result:#?}"
    );
    assert_eq!(result.stdout, "go\n");
    for id in std::iter::once(&waiting).chain(&late_accepted) {
        let result = agent.wait_final("ctl-a", id).await.result.expect("result");
        assert_eq!(
            (result.status, result.reason.as_deref(), result.exit_code),
            (JobStatus::Failed, Some("agent_shutdown"), -1),
            "a job still queued at shutdown never starts: {result:#?}"
        );
    }
    let rows = agent.audit_rows();
    assert!(rows.iter().any(|r| r["kind"] == "shutdown"), "{rows:#?}");
    if let Some(job_id) = refused_during_drain {
        assert!(
            rows.iter().any(|r| r["kind"] == "submission"
                && r["job_id"] == json!(job_id)
                && r["accepted"] == json!(false)
                && r["code"] == "SHUTTING_DOWN"),
            "the refusal during the drain is audited: {rows:#?}"
        );
        agent
            .get_job("ctl-a", &job_id)
            .await
            .assert_error(404, "JOB_NOT_FOUND");
    }
    assert!(
        !rows
            .iter()
            .any(|r| r["kind"] == "recovery" && r["job_id"] == json!(running)),
        "a drained job needs no recovery"
    );
}
