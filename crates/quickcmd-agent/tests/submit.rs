//! `POST /api/v1/jobs` against the real agent: every row of protocol-v1's check table with
//! its status, code and audit row; idempotent resubmission; rejected jobs; the queue limit.

use quickcmd_protocol::{sign, JobStatus, SandboxRequest, MAX_BODY_BYTES};
use quickcmd_testkit::{
    body_from, metric, now, object, payload, replace_once, signed_body, unique, Config, TestAgent,
};
use serde_json::json;

/// `ctl-a` and `ctl-b` with their own secrets; `ctl-s1` and `ctl-s2` share one secret
/// (so a one-byte change of the controller id still names an allowed controller);
/// `ctl-scoped` holds scopes.
fn table_config() -> Config {
    Config::default()
        .shared(&["ctl-s1", "ctl-s2"])
        .shared_scopes("ctl-s1", &["scope-a"])
        .controller("ctl-scoped", &["deploy", "sandbox:network"])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_of_exactly_one_mib_is_accepted_and_one_byte_more_is_413() {
    let agent = TestAgent::start("size", table_config());
    let job_id = unique("size");
    let body = agent.body(&payload("ctl-a", &job_id, "true"));
    // Pad with whitespace between tokens: still the same JSON, same signed payload bytes.
    let pad = MAX_BODY_BYTES - body.len();
    let exact = format!("{{{}{}", " ".repeat(pad), &body[1..]);
    assert_eq!(exact.len(), MAX_BODY_BYTES);
    let over = format!("{{{}{}", " ".repeat(pad + 1), &body[1..]);
    assert_eq!(over.len(), MAX_BODY_BYTES + 1);

    let reply = agent.post(over).await;
    reply.assert_error(413, "PAYLOAD_TOO_LARGE");
    agent.assert_refusal_audited("PAYLOAD_TOO_LARGE", None, None);
    // Nothing of the refused body was stored: the same id is still free.
    agent
        .get_job("ctl-a", &job_id)
        .await
        .assert_error(404, "JOB_NOT_FOUND");

    let reply = agent.post(exact).await;
    assert_eq!(reply.assert_accepted(&job_id), "pending");
    let row = agent.last_submission();
    assert_eq!(row["accepted"], json!(true), "{row}");
    assert_eq!(row["job_id"], json!(job_id), "{row}");
    let view = agent.wait_final("ctl-a", &job_id).await;
    assert_eq!(view.status, JobStatus::Completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_bodies_are_400() {
    let agent = TestAgent::start("malformed", table_config());

    for not_json in [
        "{not json".to_string(),
        "".to_string(),
        "\u{0}\u{1}binary".to_string(),
    ] {
        let reply = agent.post(not_json.clone()).await;
        reply.assert_error(400, "INVALID_JSON");
        agent.assert_refusal_audited("INVALID_JSON", None, None);
    }

    let job_id = unique("shape");
    let p = payload("ctl-a", &job_id, "echo hi");
    let json = p.to_signed_json().expect("serializes");
    let good = agent.body(&p);
    let signature = sign(agent.secret_of("ctl-a").as_bytes(), json.as_bytes());

    let ttl = format!(r#","ttl":{}"#, p.ttl);
    let cases: Vec<(&str, String)> = vec![
        (
            "missing command",
            replace_once(&good, r#","command":"echo hi""#, ""),
        ),
        ("missing ttl", replace_once(&good, &ttl, "")),
        (
            "ttl of the wrong type",
            replace_once(&good, &ttl, &format!(r#","ttl":"{}""#, p.ttl)),
        ),
        (
            "command of the wrong type",
            replace_once(
                &good,
                r#""command":"echo hi""#,
                r#""command":["echo","hi"]"#,
            ),
        ),
        (
            "duplicate payload key",
            replace_once(
                &good,
                r#""command":"echo hi""#,
                r#""command":"echo hi","command":"echo bye""#,
            ),
        ),
        (
            "duplicate body key",
            format!(
                r#"{{"payload":{json},"payload":{json},"signature":{{"signature":"{signature}","algorithm":"HMAC-SHA256"}}}}"#
            ),
        ),
        (
            "unknown payload field",
            replace_once(
                &good,
                r#""command":"echo hi""#,
                r#""command":"echo hi","extra":1"#,
            ),
        ),
        ("signature missing", format!(r#"{{"payload":{json}}}"#)),
        (
            "payload not an object",
            r#"{"payload":[],"signature":{"signature":"00","algorithm":"HMAC-SHA256"}}"#
                .to_string(),
        ),
    ];
    for (what, body) in cases {
        let reply = agent.post(body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (400, "INVALID_PAYLOAD".to_string()),
            "{what}: {}",
            reply.text
        );
        let row = agent.last_submission();
        assert_eq!(row["accepted"], json!(false), "{what}: {row}");
        assert_eq!(row["code"], json!("INVALID_PAYLOAD"), "{what}: {row}");
    }
    // The row of a refused but readable body names the job and the controller.
    let reply = agent
        .post(replace_once(
            &good,
            r#""command":"echo hi""#,
            r#""command":"echo hi","command":"echo bye""#,
        ))
        .await;
    reply.assert_error(400, "INVALID_PAYLOAD");
    agent.assert_refusal_audited("INVALID_PAYLOAD", Some(&job_id), Some("ctl-a"));
    agent
        .get_job("ctl-a", &job_id)
        .await
        .assert_error(404, "JOB_NOT_FOUND");

    // The well-formed original is accepted: the refusals above were about shape alone.
    agent.post(good).await.assert_accepted(&job_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_algorithm_unknown_controller_and_bad_signatures() {
    let agent = TestAgent::start("auth", table_config());

    // Algorithm other than HMAC-SHA256: 400.
    let job_id = unique("alg");
    let p = payload("ctl-a", &job_id, "true");
    let json = p.to_signed_json().expect("serializes");
    let signature = sign(agent.secret_of("ctl-a").as_bytes(), json.as_bytes());
    for algorithm in ["HMAC-SHA512", "hmac-sha256", "none", ""] {
        let reply = agent.post(body_from(&json, &signature, algorithm)).await;
        reply.assert_error(400, "UNSUPPORTED_ALGORITHM");
        agent.assert_refusal_audited("UNSUPPORTED_ALGORITHM", Some(&job_id), Some("ctl-a"));
    }

    // A controller the agent does not know: 403, even with a signature that is "valid"
    // under some secret.
    let stranger = payload("ctl-stranger", &unique("stranger"), "true");
    let reply = agent
        .post(signed_body(
            &stranger,
            &quickcmd_testkit::own_secret("ctl-stranger"),
        ))
        .await;
    reply.assert_error(403, "CONTROLLER_NOT_ALLOWED");
    agent.assert_refusal_audited(
        "CONTROLLER_NOT_ALLOWED",
        Some(&stranger.job_id),
        Some("ctl-stranger"),
    );

    // Signed with another controller's key: 401.
    let reply = agent.post(signed_body(&p, &agent.secret_of("ctl-b"))).await;
    reply.assert_error(401, "INVALID_SIGNATURE");
    agent.assert_refusal_audited("INVALID_SIGNATURE", Some(&job_id), Some("ctl-a"));
    // Signed with the shared secret, which ctl-a does not use.
    let reply = agent
        .post(signed_body(&p, quickcmd_testkit::SHARED_SECRET))
        .await;
    reply.assert_error(401, "INVALID_SIGNATURE");
    agent
        .get_job("ctl-a", &job_id)
        .await
        .assert_error(404, "JOB_NOT_FOUND");

    // The right key is accepted, and so is its signature in upper-case hex.
    let upper = body_from(&json, &signature.to_ascii_uppercase(), "HMAC-SHA256");
    agent.post(upper).await.assert_accepted(&job_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_flipped_byte_in_any_payload_field_or_the_signature_is_401() {
    let agent = TestAgent::start("flip", table_config());
    let job_id = format!("{}-a", unique("flip"));
    let mut p = payload("ctl-s1", &job_id, "echo a");
    p.prompt = "prompt-a".into();
    p.candidate_metadata = Some(object(r#"{"k":"a"}"#));
    p.plugin_metadata = Some(object(r#"{"p":"a"}"#));
    p.required_scopes = Some(vec!["scope-a".into()]);
    p.snapshot_metadata = "snap-a".into();
    p.sandbox = Some(SandboxRequest {
        timeout_seconds: Some(5),
        ..SandboxRequest::default()
    });
    let good = agent.body(&p);
    let flip_digit = |n: i64| {
        let text = n.to_string();
        let last = text.as_bytes()[text.len() - 1] - b'0';
        format!("{}{}", &text[..text.len() - 1], (last + 1) % 10)
    };
    let flipped_id = format!("{}b", &job_id[..job_id.len() - 1]);
    let ttl = flip_digit(p.ttl);
    let timestamp = flip_digit(p.timestamp);
    let signature = good
        .split(r#""signature":""#)
        .nth(1)
        .and_then(|rest| rest.get(..64))
        .expect("the body holds a signature")
        .to_string();
    let flipped_signature = format!(
        "{}{}",
        if signature.starts_with('0') { "1" } else { "0" },
        &signature[1..]
    );
    let cases = [
        (
            "job_id",
            format!(r#""job_id":"{job_id}""#),
            format!(r#""job_id":"{flipped_id}""#),
        ),
        (
            "prompt",
            r#""prompt":"prompt-a""#.into(),
            r#""prompt":"prompt-b""#.into(),
        ),
        (
            "command",
            r#""command":"echo a""#.into(),
            r#""command":"echo b""#.into(),
        ),
        (
            "candidate_metadata",
            r#""candidate_metadata":{"k":"a"}"#.into(),
            r#""candidate_metadata":{"k":"b"}"#.into(),
        ),
        (
            "plugin_metadata",
            r#""plugin_metadata":{"p":"a"}"#.into(),
            r#""plugin_metadata":{"q":"a"}"#.into(),
        ),
        (
            "required_scopes",
            r#""required_scopes":["scope-a"]"#.into(),
            r#""required_scopes":["scope-b"]"#.into(),
        ),
        (
            "snapshot_metadata",
            r#""snapshot_metadata":"snap-a""#.into(),
            r#""snapshot_metadata":"snap-b""#.into(),
        ),
        (
            "ttl",
            format!(r#""ttl":{}"#, p.ttl),
            format!(r#""ttl":{ttl}"#),
        ),
        (
            "timestamp",
            format!(r#""timestamp":{}"#, p.timestamp),
            format!(r#""timestamp":{timestamp}"#),
        ),
        (
            "controller_id",
            r#""controller_id":"ctl-s1""#.into(),
            r#""controller_id":"ctl-s2""#.into(),
        ),
        (
            "sandbox",
            r#""timeout_seconds":5"#.into(),
            r#""timeout_seconds":6"#.into(),
        ),
        (
            "signature",
            format!(r#""signature":"{signature}""#),
            format!(r#""signature":"{flipped_signature}""#),
        ),
    ];
    for (field, needle, replacement) in cases {
        let body = replace_once(&good, &needle, &replacement);
        // One byte changed, no more.
        let changed = body
            .bytes()
            .zip(good.bytes())
            .filter(|(a, b)| a != b)
            .count();
        assert_eq!((body.len(), changed), (good.len(), 1), "{field}");
        let reply = agent.post(body).await;
        assert_eq!(
            (reply.status, reply.code()),
            (401, "INVALID_SIGNATURE".to_string()),
            "flipped {field}: {}",
            reply.text
        );
        let row = agent.last_submission();
        assert_eq!(row["accepted"], json!(false), "{field}: {row}");
        assert_eq!(row["code"], json!("INVALID_SIGNATURE"), "{field}: {row}");
        let expected_controller = if field == "controller_id" {
            "ctl-s2"
        } else {
            "ctl-s1"
        };
        assert_eq!(
            row["controller_id"],
            json!(expected_controller),
            "{field}: {row}"
        );
    }
    for id in [&job_id, &flipped_id] {
        agent
            .get_job("ctl-s1", id)
            .await
            .assert_error(404, "JOB_NOT_FOUND");
    }
    // The unchanged body verifies, so every refusal above was the flipped byte's doing.
    agent.post(good).await.assert_accepted(&job_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_sandbox_cannot_ride_along_in_canonical_mode() {
    let agent = TestAgent::start("canonical", table_config());
    let job_id = unique("canon");
    let p = payload("ctl-a", &job_id, "echo canonical");
    let secret = agent.secret_of("ctl-a");
    let canonical = p.go_canonical_json().expect("serializes");
    let signature = sign(secret.as_bytes(), canonical.as_bytes());

    // The Go form re-indented verifies in canonical mode…
    let pretty: serde_json::Value = serde_json::from_str(&canonical).expect("json");
    let reformatted = serde_json::to_string_pretty(&pretty).expect("json");
    assert_ne!(reformatted, canonical);

    // …but not with an extra `sandbox` the signature does not cover.
    let mut with_sandbox = pretty.clone();
    with_sandbox["sandbox"] = json!({"network": false, "timeout_seconds": 5});
    let smuggled = serde_json::to_string_pretty(&with_sandbox).expect("json");
    let reply = agent
        .post(body_from(&smuggled, &signature, "HMAC-SHA256"))
        .await;
    reply.assert_error(401, "INVALID_SIGNATURE");
    assert!(
        reply.json()["details"]
            .as_str()
            .is_some_and(|d| d.contains("sandbox")),
        "{}",
        reply.text
    );
    agent.assert_refusal_audited("INVALID_SIGNATURE", Some(&job_id), Some("ctl-a"));
    // Nor appended to the exact canonical bytes.
    let appended = format!(
        "{},\"sandbox\":{{\"timeout_seconds\":5}}}}",
        &canonical[..canonical.len() - 1]
    );
    agent
        .post(body_from(&appended, &signature, "HMAC-SHA256"))
        .await
        .assert_error(401, "INVALID_SIGNATURE");
    agent
        .get_job("ctl-a", &job_id)
        .await
        .assert_error(404, "JOB_NOT_FOUND");

    let reply = agent
        .post(body_from(&reformatted, &signature, "HMAC-SHA256"))
        .await;
    assert_eq!(reply.assert_accepted(&job_id), "pending");
    let row = agent.last_submission();
    assert_eq!(row["accepted"], json!(true), "{row}");
    assert_eq!(
        row["details"]["signed_form"],
        json!("go_canonical"),
        "{row}"
    );
    let view = agent.wait_final("ctl-a", &job_id).await;
    assert_eq!(view.result.expect("result").stdout, "canonical\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_checks_ttl_and_skew_both_ways() {
    let agent = TestAgent::start("clock", table_config());
    let now = now();
    /// What, timestamp, ttl, and the refusal (None: accepted).
    type Case = (&'static str, i64, i64, Option<(u16, &'static str)>);
    let cases: [Case; 8] = [
        ("expired", now - 60, now - 1, Some((401, "JOB_EXPIRED"))),
        ("expired at now", now - 60, now, Some((401, "JOB_EXPIRED"))),
        ("too old", now - 400, now + 600, Some((401, "JOB_TOO_OLD"))),
        (
            "in the future",
            now + 400,
            now + 1000,
            Some((401, "TIMESTAMP_IN_FUTURE")),
        ),
        (
            "ttl too long",
            now,
            now + 3601 + 60,
            Some((401, "TTL_TOO_LONG")),
        ),
        // Inside the 300 s window, both ways (60 s margin for the test's own latency).
        ("old but in the window", now - 240, now + 600, None),
        ("ahead but in the window", now + 240, now + 840, None),
        ("lifetime exactly the max", now + 1, now + 1 + 3600, None),
    ];
    for (what, timestamp, ttl, expected) in cases {
        let job_id = unique("clock");
        let mut p = payload("ctl-a", &job_id, "true");
        p.timestamp = timestamp;
        p.ttl = ttl;
        let reply = agent.post(agent.body(&p)).await;
        match expected {
            Some((status, code)) => {
                assert_eq!(
                    (reply.status, reply.code().as_str()),
                    (status, code),
                    "{what}: {}",
                    reply.text
                );
                agent.assert_refusal_audited(code, Some(&job_id), Some("ctl-a"));
                agent
                    .get_job("ctl-a", &job_id)
                    .await
                    .assert_error(404, "JOB_NOT_FOUND");
            }
            None => {
                assert_eq!(reply.status, 202, "{what}: {}", reply.text);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checks_run_in_the_order_of_the_table() {
    let agent = TestAgent::start("order", table_config());
    let expired = |controller: &str| {
        let mut p = payload(controller, &unique("order"), "true");
        p.timestamp = now() - 100;
        p.ttl = now() - 10;
        p
    };
    // Unknown controller and a bad algorithm: the algorithm is checked first.
    let p = expired("ctl-stranger");
    let json = p.to_signed_json().expect("json");
    agent
        .post(body_from(&json, "00", "HMAC-MD5"))
        .await
        .assert_error(400, "UNSUPPORTED_ALGORITHM");
    // Unknown controller and a bad signature: the controller first.
    agent
        .post(body_from(&json, "00", "HMAC-SHA256"))
        .await
        .assert_error(403, "CONTROLLER_NOT_ALLOWED");
    // Expired with a bad signature: the signature first (nothing about an unauthenticated
    // payload is trusted, not even its ttl).
    let p = expired("ctl-a");
    let json = p.to_signed_json().expect("json");
    agent
        .post(body_from(&json, &"ab".repeat(32), "HMAC-SHA256"))
        .await
        .assert_error(401, "INVALID_SIGNATURE");
    // Properly signed: now the ttl.
    agent
        .post(agent.body(&p))
        .await
        .assert_error(401, "JOB_EXPIRED");
    // Expired and asking for a scope it lacks: the clock first.
    let mut p = expired("ctl-a");
    p.required_scopes = Some(vec!["deploy".into()]);
    agent
        .post(agent.body(&p))
        .await
        .assert_error(401, "JOB_EXPIRED");
    // A duplicate id asking for a scope it lacks: the duplicate first.
    let job_id = unique("order-dup");
    agent.submit("ctl-a", &job_id, "true").await;
    let mut p = payload("ctl-a", &job_id, "echo other");
    p.required_scopes = Some(vec!["deploy".into()]);
    agent
        .post(agent.body(&p))
        .await
        .assert_error(409, "DUPLICATE_JOB");
    // Lacking a scope and over a cap: scopes first.
    let mut p = payload("ctl-a", &unique("order"), "true");
    p.required_scopes = Some(vec!["deploy".into()]);
    p.sandbox = Some(SandboxRequest {
        timeout_seconds: Some(1_000_000),
        ..SandboxRequest::default()
    });
    agent
        .post(agent.body(&p))
        .await
        .assert_error(403, "INSUFFICIENT_SCOPES");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_id_with_another_payload_is_409_from_any_controller() {
    let agent = TestAgent::start("dup", table_config());
    let job_id = unique("dup");
    let original = payload("ctl-a", &job_id, "echo original");
    agent
        .post(agent.body(&original))
        .await
        .assert_accepted(&job_id);

    let mut other_command = original.clone();
    other_command.command = "echo other".into();
    let mut other_time = original.clone();
    other_time.timestamp -= 1;
    let other_controller = payload("ctl-b", &job_id, "echo original");
    for (what, p) in [
        ("other command", other_command),
        ("other timestamp", other_time),
        ("other controller", other_controller),
    ] {
        let reply = agent.post(agent.body(&p)).await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (409, "DUPLICATE_JOB"),
            "{what}: {}",
            reply.text
        );
        agent.assert_refusal_audited("DUPLICATE_JOB", Some(&job_id), Some(&p.controller_id));
    }
    let view = agent.wait_final("ctl-a", &job_id).await;
    assert_eq!(view.result.expect("result").stdout, "original\n");
    // ctl-b's attempt did not give it the job.
    agent
        .get_job("ctl-b", &job_id)
        .await
        .assert_error(404, "JOB_NOT_FOUND");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resubmitting_the_same_signed_body_is_idempotent() {
    let agent = TestAgent::start("idem", table_config());
    let job_id = unique("idem");
    let body = agent.body(&payload("ctl-a", &job_id, "echo once; sleep 1"));
    let first = agent.post(body.clone()).await;
    assert_eq!(first.assert_accepted(&job_id), "pending");
    let second = agent.post(body.clone()).await;
    let status = second.assert_accepted(&job_id);
    assert!(
        status == "pending" || status == "running",
        "a retry while the job runs answers its current status, got {status}"
    );
    // The same payload re-indented verifies in the Go form to the same bytes: still a retry.
    let value: serde_json::Value = serde_json::from_str(&body).expect("json");
    let reply = agent
        .post(serde_json::to_string_pretty(&value).expect("json"))
        .await;
    reply.assert_accepted(&job_id);

    let view = agent.wait_final("ctl-a", &job_id).await;
    assert_eq!(view.status, JobStatus::Completed);
    assert_eq!(view.result.expect("result").stdout, "once\n");
    // After the end, a retry answers the final status.
    assert_eq!(agent.post(body).await.assert_accepted(&job_id), "completed");

    // It ran once: one start, one result, one count in the metrics.
    let rows = agent.audit_for(&job_id);
    let count = |kind: &str| rows.iter().filter(|r| r["kind"] == json!(kind)).count();
    assert_eq!(count("state_change"), 1, "{rows:#?}");
    assert_eq!(count("result"), 1, "{rows:#?}");
    assert_eq!(count("submission"), 4, "{rows:#?}");
    assert!(
        rows.iter()
            .filter(|r| r["kind"] == "submission")
            .all(|r| r["accepted"] == json!(true)),
        "{rows:#?}"
    );
    let metrics = agent.metrics().await;
    assert_eq!(
        metric(&metrics, "quickcmd_agent_jobs_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "quickcmd_agent_jobs_completed"),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_of_one_id_run_it_once() {
    let agent = TestAgent::start("race", table_config());
    // The same body eight times at once: all retries of one job.
    let job_id = unique("race");
    let body = agent.body(&payload("ctl-a", &job_id, "echo raced"));
    let replies = futures_util::future::join_all((0..8).map(|_| agent.post(body.clone()))).await;
    for reply in &replies {
        reply.assert_accepted(&job_id);
    }
    // Eight different payloads under one id at once: exactly one wins.
    let contested = unique("race");
    let bodies: Vec<String> = (0..8)
        .map(|i| agent.body(&payload("ctl-a", &contested, &format!("echo {i}"))))
        .collect();
    let replies = futures_util::future::join_all(bodies.into_iter().map(|b| agent.post(b))).await;
    let won: Vec<_> = replies.iter().filter(|r| r.status == 202).collect();
    assert_eq!(won.len(), 1, "{replies:#?}");
    for reply in replies.iter().filter(|r| r.status != 202) {
        reply.assert_error(409, "DUPLICATE_JOB");
    }
    for id in [&job_id, &contested] {
        agent.wait_final("ctl-a", id).await;
        let starts = agent
            .audit_for(id)
            .iter()
            .filter(|r| r["kind"] == "state_change")
            .count();
        assert_eq!(starts, 1, "{id} ran {starts} times");
    }
    let metrics = agent.metrics().await;
    assert_eq!(
        metric(&metrics, "quickcmd_agent_jobs_total"),
        Some(2.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_image_and_cap_refusals_are_stored_as_rejected() {
    let agent = TestAgent::start(
        "rejected",
        table_config()
            .set("max_timeout_seconds", json!(60))
            .set("max_memory_limit", json!(512 * 1024 * 1024))
            .set("max_cpu_limit", json!(1.0)),
    );
    let sandbox = |f: fn(&mut SandboxRequest)| {
        let mut s = SandboxRequest::default();
        f(&mut s);
        Some(s)
    };
    type Case = (
        &'static str,
        Option<Vec<String>>,
        Option<SandboxRequest>,
        &'static str,
    );
    let cases: Vec<Case> = vec![
        (
            "missing scope",
            Some(vec!["deploy".into()]),
            None,
            "INSUFFICIENT_SCOPES",
        ),
        (
            "network without sandbox:network",
            None,
            sandbox(|s| s.network = Some(true)),
            "INSUFFICIENT_SCOPES",
        ),
        (
            "mount without scope",
            None,
            sandbox(|s| s.mounts = Some(vec!["data".into()])),
            "INSUFFICIENT_SCOPES",
        ),
        (
            "image not allowed",
            None,
            sandbox(|s| s.image = Some("alpine:latest".into())),
            "IMAGE_NOT_ALLOWED",
        ),
        (
            "timeout over the cap",
            None,
            sandbox(|s| s.timeout_seconds = Some(61)),
            "SANDBOX_LIMIT_EXCEEDED",
        ),
        (
            "memory over the cap",
            None,
            sandbox(|s| s.memory_limit = Some(512 * 1024 * 1024 + 1)),
            "SANDBOX_LIMIT_EXCEEDED",
        ),
        (
            "cpu over the cap",
            None,
            sandbox(|s| s.cpu_limit = Some(1.5)),
            "SANDBOX_LIMIT_EXCEEDED",
        ),
    ];
    for (what, scopes, sandbox, code) in cases {
        let job_id = unique("rej");
        let mut p = payload("ctl-a", &job_id, "echo never");
        p.required_scopes = scopes;
        p.sandbox = sandbox;
        let body = agent.body(&p);
        let reply = agent.post(body.clone()).await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (403, code),
            "{what}: {}",
            reply.text
        );
        agent.assert_refusal_audited(code, Some(&job_id), Some("ctl-a"));
        let view = agent.view("ctl-a", &job_id).await;
        assert_eq!(view.status, JobStatus::Rejected, "{what}: {view:?}");
        let result = view.result.expect("a rejected job has a result");
        assert_eq!(result.status, JobStatus::Rejected);
        assert_eq!(result.exit_code, -1, "{what}");
        assert_eq!(
            result.reason.as_deref(),
            Some(code.to_ascii_lowercase().as_str())
        );
        // The same body again is a retry: 202 with the stored status; it never runs.
        assert_eq!(agent.post(body).await.assert_accepted(&job_id), "rejected");
        let mut other = p.clone();
        other.command = "echo other".into();
        agent
            .post(agent.body(&other))
            .await
            .assert_error(409, "DUPLICATE_JOB");
        let rows = agent.audit_for(&job_id);
        assert!(
            rows.iter().all(|r| r["kind"] == "submission"),
            "{what}: a rejected job must not start: {rows:#?}"
        );
        assert_eq!(rows[0]["accepted"], json!(false), "{what}: {rows:#?}");
    }
    // The scoped controller gets what it is granted, up to the caps exactly.
    let job_id = unique("granted");
    let mut p = payload("ctl-scoped", &job_id, "echo granted");
    p.required_scopes = Some(vec!["deploy".into()]);
    p.sandbox = Some(SandboxRequest {
        timeout_seconds: Some(60),
        memory_limit: Some(512 * 1024 * 1024),
        cpu_limit: Some(1.0),
        image: Some(quickcmd_testkit::IMAGE.into()),
        ..SandboxRequest::default()
    });
    agent.post(agent.body(&p)).await.assert_accepted(&job_id);
    let view = agent.wait_final("ctl-scoped", &job_id).await;
    assert_eq!(view.status, JobStatus::Completed);
    let metrics = agent.metrics().await;
    assert_eq!(
        metric(&metrics, "quickcmd_agent_jobs_rejected_total"),
        Some(7.0)
    );
    assert_eq!(metric(&metrics, "quickcmd_agent_jobs_total"), Some(1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_queue_is_429_with_retry_after() {
    let agent = TestAgent::start(
        "queue",
        table_config()
            .set("max_concurrent_jobs", json!(1))
            .set("max_queued_jobs", json!(1)),
    );
    let running = unique("q-run");
    let waiting = unique("q-wait");
    let refused = unique("q-full");
    agent.submit("ctl-a", &running, "sleep 30").await;
    agent.submit("ctl-a", &waiting, "sleep 30").await;
    let third = agent.body(&payload("ctl-a", &refused, "echo third"));
    let reply = agent.post(third.clone()).await;
    reply.assert_error(429, "QUEUE_FULL");
    let retry_after = reply
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("429 carries a Retry-After in seconds");
    assert!(retry_after >= 1, "Retry-After {retry_after}");
    agent.assert_refusal_audited("QUEUE_FULL", Some(&refused), Some("ctl-a"));
    // Nothing was stored for it.
    agent
        .get_job("ctl-a", &refused)
        .await
        .assert_error(404, "JOB_NOT_FOUND");
    assert_eq!(
        agent.view("ctl-a", &waiting).await.status,
        JobStatus::Pending
    );
    let metrics = agent.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"quickcmd_agent_submissions_refused_total{code="QUEUE_FULL"}"#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "quickcmd_agent_queue_depth"),
        Some(1.0),
        "{metrics}"
    );

    // Free the slots; the refused body, retried as told, is accepted and runs.
    agent.cancel("ctl-a", &waiting).await;
    agent.cancel("ctl-a", &running).await;
    for id in [&running, &waiting] {
        let view = agent.wait_final("ctl-a", id).await;
        assert_eq!(view.status, JobStatus::Failed);
        assert_eq!(
            view.result.expect("result").reason.as_deref(),
            Some("cancelled")
        );
    }
    agent.post(third).await.assert_accepted(&refused);
    let view = agent.wait_final("ctl-a", &refused).await;
    assert_eq!(view.result.expect("result").stdout, "third\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_ttl_passes_in_the_queue_never_starts() {
    let agent = TestAgent::start(
        "queue-ttl",
        table_config().set("max_concurrent_jobs", json!(1)),
    );
    let blocker = unique("q-block");
    agent.submit("ctl-a", &blocker, "sleep 4").await;
    let short = unique("q-short");
    let mut p = payload("ctl-a", &short, "echo too late");
    p.ttl = now() + 2;
    agent.post(agent.body(&p)).await.assert_accepted(&short);
    assert_eq!(agent.view("ctl-a", &short).await.status, JobStatus::Pending);
    let result = agent
        .wait_final("ctl-a", &short)
        .await
        .result
        .expect("result");
    assert_eq!(
        (result.status, result.reason.as_deref(), result.exit_code),
        (JobStatus::Failed, Some("expired"), -1),
        "{result:#?}"
    );
    assert_eq!(result.stdout, "");
    let blocked = agent
        .wait_final("ctl-a", &blocker)
        .await
        .result
        .expect("result");
    assert!(
        result.end_time >= blocked.end_time,
        "it expired when its turn came"
    );
    assert!(
        !agent
            .audit_for(&short)
            .iter()
            .any(|r| r["kind"] == "state_change" && r["status"] == "running"),
        "an expired job never starts"
    );
}
