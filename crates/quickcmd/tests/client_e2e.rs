//! The client library against a real agent (real TLS, real Docker): the protocol-v1
//! promises the controller relies on, checked at the wire level.

use std::time::Duration;

use quickcmd::client::{AgentEndpoint, Client, ClientOptions};
use quickcmd::job::{new_job_id, JobSpec};
use quickcmd::{Secret, Trust};
use quickcmd_protocol::{ErrorCode, JobStatus, StreamName};
use quickcmd_testkit::{gen_key, AgentSpec, Grant, TestAgent, CONTROLLER};

fn client(agent: &TestAgent, secret: &str, controller_id: &str) -> Client {
    Client::new(
        AgentEndpoint {
            name: agent.name.clone(),
            url: agent.base.parse().expect("url"),
            controller_id: controller_id.to_string(),
            secret: Secret::from_text(secret).expect("secret"),
            trust: Trust::pinned_from_file(&agent.cert_path()).expect("pin"),
        },
        ClientOptions::default(),
    )
    .expect("client")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

#[test]
fn submit_stream_wait_and_resume_against_a_real_agent() {
    let root = tempfile::tempdir().expect("tempdir");
    let secret = gen_key();
    let agent = AgentSpec::new("lib", &secret).start(root.path());
    let client = client(&agent, &secret, CONTROLLER);
    runtime().block_on(async {
        let health = client.health().await.expect("health");
        assert_eq!(health.http_status, 200);
        assert_eq!(health.health.status, "healthy");
        assert_eq!(health.health.agent_id.as_ref(), Some(&agent.agent_id));

        let job = client
            .sign(
                &JobSpec::new("echo a; sleep 0.5; echo b >&2; sleep 0.5; echo c; exit 4"),
                &new_job_id(),
            )
            .expect("sign");
        let accepted = client.submit(&job).await.expect("submit");
        assert_eq!(accepted.job_id, job.job_id);
        assert_eq!(accepted.status, JobStatus::Pending);
        // The same signed bytes again: idempotent, the same job.
        let again = client.submit(&job).await.expect("resubmit");
        assert_eq!(again.job_id, job.job_id);

        let mut stream = client.stream(&job.job_id, 0);
        let mut frames = Vec::new();
        while let Some(frame) = stream.next().await.expect("frame") {
            frames.push(frame);
        }
        let seqs: Vec<u64> = frames.iter().map(|f| f.seq).collect();
        let expected: Vec<u64> = (1..=frames.len() as u64).collect();
        assert_eq!(seqs, expected, "seq counts from 1 without gaps");
        let last = frames.last().expect("a final frame");
        assert!(last.is_final);
        assert_eq!(last.stream, StreamName::Stdout);
        assert_eq!(last.data, "");
        assert_eq!(last.status, Some(JobStatus::Completed));
        assert_eq!(last.exit_code, Some(4));
        let text = |name: StreamName| -> String {
            frames
                .iter()
                .filter(|f| f.stream == name && !f.is_final)
                .map(|f| f.data.as_str())
                .collect()
        };
        assert_eq!(text(StreamName::Stdout), "a\nc\n");
        assert_eq!(text(StreamName::Stderr), "b\n");

        // A late subscriber resuming after frame 1 gets exactly the rest.
        let mut resumed = client.stream(&job.job_id, 1);
        let mut rest = Vec::new();
        while let Some(frame) = resumed.next().await.expect("frame") {
            rest.push(frame.seq);
        }
        assert_eq!(rest, expected[1..].to_vec());
        assert_eq!(
            resumed.duplicates(),
            0,
            "the agent resent frames before `since`"
        );

        let result = client
            .wait(&job.job_id, Some(Duration::from_secs(30)))
            .await
            .expect("result");
        assert_eq!(result.status, JobStatus::Completed);
        assert_eq!(result.exit_code, 4);
        assert_eq!(result.stdout, "a\nc\n");
        assert_eq!(result.stderr, "b\n");
        assert!(result.duration_ms > 0);

        let list = client.list(None, Some(10)).await.expect("list");
        assert!(list.jobs.iter().any(|j| j.job_id == job.job_id));
        let completed = client
            .list(Some(JobStatus::Completed), Some(10))
            .await
            .expect("list");
        assert!(completed
            .jobs
            .iter()
            .all(|j| j.status == JobStatus::Completed));

        // Ended jobs cannot be cancelled; unknown jobs are not found.
        let error = client.cancel(&job.job_id).await.expect_err("already ended");
        assert_eq!(error.code(), Some(ErrorCode::JobAlreadyFinished), "{error}");
        let error = client.status(&new_job_id()).await.expect_err("unknown");
        assert_eq!(error.code(), Some(ErrorCode::JobNotFound), "{error}");
    });
}

#[test]
fn another_controllers_job_is_not_found_and_wrong_secrets_are_refused() {
    let root = tempfile::tempdir().expect("tempdir");
    let (secret_one, secret_two) = (gen_key(), gen_key());
    let agent = AgentSpec {
        agent_id: "two-controllers".into(),
        secret: None,
        controllers: vec![
            Grant {
                id: "ctl-one".into(),
                secret: secret_one.clone(),
                scopes: vec![],
            },
            Grant {
                id: "ctl-two".into(),
                secret: secret_two.clone(),
                scopes: vec![],
            },
        ],
        max_concurrent_jobs: 2,
    }
    .start(root.path());
    let one = client(&agent, &secret_one, "ctl-one");
    let two = client(&agent, &secret_two, "ctl-two");
    let forger = client(&agent, &secret_two, "ctl-one");
    runtime().block_on(async {
        let job = one
            .sign(&JobSpec::new("echo mine"), &new_job_id())
            .expect("sign");
        one.submit(&job).await.expect("submit");
        let result = one
            .wait(&job.job_id, Some(Duration::from_secs(30)))
            .await
            .expect("result");
        assert_eq!(result.stdout, "mine\n");

        let error = two.status(&job.job_id).await.expect_err("not theirs");
        assert_eq!(error.code(), Some(ErrorCode::JobNotFound), "{error}");
        let error = two
            .stream(&job.job_id, 0)
            .next()
            .await
            .expect_err("not theirs");
        assert_eq!(error.status(), Some(404), "{error}");

        let error = forger.status(&job.job_id).await.expect_err("bad auth");
        assert_eq!(error.code(), Some(ErrorCode::Unauthorized), "{error}");
        let error = forger
            .stream(&job.job_id, 0)
            .next()
            .await
            .expect_err("bad auth");
        assert_eq!(error.status(), Some(401), "{error}");
        let forged = forger
            .sign(&JobSpec::new("echo forged"), &new_job_id())
            .expect("sign");
        let error = forger.submit(&forged).await.expect_err("bad signature");
        assert_eq!(error.code(), Some(ErrorCode::InvalidSignature), "{error}");

        // A job id reused with a different payload is a duplicate.
        let reused = one
            .sign(&JobSpec::new("echo other"), &job.job_id)
            .expect("sign");
        let error = one.submit(&reused).await.expect_err("duplicate");
        assert_eq!(error.code(), Some(ErrorCode::DuplicateJob), "{error}");
    });
}
