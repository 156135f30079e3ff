//! `/metrics` and `/health` after a known mix of jobs, and the `max_concurrent_jobs` limit.

use nix::sys::signal::Signal;
use quickcmd_protocol::{JobStatus, SandboxRequest};
use quickcmd_testkit::{containers, metric, next_frame, payload, unique, Config, TestAgent};
use reqwest::Method;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_each_job_once_and_refusals_by_code() {
    let agent = TestAgent::start("metrics", Config::default());
    let completed = unique("m-ok");
    let nonzero = unique("m-exit");
    let timed_out = unique("m-timeout");
    let ok_body = agent.body(&payload("ctl-a", &completed, "echo ok"));
    agent
        .post(ok_body.clone())
        .await
        .assert_accepted(&completed);
    agent.submit("ctl-a", &nonzero, "exit 3").await;
    let mut p = payload("ctl-a", &timed_out, "sleep 10");
    p.sandbox = Some(SandboxRequest {
        timeout_seconds: Some(1),
        ..SandboxRequest::default()
    });
    agent.post(agent.body(&p)).await.assert_accepted(&timed_out);
    for id in [&completed, &nonzero, &timed_out] {
        agent.wait_final("ctl-a", id).await;
    }
    // A retry, a forged body and a rejected job change no job counter but their own.
    agent.post(ok_body).await.assert_accepted(&completed);
    let forged = payload("ctl-a", &unique("m-forged"), "true");
    agent
        .post(quickcmd_testkit::signed_body(
            &forged,
            &agent.secret_of("ctl-b"),
        ))
        .await
        .assert_error(401, "INVALID_SIGNATURE");
    let mut scoped = payload("ctl-a", &unique("m-scope"), "true");
    scoped.required_scopes = Some(vec!["admin".into()]);
    agent
        .post(agent.body(&scoped))
        .await
        .assert_error(403, "INSUFFICIENT_SCOPES");

    // One job running now.
    let running = unique("m-run");
    agent.submit("ctl-a", &running, "echo go; sleep 30").await;
    let mut ws = agent.subscribe("ctl-a", &running, None).await;
    let mut close = None;
    assert_eq!(
        next_frame(&mut ws, &mut close).await.expect("frame").data,
        "go\n"
    );

    let text = agent.metrics().await;
    for (name, value) in [
        ("quickcmd_agent_jobs_total", 4.0),
        ("quickcmd_agent_jobs_running", 1.0),
        ("quickcmd_agent_jobs_completed", 2.0),
        ("quickcmd_agent_jobs_failed", 1.0),
        ("quickcmd_agent_jobs_rejected_total", 1.0),
        ("quickcmd_agent_queue_depth", 0.0),
        ("quickcmd_agent_websocket_subscribers", 1.0),
        (
            r#"quickcmd_agent_submissions_refused_total{code="INVALID_SIGNATURE"}"#,
            1.0,
        ),
        (
            r#"quickcmd_agent_submissions_refused_total{code="INSUFFICIENT_SCOPES"}"#,
            1.0,
        ),
        ("quickcmd_agent_job_duration_seconds_count", 3.0),
        ("quickcmd_agent_sandbox_start_seconds_count", 3.0),
    ] {
        assert_eq!(metric(&text, name), Some(value), "{name} in\n{text}");
    }
    for line in [
        "# TYPE quickcmd_agent_jobs_total counter",
        "# TYPE quickcmd_agent_jobs_running gauge",
        "# TYPE quickcmd_agent_jobs_completed counter",
        "# TYPE quickcmd_agent_jobs_failed counter",
        "# TYPE quickcmd_agent_job_duration_seconds histogram",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }

    agent
        .cancel("ctl-a", &running)
        .await
        .assert_accepted(&running);
    agent.wait_final("ctl-a", &running).await;
    drop(ws);
    let text = agent.metrics().await;
    assert_eq!(
        metric(&text, "quickcmd_agent_jobs_running"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "quickcmd_agent_jobs_failed"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "quickcmd_agent_jobs_total"),
        Some(4.0),
        "{text}"
    );

    // Neither endpoint needs auth; health says healthy with its checks.
    let health = agent.request(Method::GET, "/health", None).await;
    assert_eq!(health.status, 200, "{}", health.text);
    let body = health.json();
    assert_eq!(body["status"], json!("healthy"));
    let timestamp = body["timestamp"].as_i64().expect("unix timestamp");
    assert!((timestamp - quickcmd_testkit::now()).abs() < 60, "{body}");
    assert_eq!(body["checks"]["docker"], json!("ok"), "{body}");
    assert_eq!(body["checks"]["database"], json!("ok"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_max_concurrent_jobs_run_at_once() {
    let agent = TestAgent::start(
        "concurrency",
        Config::default().set("max_concurrent_jobs", json!(2)),
    );
    let ids: Vec<String> = (0..3).map(|_| unique("conc")).collect();
    for id in &ids {
        agent.submit("ctl-a", id, "echo go; sleep 4").await;
    }
    // The first two run; the third waits for a slot.
    for id in &ids[..2] {
        let mut ws = agent.subscribe("ctl-a", id, None).await;
        let mut close = None;
        assert_eq!(
            next_frame(&mut ws, &mut close).await.expect("frame").data,
            "go\n"
        );
    }
    let third = agent.view("ctl-a", &ids[2]).await;
    assert_eq!(third.status, JobStatus::Pending, "{third:?}");
    for id in &ids[..2] {
        assert_eq!(agent.view("ctl-a", id).await.status, JobStatus::Running);
    }
    let text = agent.metrics().await;
    assert_eq!(
        metric(&text, "quickcmd_agent_jobs_running"),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "quickcmd_agent_queue_depth"),
        Some(1.0),
        "{text}"
    );

    let mut results = Vec::new();
    for id in &ids {
        let result = agent.wait_final("ctl-a", id).await.result.expect("result");
        assert_eq!(result.status, JobStatus::Completed);
        results.push(result);
    }
    // The third started only once one of the first two had ended (RFC 3339 UTC with
    // milliseconds sorts as text).
    let first_end = results[..2]
        .iter()
        .map(|r| r.end_time.clone())
        .min()
        .expect("two results");
    assert!(
        results[2].start_time >= first_end,
        "third started at {} before a slot freed at {first_end}",
        results[2].start_time
    );
    let late_start = results[..2]
        .iter()
        .map(|r| r.start_time.clone())
        .max()
        .expect("two results");
    assert!(late_start < first_end, "the first two ran at the same time");
}

/// Waits until the agent's warm pool reports `idle` ready containers.
async fn wait_pool_idle(agent: &TestAgent, idle: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let text = agent.metrics().await;
        if metric(&text, "quickcmd_agent_warm_pool_idle") == Some(idle) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "pool never reached {idle} idle:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// With `warm_pool_size: 2` a job of the default profile runs in a pool container (counted)
/// and the pool is visible in `/metrics`; after a crash the next start sweeps the old pool
/// but spares its own, and SIGTERM leaves no pool container behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_pool_serves_default_jobs_and_shows_in_metrics() {
    let mut agent = TestAgent::start("pool", Config::default().set("warm_pool_size", json!(2)));
    let pool_filter = format!("label=quickcmd.pool={}", agent.agent_id);
    // The pool fills in the background; wait for it so the first job is a claim, not a miss.
    wait_pool_idle(&agent, 2.0).await;
    let plain = unique("pool-plain");
    agent
        .submit("ctl-a", &plain, "echo \"$QUICKCMD_X\"; id -u; exit 5")
        .await;
    let view = agent.wait_final("ctl-a", &plain).await;
    let result = view.result.expect("result");
    assert_eq!(result.exit_code, 5);
    assert_eq!(result.stdout, "\n65534\n");

    let text = agent.metrics().await;
    assert_eq!(metric(&text, "quickcmd_agent_warm_pool_size"), Some(2.0));
    assert_eq!(
        metric(&text, "quickcmd_agent_warm_pool_claimed_total"),
        Some(1.0)
    );
    assert_eq!(
        metric(&text, "quickcmd_agent_warm_pool_misses_total"),
        Some(0.0)
    );
    assert_eq!(
        metric(&text, "quickcmd_agent_warm_pool_cold_fallbacks_total"),
        Some(0.0)
    );
    assert_eq!(result.status, JobStatus::Completed);

    // A crash leaves the pool's containers; the next start removes them and keeps its own.
    wait_pool_idle(&agent, 2.0).await;
    agent.kill9();
    let left = containers(&pool_filter);
    assert_eq!(left.len(), 2, "the killed agent's pool: {left:?}");
    agent.spawn();
    wait_pool_idle(&agent, 2.0).await;
    let now = containers(&pool_filter);
    assert_eq!(now.len(), 2, "one pool after the restart: {now:?}");
    assert!(
        now.iter().all(|id| !left.contains(id)),
        "the start-up sweep removed the old pool ({left:?}), not the new one ({now:?})"
    );

    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit().await.success());
    assert_eq!(
        containers(&pool_filter),
        Vec::<String>::new(),
        "SIGTERM drains the pool"
    );
}
