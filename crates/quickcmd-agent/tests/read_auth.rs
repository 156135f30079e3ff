//! Read authentication (protocol-v1 §2): signed GET/DELETE/list, a controller sees only its
//! own jobs, and a refused WebSocket is refused at the upgrade with its HTTP status.

use quickcmd_protocol::{JobStatus, ReadAuth};
use quickcmd_testkit::{metric, now, read_to_close, Config, TestAgent, Ws};
use reqwest::Method;
use serde_json::json;
use tokio_tungstenite::tungstenite;

/// The status and `code` of a WebSocket upgrade the agent refused.
fn refused_upgrade(result: Result<Ws, tungstenite::Error>) -> (u16, String) {
    match result {
        Ok(_) => panic!("the upgrade was accepted; it must be refused with an HTTP status"),
        Err(tungstenite::Error::Http(response)) => {
            let body = response.body().clone().unwrap_or_default();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| {
                panic!(
                    "refusal body is not JSON ({e}): {}",
                    String::from_utf8_lossy(&body)
                )
            });
            (
                response.status().as_u16(),
                json["code"].as_str().unwrap_or_default().to_string(),
            )
        }
        Err(other) => panic!("expected an HTTP refusal of the upgrade, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_need_the_signature_of_the_jobs_own_controller() {
    let agent = TestAgent::start("reads", Config::default().controller("ctl-c", &[]));
    let job_id = quickcmd_testkit::unique("read");
    agent.submit("ctl-a", &job_id, "echo secret-output").await;
    let view = agent.wait_final("ctl-a", &job_id).await;
    assert_eq!(view.result.expect("result").stdout, "secret-output\n");
    let path = format!("/api/v1/jobs/{job_id}");
    let secret_a = agent.secret_of("ctl-a");
    let secret_b = agent.secret_of("ctl-b");
    let header = |controller: &str, secret: &str, method: &str, path: &str, ts: i64| {
        ReadAuth::sign(controller, secret.as_bytes(), method, path, ts).header_value()
    };

    let refusals: Vec<(&str, Option<String>)> = vec![
        ("no auth", None),
        ("another scheme", Some("Bearer abc".into())),
        (
            "ctl-a's name, ctl-b's key",
            Some(header("ctl-a", &secret_b, "GET", &path, now())),
        ),
        (
            "unknown controller",
            Some(header("ctl-z", &secret_a, "GET", &path, now())),
        ),
        (
            "timestamp too old",
            Some(header("ctl-a", &secret_a, "GET", &path, now() - 400)),
        ),
        (
            "timestamp in the future",
            Some(header("ctl-a", &secret_a, "GET", &path, now() + 400)),
        ),
        (
            "signed for another path",
            Some(header(
                "ctl-a",
                &secret_a,
                "GET",
                "/api/v1/jobs/other",
                now(),
            )),
        ),
        (
            "signed for another method",
            Some(header("ctl-a", &secret_a, "DELETE", &path, now())),
        ),
    ];
    let refused = refusals.len();
    for (what, authorization) in refusals {
        let reply = agent.request(Method::GET, &path, authorization).await;
        assert_eq!(
            (reply.status, reply.code().as_str()),
            (401, "UNAUTHORIZED"),
            "{what}: {}",
            reply.text
        );
        assert!(
            !reply.text.contains("secret-output"),
            "{what}: output leaked"
        );
    }

    // Another controller's job looks exactly like a missing one.
    let other = agent.get_job("ctl-b", &job_id).await;
    other.assert_error(404, "JOB_NOT_FOUND");
    let missing = agent.get_job("ctl-a", "no-such-job").await;
    missing.assert_error(404, "JOB_NOT_FOUND");
    assert_eq!(
        other.text.replace(&job_id, "ID"),
        missing.text.replace("no-such-job", "ID"),
        "a foreign job and a missing job must be indistinguishable"
    );
    agent
        .cancel("ctl-b", &job_id)
        .await
        .assert_error(404, "JOB_NOT_FOUND");

    // The list shows a controller its own jobs only.
    let list = agent.read(Method::GET, "ctl-a", "/api/v1/jobs").await;
    assert_eq!(list.status, 200, "{}", list.text);
    let jobs = list.json()["jobs"].clone();
    assert_eq!(jobs.as_array().map(Vec::len), Some(1), "{jobs}");
    assert_eq!(jobs[0]["job_id"], json!(job_id));
    assert_eq!(jobs[0]["status"], json!("completed"));
    assert_eq!(jobs[0]["command"], json!("echo secret-output"));
    assert_eq!(jobs[0]["exit_code"], json!(0));
    let list = agent.read(Method::GET, "ctl-b", "/api/v1/jobs").await;
    assert_eq!(list.json(), json!({"jobs": []}));
    agent
        .request(Method::GET, "/api/v1/jobs", None)
        .await
        .assert_error(401, "UNAUTHORIZED");

    // Its own controller reads it; cancelling a finished job is a conflict.
    let reply = agent.get_job("ctl-a", &job_id).await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["result"]["stdout"], json!("secret-output\n"));
    agent
        .cancel("ctl-a", &job_id)
        .await
        .assert_error(409, "JOB_ALREADY_FINISHED");

    let metrics = agent.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            r#"quickcmd_agent_submissions_refused_total{code="UNAUTHORIZED"}"#
        ),
        Some(refused as f64 + 1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_refusals_happen_at_the_upgrade_and_query_auth_works() {
    let agent = TestAgent::start("ws-auth", Config::default());
    let job_id = quickcmd_testkit::unique("wsauth");
    agent.submit("ctl-a", &job_id, "echo streamed").await;
    agent.wait_final("ctl-a", &job_id).await;
    let path = format!("/api/v1/stream/{job_id}");
    let auth = |controller: &str, secret: &str, ts: i64| {
        ReadAuth::sign(controller, secret.as_bytes(), "GET", &path, ts)
    };
    let a = auth("ctl-a", &agent.secret_of("ctl-a"), now());
    let b = auth("ctl-b", &agent.secret_of("ctl-b"), now());
    let forged = auth("ctl-a", &agent.secret_of("ctl-b"), now());
    let stale = auth("ctl-a", &agent.secret_of("ctl-a"), now() - 400);

    /// What, query string, Authorization header, expected status and code.
    type Case = (&'static str, String, Option<String>, (u16, &'static str));
    let cases: Vec<Case> = vec![
        ("no auth", String::new(), None, (401, "UNAUTHORIZED")),
        (
            "forged header",
            String::new(),
            Some(forged.header_value()),
            (401, "UNAUTHORIZED"),
        ),
        (
            "forged query",
            forged.query_string(),
            None,
            (401, "UNAUTHORIZED"),
        ),
        (
            "stale query",
            stale.query_string(),
            None,
            (401, "UNAUTHORIZED"),
        ),
        (
            "another controller's job",
            String::new(),
            Some(b.header_value()),
            (404, "JOB_NOT_FOUND"),
        ),
        (
            "another controller's job, query auth",
            b.query_string(),
            None,
            (404, "JOB_NOT_FOUND"),
        ),
    ];
    for (what, query, header, (status, code)) in cases {
        let got = refused_upgrade(agent.ws_connect(&job_id, &query, header).await);
        assert_eq!(got, (status, code.to_string()), "{what}");
    }
    let missing = ReadAuth::sign(
        "ctl-a",
        agent.secret_of("ctl-a").as_bytes(),
        "GET",
        "/api/v1/stream/no-such-job",
        now(),
    );
    let got = refused_upgrade(
        agent
            .ws_connect("no-such-job", &missing.query_string(), None)
            .await,
    );
    assert_eq!(got, (404, "JOB_NOT_FOUND".to_string()));

    // The right credentials as query parameters (browsers cannot set headers), with since.
    let ws = agent
        .ws_connect(&job_id, &format!("{}&since=0", a.query_string()), None)
        .await
        .expect("query-parameter auth opens the stream");
    let transcript = read_to_close(ws).await;
    assert_eq!(transcript.text("stdout"), "streamed\n");
    transcript.assert_complete(1, JobStatus::Completed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_open_reads_restore_the_seeds_status_by_id() {
    let agent = TestAgent::start(
        "legacy",
        Config::default().set("legacy_open_reads", json!(true)),
    );
    let job_id = quickcmd_testkit::unique("legacy");
    agent.submit("ctl-a", &job_id, "echo open").await;
    agent.wait_final("ctl-a", &job_id).await;
    let reply = agent
        .request(Method::GET, &format!("/api/v1/jobs/{job_id}"), None)
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    assert_eq!(reply.json()["status"], json!("completed"));
    // Listing and cancelling stay signed.
    agent
        .request(Method::GET, "/api/v1/jobs", None)
        .await
        .assert_error(401, "UNAUTHORIZED");
    // The open WebSocket needs an Origin naming an allowed controller.
    let got = refused_upgrade(agent.ws_connect(&job_id, "", None).await);
    assert_eq!(got, (401, "UNAUTHORIZED".to_string()));
}
