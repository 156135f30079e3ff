//! Witnessed audit on a real agent (protocol-v1 §5): a job's result and final frame carry
//! the witness of its `result` row, MACed with the job's controller's secret, and
//! `GET /api/v1/audit/chain` serves a linked segment with only the caller's rows in full.

use quickcmd_protocol::{AuditChain, AuditWitness, LogFrame, MAX_CHAIN_ROWS};
use quickcmd_testkit::{metric, read_to_close, Config, TestAgent};
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_carry_witnesses_that_the_chain_confirms() {
    let agent = TestAgent::start("witness", Config::default());
    let job_a = quickcmd_testkit::unique("wa");
    let job_b = quickcmd_testkit::unique("wb");
    agent.submit("ctl-a", &job_a, "echo from-a").await;
    agent.submit("ctl-b", &job_b, "echo from-b").await;
    let result_a = agent
        .wait_final("ctl-a", &job_a)
        .await
        .result
        .expect("result");
    let result_b = agent
        .wait_final("ctl-b", &job_b)
        .await
        .result
        .expect("result");
    let witness: AuditWitness = result_a.audit.clone().expect("a witness on the result");
    let secret_a = agent.secret_of("ctl-a");
    let secret_b = agent.secret_of("ctl-b");
    assert!(witness.verify(secret_a.as_bytes(), &agent.agent_id));
    assert!(
        !witness.verify(secret_b.as_bytes(), &agent.agent_id),
        "MACed with ctl-a's own secret"
    );
    assert!(!witness.verify(secret_a.as_bytes(), "another-agent"));
    assert!(result_b
        .audit
        .as_ref()
        .expect("b's witness")
        .verify(secret_b.as_bytes(), &agent.agent_id));

    // The final frame of a replayed stream carries the same witness.
    let ws = agent.subscribe("ctl-a", &job_a, None).await;
    let frames: Vec<LogFrame> = read_to_close(ws).await.frames;
    let last = frames.last().expect("frames");
    assert!(last.is_final);
    assert_eq!(last.audit.as_ref(), Some(&witness));

    // The chain: linked, the witnessed row in it with the witnessed hash, b's rows hidden.
    let reply = agent
        .read(Method::GET, "ctl-a", "/api/v1/audit/chain?from=1&to=10000")
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text);
    let chain: AuditChain = serde_json::from_str(&reply.text).expect("an AuditChain");
    assert_eq!(chain.agent_id, agent.agent_id);
    assert_eq!(chain.check_witness(&witness), Ok(()));
    assert!(chain.rows.iter().all(|row| row.version == 2));
    assert!(
        !reply.text.contains("from-b"),
        "ctl-b's command is not shown to ctl-a"
    );
    assert!(reply.text.contains("from-a"));
    let witnessed = chain
        .rows
        .iter()
        .find(|row| row.seq == witness.seq)
        .and_then(|row| row.row.clone())
        .expect("ctl-a's own result row in full");
    assert_eq!(witnessed["kind"], "result");
    assert_eq!(witnessed["job_id"], job_a.as_str());
    let head = chain.rows.last().expect("rows").seq;
    let metrics = agent.request(Method::GET, "/metrics", None).await;
    assert!(metric(&metrics.text, "quickcmd_agent_audit_head_seq")
        .is_some_and(|seq| seq >= head as f64));

    // Bounds: at most 10,000 rows, from/to required whole numbers from 1, signed reads only.
    let too_many = format!("/api/v1/audit/chain?from=1&to={}", MAX_CHAIN_ROWS + 1);
    for path in [
        too_many.as_str(),
        "/api/v1/audit/chain?from=5&to=4",
        "/api/v1/audit/chain?from=0&to=4",
        "/api/v1/audit/chain?from=1",
        "/api/v1/audit/chain?from=x&to=2",
        "/api/v1/audit/chain?from=1&to=18446744073709551616",
    ] {
        agent
            .read(Method::GET, "ctl-a", path)
            .await
            .assert_error(400, "INVALID_PAYLOAD");
    }
    agent
        .request(Method::GET, "/api/v1/audit/chain?from=1&to=2", None)
        .await
        .assert_error(401, "UNAUTHORIZED");
    let beyond = agent
        .read(
            Method::GET,
            "ctl-b",
            &format!("/api/v1/audit/chain?from={}&to={}", head + 100, head + 200),
        )
        .await;
    assert_eq!(beyond.status, 200, "{}", beyond.text);
    let empty: AuditChain = serde_json::from_str(&beyond.text).expect("chain");
    assert!(empty.rows.is_empty());
}
