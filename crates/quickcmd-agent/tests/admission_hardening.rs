//! Issue 8's admission findings against the real agent: untrusted bytes never hold the
//! runtime, peer numbers never overflow, refusals keep the audit log small, one controller
//! cannot starve another, nothing the sandbox would refuse is accepted, and tiny writes do
//! not become one stored frame each.

use quickcmd_protocol::{ReadAuth, SandboxRequest};
use quickcmd_testkit::{body_from, metric, payload, read_to_close, unique, Config, TestAgent};
use reqwest::Method;

/// Finding 10: read-auth timestamps at the ends of `i64` are a 401, never a panic or 500.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_auth_timestamps_at_the_ends_of_i64_are_401() {
    let agent = TestAgent::start("ends-of-i64", Config::default());
    let secret = agent.secret_of("ctl-a");
    let path = "/api/v1/jobs/no-such-job";
    for timestamp in [i64::MIN, i64::MIN + 1, -1, i64::MAX - 1, i64::MAX] {
        let header = ReadAuth::sign("ctl-a", secret.as_bytes(), "GET", path, timestamp);
        let reply = agent
            .request(Method::GET, path, Some(header.header_value()))
            .await;
        reply.assert_error(401, "UNAUTHORIZED");
        // The same values as query parameters (the WebSocket form).
        let query = format!(
            "{path}?controller_id=ctl-a&timestamp={timestamp}&signature={}",
            header.signature
        );
        let reply = agent.request(Method::GET, &query, None).await;
        assert_eq!(reply.status, 401, "timestamp {timestamp}: {}", reply.text);
    }
    // The agent is still up and answers.
    assert_eq!(
        agent.request(Method::GET, "/health", None).await.status,
        200
    );
    assert!(
        !agent.log().contains("panicked"),
        "the agent panicked:\n{}",
        agent.log()
    );
}

/// Finding 8: values the sandbox refuses are refused before 202, with a clear message, and
/// nothing is stored or run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_the_sandbox_refuses_are_refused_before_202() {
    let agent = TestAgent::start("spec-checks", Config::default());
    let cases: Vec<(&str, SandboxRequest, &str, &str)> = vec![
        (
            "tiny cpu_limit",
            SandboxRequest {
                cpu_limit: Some(1e-300),
                ..Default::default()
            },
            "true",
            "cpu_limit",
        ),
        (
            "workdir //proc",
            SandboxRequest {
                workdir: Some("//proc".into()),
                ..Default::default()
            },
            "true",
            "not normalised",
        ),
        (
            "workdir with a mount option",
            SandboxRequest {
                workdir: Some("/work,size=0".into()),
                ..Default::default()
            },
            "true",
            "','",
        ),
        (
            "NUL in the command",
            SandboxRequest::default(),
            "echo a\0b",
            "NUL",
        ),
    ];
    for (what, sandbox, command, expected) in cases {
        let job_id = unique("spec");
        let mut p = payload("ctl-a", &job_id, command);
        p.sandbox = Some(sandbox);
        let reply = agent.post(agent.body(&p)).await;
        reply.assert_error(400, "INVALID_PAYLOAD");
        let message = reply.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            message.contains(expected),
            "{what}: {message:?} does not name {expected:?}"
        );
        agent.assert_refusal_audited("INVALID_PAYLOAD", Some(&job_id), Some("ctl-a"));
        agent
            .get_job("ctl-a", &job_id)
            .await
            .assert_error(404, "JOB_NOT_FOUND");
    }
    assert!(
        !agent.log().contains("job accepted"),
        "a refused job was accepted:\n{}",
        agent.log()
    );
}

/// An ~870 KB submit body whose `candidate_metadata` holds 80,000 keys, from a controller
/// the agent does not know (issue 8, finding 1).
fn metadata_bomb(job_id: &str) -> String {
    let mut metadata = String::with_capacity(900_000);
    metadata.push('{');
    for i in 0..80_000 {
        if i > 0 {
            metadata.push(',');
        }
        metadata.push_str(&format!("\"k{i}\":0"));
    }
    metadata.push('}');
    let now = quickcmd_testkit::now();
    let payload = format!(
        r#"{{"job_id":"{job_id}","prompt":"","command":"true","candidate_metadata":{metadata},"snapshot_metadata":"","ttl":{},"timestamp":{now},"controller_id":"nobody"}}"#,
        now + 600
    );
    body_from(&payload, &"0".repeat(64), "HMAC-SHA256")
}

/// Finding 1: bodies that are costly to parse are parsed off the async workers, so the
/// agent keeps answering while several are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_answered_while_large_bodies_are_parsed() {
    let agent = std::sync::Arc::new(TestAgent::start("parse-off-runtime", Config::default()));
    let body = metadata_bomb("bomb");
    assert!(body.len() > 800_000, "{} bytes", body.len());
    let posts: Vec<_> = (0..4)
        .map(|_| {
            let agent = agent.clone();
            let body = body.clone();
            tokio::spawn(async move { agent.post(body).await })
        })
        .collect();
    let mut health_answers = 0;
    while !posts.iter().all(|p| p.is_finished()) || health_answers == 0 {
        let reply = agent.request(Method::GET, "/health", None).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        health_answers += 1;
    }
    for post in posts {
        let reply = post.await.expect("post task");
        reply.assert_error(403, "CONTROLLER_NOT_ALLOWED");
    }
    eprintln!("/health answered {health_answers} times while 4 bodies were checked");
    // Refused rows of such bodies stay small: no metadata, a bounded command.
    let row = agent.assert_refusal_audited("CONTROLLER_NOT_ALLOWED", Some("bomb"), Some("nobody"));
    assert_eq!(
        row["details"]["verified"],
        serde_json::json!(false),
        "{row}"
    );
}

/// Finding 3: refused, unauthenticated submissions keep small rows, and a flood from one
/// source is summarized without losing the count.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_megabyte_posts_keeps_the_audit_small() {
    let agent = TestAgent::start(
        "refusal-flood",
        Config::default().set(
            "audit_refusals_per_source_per_minute",
            serde_json::json!(20),
        ),
    );
    let before = audit_size(&agent);
    let command = "x".repeat(1_000_000);
    let sent = 50;
    for i in 0..sent {
        let job_id = format!("flood-{i}");
        let mut p = payload("nobody", &job_id, &command);
        p.prompt = String::new();
        let body = quickcmd_testkit::signed_body(&p, "not-the-secret");
        assert!(body.len() > 1_000_000 && body.len() <= quickcmd_protocol::MAX_BODY_BYTES);
        agent
            .post(body)
            .await
            .assert_error(403, "CONTROLLER_NOT_ALLOWED");
    }
    let grown = audit_size(&agent).saturating_sub(before);
    eprintln!("{sent} refused 1 MB posts grew the audit files by {grown} bytes");
    assert!(grown < 2_000_000, "the audit grew by {grown} bytes");
    // Past the limit, each unauthenticated refusal was answered late (the tarpit)...
    assert_eq!(delayed(&agent).await, sent - 20);
    // ...but a refusal of a signed, verified job never is, wherever it comes from.
    let mut scoped = payload("ctl-a", &unique("scoped"), "true");
    scoped.required_scopes = Some(vec!["no-such-scope".to_string()]);
    agent
        .post(agent.body(&scoped))
        .await
        .assert_error(403, "INSUFFICIENT_SCOPES");
    assert_eq!(delayed(&agent).await, sent - 20);
    // The log is bounded like the audit: one line per refusal that got its own row.
    let logged = agent.log().matches("submission refused").count();
    assert!(
        (1..=20).contains(&logged),
        "{logged} 'submission refused' log lines for {sent} refusals (limit 20 per source)"
    );

    // The summary is written at shutdown at the latest; nothing is lost.
    let mut agent = agent;
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_exit().await;
    let rows: Vec<_> = agent
        .audit_rows()
        .into_iter()
        .filter(|r| r["kind"] == "submission" && r["accepted"] == serde_json::json!(false))
        .collect();
    let single = rows
        .iter()
        .filter(|r| r["details"]["summary"].is_null())
        .count() as u64;
    let summarized: u64 = rows
        .iter()
        .filter_map(|r| r["details"]["refusals"].as_u64())
        .sum();
    assert!(single < sent, "every refusal got its own row: {single}");
    // Every refusal counted: the flood's and the signed scope refusal made above (past the
    // limit too, so counted in the summary).
    assert_eq!(single + summarized, sent + 1, "{rows:#?}");
    for row in rows.iter().filter(|r| r["details"]["summary"].is_null()) {
        assert!(
            row["command"].as_str().is_some_and(|c| c.len() <= 256),
            "{row}"
        );
        assert_eq!(
            row["details"]["command"]["bytes"],
            serde_json::json!(1_000_000)
        );
        assert_eq!(row["details"]["verified"], serde_json::json!(false));
    }
    let summary = rows
        .iter()
        .find(|r| r["details"]["summary"] == serde_json::json!(true))
        .expect("a summary row");
    assert!(
        summary["details"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("more refusals from 127.0.0.1")),
        "{summary}"
    );
    let (code, report) = agent.audit_verify();
    assert_eq!(code, 0, "{report}");
}

/// A body over the limit is refused from its `Content-Length` without being read, and the
/// HTTP/1.1 answer says the connection closes, so a client does not reuse it for its next
/// request (HTTP/2 has no such header: the stream is reset instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_body_is_refused_with_connection_close() {
    let agent = TestAgent::start("oversize-close", Config::default());
    let pem = std::fs::read(agent.cert_path()).expect("the agent certificate");
    let cert = reqwest::Certificate::from_pem(&pem).expect("cert");
    let http = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .http1_only()
        .no_proxy()
        .build()
        .expect("client");
    let response = http
        .post(format!("{}/api/v1/jobs", agent.base))
        .header("content-type", "application/json")
        .body(vec![b'x'; quickcmd_protocol::MAX_BODY_BYTES + 1])
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(
        response
            .headers()
            .get("connection")
            .and_then(|v| v.to_str().ok()),
        Some("close")
    );
    // A refusal of a body that was read keeps the connection.
    let response = http
        .post(format!("{}/api/v1/jobs", agent.base))
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 400);
    assert!(response.headers().get("connection").is_none());
}

/// `quickcmd_agent_refusals_delayed_total` from `/metrics`.
async fn delayed(agent: &TestAgent) -> u64 {
    metric(
        &agent.metrics().await,
        "quickcmd_agent_refusals_delayed_total",
    )
    .expect("the delayed-refusals counter") as u64
}

/// The audit database and its WAL, in bytes.
fn audit_size(agent: &TestAgent) -> u64 {
    let db = agent.audit_db();
    ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", db.display())).ok())
        .map(|m| m.len())
        .sum()
}

/// Finding 4: one controller over its quota gets 429 naming the quota; another controller
/// is still admitted and gets the next free slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_controller_cannot_starve_another() {
    let agent = TestAgent::start(
        "quotas",
        Config::default()
            .set("max_concurrent_jobs", serde_json::json!(1))
            .set("max_queued_jobs", serde_json::json!(10))
            .set("max_queued_jobs_per_controller", serde_json::json!(2)),
    );
    let a: Vec<String> = (0..3).map(|i| unique(&format!("a{i}"))).collect();
    for id in &a {
        agent.submit("ctl-a", id, "sleep 30").await;
    }
    agent.wait_running("ctl-a", &a[0]).await;
    let over = unique("a-over");
    let reply = agent
        .post(agent.body(&payload("ctl-a", &over, "true")))
        .await;
    reply.assert_error(429, "QUEUE_FULL");
    let message = reply.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        message.contains("max_queued_jobs_per_controller"),
        "{message}"
    );
    assert!(reply.headers.get("retry-after").is_some());
    // ctl-b is admitted although ctl-a has jobs waiting...
    let b = unique("b");
    agent.submit("ctl-b", &b, "echo fair").await;
    // ...and gets the slot ctl-a's running job frees, before ctl-a's waiting ones.
    agent.cancel("ctl-a", &a[0]).await;
    let view = agent.wait_final("ctl-b", &b).await;
    assert_eq!(view.result.expect("result").stdout, "fair\n");
    assert_eq!(
        agent.view("ctl-a", &a[2]).await.status,
        quickcmd_protocol::JobStatus::Pending,
        "ctl-a's last job still waits"
    );
    for id in &a[1..] {
        agent.cancel("ctl-a", id).await;
    }
}

/// Finding 9: many tiny writes become few stored frames, with the output complete and in
/// order; a job writing more frames than `max_output_frames` stores a bounded number.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiny_writes_are_coalesced_and_stored_frames_are_bounded() {
    let agent = TestAgent::start("coalesce", Config::default());
    // 20,000 one-byte writes as fast as the shell goes.
    let fast = unique("tiny");
    agent
        .submit(
            "ctl-a",
            &fast,
            "i=0; while [ $i -lt 20000 ]; do printf x; i=$((i+1)); done",
        )
        .await;
    let ws = agent.subscribe("ctl-a", &fast, None).await;
    let transcript = read_to_close(ws).await;
    transcript.assert_complete(1, quickcmd_protocol::JobStatus::Completed, 0);
    assert_eq!(transcript.text("stdout"), "x".repeat(20_000));
    // One frame per 8 KiB or 5 ms, not one per write.
    eprintln!(
        "20,000 writes arrived as {} frames",
        transcript.frames.len()
    );
    assert!(
        transcript.frames.len() < 2_000,
        "{} frames",
        transcript.frames.len()
    );
    let view = agent.wait_final("ctl-a", &fast).await;
    let result = view.result.expect("result");
    assert_eq!(
        result.stdout,
        "x".repeat(20_000),
        "stored output is complete"
    );
    assert!(!result.stdout_truncated, "{result:?}");

    drop(agent);
    // 200 writes 20 ms apart: one frame each, more than the 20 stored frames allowed.
    let agent = TestAgent::start(
        "frame-cap",
        Config::default().set("max_output_frames", serde_json::json!(20)),
    );
    let slow = unique("spaced");
    agent
        .submit(
            "ctl-a",
            &slow,
            "i=0; while [ $i -lt 200 ]; do printf '%03d\\n' $i; sleep 0.02; i=$((i+1)); done",
        )
        .await;
    let ws = agent.subscribe("ctl-a", &slow, None).await;
    let transcript = read_to_close(ws).await;
    let expected: String = (0..200).map(|i| format!("{i:03}\n")).collect();
    assert_eq!(
        transcript.text("stdout"),
        expected,
        "live output is complete"
    );
    let view = agent.wait_final("ctl-a", &slow).await;
    let result = view.result.expect("result");
    assert!(result.stdout.starts_with("000\n"), "{}", result.stdout);
    assert!(result.stdout.ends_with("199\n"), "{}", result.stdout);
    // A late subscriber replays what was stored: at most 20 frames, the marker, the final.
    let replay = read_to_close(agent.subscribe("ctl-a", &slow, None).await).await;
    assert!(
        replay.frames.len() <= 22,
        "{} stored frames replayed",
        replay.frames.len()
    );
}
