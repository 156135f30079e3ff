//! Faults the agent must survive, against the real binary, real TLS, real SQLite and a real
//! Docker engine: a crash (`kill -9`) with jobs running, the Docker engine stopping under
//! running jobs, a data directory on a full disk, a controller whose clock is off. Each test
//! fails on an agent without the matching recovery. (The never-reading subscriber and the
//! slowloris connections live in `hostile.rs`.)

use std::process::Command;
use std::time::{Duration, Instant};

use quickcmd_protocol::{reason, JobStatus, ReadAuth};
use quickcmd_testkit::{
    containers, eventually, now, payload, unique, Config, PrivateEngine, TestAgent, PATIENCE,
};
use serde_json::json;

/// Asserts `quickcmd-agent audit verify` finds the chain intact.
#[track_caller]
fn assert_chain_intact(agent: &TestAgent) {
    let (code, output) = agent.audit_verify();
    assert_eq!(code, 0, "audit verify: {output}");
    assert!(output.contains("audit chain intact"), "{output}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_with_eight_jobs_running_fails_them_on_restart_and_leaves_nothing() {
    let mut agent = TestAgent::start(
        "kill9",
        Config::default().set("max_concurrent_jobs", json!(8)),
    );
    let mut bodies = Vec::new();
    for _ in 0..8 {
        let job_id = unique("k9");
        let body = agent.body(&payload("ctl-a", &job_id, "sleep 600"));
        agent.post(body.clone()).await.assert_accepted(&job_id);
        bodies.push((job_id, body));
    }
    for (job_id, _) in &bodies {
        agent.wait_running("ctl-a", job_id).await;
    }
    let label = format!("label=quickcmd.agent={}", agent.agent_id);
    // A job is `running` from its audit row on; its container is created just after.
    eventually(PATIENCE, "one sandbox per running job", || {
        (containers(&label).len() == 8).then_some(())
    });

    agent.kill9();
    agent.spawn();

    for (job_id, _) in &bodies {
        let view = agent.wait_final("ctl-a", job_id).await;
        let result = view.result.expect("a final job has a result");
        assert_eq!(view.status, JobStatus::Failed, "{job_id}: {result:?}");
        assert_eq!(
            result.reason.as_deref(),
            Some(reason::AGENT_RESTART),
            "{result:?}"
        );
        let rows = agent.audit_for(job_id);
        assert!(
            rows.iter()
                .any(|r| r["kind"] == "recovery" && r["reason"] == reason::AGENT_RESTART),
            "no recovery row for {job_id}: {rows:?}"
        );
    }
    assert!(
        containers(&label).is_empty(),
        "sandboxes of the killed agent are left: {:?}",
        containers(&label)
    );
    assert_chain_intact(&agent);

    // A replay of the same signed body is the idempotent retry: it answers the job's state
    // and runs nothing. The same id with another payload is refused.
    for (job_id, body) in &bodies {
        let replay = agent.post(body.clone()).await;
        assert_eq!(replay.assert_accepted(job_id), "failed", "{}", replay.text);
        let other = agent.body(&payload("ctl-a", job_id, "echo again"));
        agent.post(other).await.assert_error(409, "DUPLICATE_JOB");
    }
    assert!(containers(&label).is_empty(), "a replay started a sandbox");
    for (job_id, _) in &bodies {
        assert_eq!(agent.view("ctl-a", job_id).await.status, JobStatus::Failed);
    }
    assert_chain_intact(&agent);
}

/// `GET /health` as (status, `checks.docker`).
async fn docker_health(agent: &TestAgent) -> (u16, String) {
    let reply = agent.request(reqwest::Method::GET, "/health", None).await;
    let docker = reply.json()["checks"]["docker"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    (reply.status, docker)
}

async fn wait_health(agent: &TestAgent, status: u16) -> String {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let (got, docker) = docker_health(agent).await;
        if got == status {
            return docker;
        }
        assert!(
            Instant::now() < deadline,
            "/health never answered {status} (last {got}, docker: {docker})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn docker_engine_stopping_mid_job_ends_jobs_as_sandbox_errors_and_health_recovers() {
    let mut engine = PrivateEngine::start();
    let agent = TestAgent::start(
        "dockerd-stop",
        Config::default().set("docker_host", json!(engine.host())),
    );
    assert_eq!(wait_health(&agent, 200).await, "ok");
    let jobs: Vec<String> = (0..2).map(|_| unique("eng")).collect();
    for job_id in &jobs {
        agent.submit("ctl-a", job_id, "sleep 600").await;
    }
    for job_id in &jobs {
        agent.wait_running("ctl-a", job_id).await;
    }

    engine.stop();
    for job_id in &jobs {
        let view = agent.wait_final("ctl-a", job_id).await;
        let result = view.result.expect("a final job has a result");
        assert_eq!(
            (view.status, result.reason.as_deref()),
            (JobStatus::Failed, Some(reason::SANDBOX_ERROR)),
            "{result:?}; agent log:\n{}",
            agent.log()
        );
    }
    let docker = wait_health(&agent, 503).await;
    assert!(docker.starts_with("unreachable"), "checks.docker: {docker}");
    // Jobs accepted while the engine is away end as sandbox errors too, never hang.
    let while_down = unique("down");
    agent.submit("ctl-a", &while_down, "echo never").await;
    let view = agent.wait_final("ctl-a", &while_down).await;
    assert_eq!(
        view.result.and_then(|r| r.reason).as_deref(),
        Some(reason::SANDBOX_ERROR)
    );

    // The engine comes back: the agent notices by itself, without a restart.
    engine.resume();
    assert_eq!(wait_health(&agent, 200).await, "ok");
    let after = unique("back");
    agent.submit("ctl-a", &after, "echo back").await;
    let view = agent.wait_final("ctl-a", &after).await;
    let result = view.result.expect("result");
    assert_eq!(
        (view.status, result.stdout.as_str()),
        (JobStatus::Completed, "back\n")
    );
    // Nothing of the interrupted jobs is left in the engine once it is back.
    let filter = format!("label=quickcmd.agent={}", agent.agent_id);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let listed = Command::new("docker")
            .args(["-H", &engine.host(), "ps", "-aq", "--filter", &filter])
            .output()
            .expect("docker ps on the private engine");
        let left = String::from_utf8_lossy(&listed.stdout).trim().to_string();
        if listed.status.success() && left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "containers of the interrupted jobs are left in the engine: {left}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_chain_intact(&agent);
    drop(agent);
    drop(engine);
}

/// A tmpfs mounted over a directory for the life of the guard (lazily unmounted on drop).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, bytes: u64) -> Tmpfs {
        std::fs::create_dir_all(at).expect("create the mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes},mode=0700")])
            .arg("tmpfs")
            .arg(at)
            .status()
            .expect("run mount (these tests run as root)");
        assert!(
            status.success(),
            "mount -t tmpfs at {} failed",
            at.display()
        );
        Tmpfs(at.to_path_buf())
    }

    /// Fills the file system to the last byte; returns the filler file.
    fn fill(&self) -> std::path::PathBuf {
        use std::io::Write;
        let filler = self.0.join("filler");
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let block = vec![0u8; 64 * 1024];
        let mut size = block.len();
        while size > 0 {
            if file.write_all(&block[..size]).is_err() {
                size /= 2;
            }
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `PRAGMA integrity_check` of a database file, read-only.
fn integrity(path: &std::path::Path) -> String {
    let db =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    db.query_row("PRAGMA integrity_check", [], |row| row.get(0))
        .unwrap_or_else(|e| panic!("integrity_check of {}: {e}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_data_directory_refuses_clearly_corrupts_nothing_and_recovers() {
    let mut agent = TestAgent::prepare("disk-full", Config::default());
    let tmpfs = Tmpfs::mount(&agent.data_dir(), 8 * 1024 * 1024);
    agent.spawn();
    let before = unique("before");
    agent.submit("ctl-a", &before, "echo before").await;
    agent.wait_final("ctl-a", &before).await;

    let filler = tmpfs.fill();
    let full = unique("full");
    let reply = agent
        .post(agent.body(&payload("ctl-a", &full, "echo full")))
        .await;
    assert_eq!(reply.status, 507, "{}", reply.text);
    reply.assert_error(507, "STORAGE_FULL");
    assert!(
        reply.headers.contains_key("retry-after"),
        "{:?}",
        reply.headers
    );
    // Reads still work, and say nothing of a job that was refused.
    assert_eq!(
        agent.view("ctl-a", &before).await.status,
        JobStatus::Completed
    );
    assert_eq!(agent.get_job("ctl-a", &full).await.status, 404);
    let health = agent.request(reqwest::Method::GET, "/health", None).await;
    assert!(
        health.status == 200 || health.status == 503,
        "{}",
        health.text
    );

    for db in [agent.data_dir().join("agent.db"), agent.audit_db()] {
        assert_eq!(integrity(&db), "ok", "{}", db.display());
    }
    assert_chain_intact(&agent);

    std::fs::remove_file(&filler).expect("remove the filler");
    let after = unique("after");
    agent.submit("ctl-a", &after, "echo after").await;
    let view = agent.wait_final("ctl-a", &after).await;
    assert_eq!(view.result.expect("result").stdout, "after\n");
    assert_chain_intact(&agent);
    drop(agent);
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn controller_clock_outside_the_window_is_refused_with_the_skew_codes() {
    let agent = TestAgent::start(
        "clock",
        Config::default().set("clock_skew_seconds", json!(300)),
    );
    // Submissions: behind and ahead of the agent's clock, each audited.
    for (offset, code) in [(-400, "JOB_TOO_OLD"), (400, "TIMESTAMP_IN_FUTURE")] {
        let job_id = unique("skew");
        let mut p = payload("ctl-a", &job_id, "echo skew");
        p.timestamp = now() + offset;
        p.ttl = p.timestamp + 600;
        agent.post(agent.body(&p)).await.assert_error(401, code);
        agent.assert_refusal_audited(code, Some(&job_id), Some("ctl-a"));
    }
    // Reads: correctly signed, but at a time outside the window — including the ends of
    // i64, where a plain subtraction overflows.
    let job_id = unique("read");
    agent.submit("ctl-a", &job_id, "echo read").await;
    let path = format!("/api/v1/jobs/{job_id}");
    for timestamp in [now() - 400, now() + 400, i64::MIN, i64::MAX, 0] {
        let auth = ReadAuth::sign(
            "ctl-a",
            agent.secret_of("ctl-a").as_bytes(),
            "GET",
            &path,
            timestamp,
        );
        let reply = agent
            .request(reqwest::Method::GET, &path, Some(auth.header_value()))
            .await;
        reply.assert_error(401, "UNAUTHORIZED");
        assert!(
            reply.json()["error"]
                .as_str()
                .is_some_and(|e| e.contains("clock window")),
            "{}",
            reply.text
        );
        // The same in the query form WebSocket clients use.
        let refused = agent
            .ws_connect(&job_id, &auth.query_string(), None)
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(refused.contains("401"), "stream at {timestamp}: {refused}");
    }
    // Inside the window the same read is served.
    assert_eq!(agent.get_job("ctl-a", &job_id).await.status, 200);
}
