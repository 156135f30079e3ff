//! The sandbox as a controller sees it through the API, on the real Docker engine:
//! timeout, out of memory, a fork bomb, network isolation and grant, the unprivileged user,
//! the read-only root, and cancellation.

use quickcmd_protocol::{JobResult, JobStatus, SandboxRequest};
use quickcmd_testkit::{
    assert_no_containers_soon, containers, payload, read_to_close, unique, Config, TestAgent,
};
use serde_json::json;

/// Submits `command` as ctl-a with this sandbox request and waits for the result.
async fn run(
    agent: &TestAgent,
    command: &str,
    sandbox: Option<SandboxRequest>,
) -> (String, JobResult) {
    let job_id = unique("sbx");
    let mut p = payload("ctl-a", &job_id, command);
    p.sandbox = sandbox;
    agent.post(agent.body(&p)).await.assert_accepted(&job_id);
    let view = agent.wait_final("ctl-a", &job_id).await;
    let result = view.result.expect("result");
    assert_eq!(result.status, view.status);
    (job_id, result)
}

#[track_caller]
fn assert_ended(result: &JobResult, status: JobStatus, reason: Option<&str>, exit_code: i64) {
    assert_eq!(
        (result.status, result.reason.as_deref(), result.exit_code),
        (status, reason, exit_code),
        "{result:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_the_job_with_exit_code_124() {
    let agent = TestAgent::start("timeout", Config::default());
    let job_id = unique("timeout");
    let mut p = payload("ctl-a", &job_id, "echo before; sleep 30; echo after");
    p.sandbox = Some(SandboxRequest {
        timeout_seconds: Some(2),
        ..SandboxRequest::default()
    });
    agent.post(agent.body(&p)).await.assert_accepted(&job_id);
    let transcript = read_to_close(agent.subscribe("ctl-a", &job_id, None).await).await;
    transcript.assert_complete(1, JobStatus::Failed, 124);
    assert_eq!(transcript.text("stdout"), "before\n");
    let result = agent
        .wait_final("ctl-a", &job_id)
        .await
        .result
        .expect("result");
    assert_ended(&result, JobStatus::Failed, Some("timeout"), 124);
    assert_eq!(result.stdout, "before\n");
    assert!(result.error.is_some_and(|e| e.contains("timed out")));
    assert!(containers(&format!("label=quickcmd.job={job_id}")).is_empty());
    let rows = agent.audit_for(&job_id);
    let last = rows.last().expect("audit rows");
    assert_eq!(
        (
            &last["kind"],
            &last["status"],
            &last["reason"],
            &last["exit_code"]
        ),
        (
            &json!("result"),
            &json!("failed"),
            &json!("timeout"),
            &json!(124)
        ),
        "{rows:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_memory_is_failed_oom() {
    let agent = TestAgent::start("oom", Config::default());
    // `tail` keeps a line that never ends in memory; 16 MiB (memory + swap) stops it.
    let (job_id, result) = run(
        &agent,
        "tail /dev/zero",
        Some(SandboxRequest {
            memory_limit: Some(16 * 1024 * 1024),
            ..SandboxRequest::default()
        }),
    )
    .await;
    assert_ended(&result, JobStatus::Failed, Some("oom"), 137);
    let rows = agent.audit_for(&job_id);
    assert_eq!(
        rows.last().expect("rows")["reason"],
        json!("oom"),
        "{rows:#?}"
    );
    // The same job with room to breathe is not refused or killed for its memory request.
    let (_, small) = run(
        &agent,
        "echo fits",
        Some(SandboxRequest {
            memory_limit: Some(16 * 1024 * 1024),
            ..SandboxRequest::default()
        }),
    )
    .await;
    assert_ended(&small, JobStatus::Completed, None, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pids_limit_contains_a_fork_bomb() {
    let agent = TestAgent::start("forkbomb", Config::default().set("pids_limit", json!(32)));
    // An inner shell forks until it cannot (ash gives up at the first failed fork); the
    // outer one then counts the processes with builtins only, as no pid is left to fork.
    let (_, result) = run(
        &agent,
        "sh -c 'i=0; while [ $i -lt 100 ]; do sleep 30 & i=$((i+1)); done'; \
         n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo procs=$n",
        None,
    )
    .await;
    assert_ended(&result, JobStatus::Completed, None, 0);
    let procs: u32 = result
        .stdout
        .trim()
        .strip_prefix("procs=")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no process count: {result:#?}"));
    assert!(
        (2..=32).contains(&procs),
        "{procs} processes under pids_limit 32"
    );
    assert!(
        result.stderr.contains("fork"),
        "forks beyond the limit fail: {result:#?}"
    );

    // The real thing: it ends (when its shell does, or at the timeout), and the agent and
    // engine are fine afterwards.
    let (bomb_id, bomb) = run(
        &agent,
        "bomb() { bomb | bomb & }; bomb; sleep 3",
        Some(SandboxRequest {
            timeout_seconds: Some(10),
            ..SandboxRequest::default()
        }),
    )
    .await;
    assert!(bomb.status.is_final());
    assert_no_containers_soon(&format!("label=quickcmd.job={bomb_id}"));
    let health = agent.request(reqwest::Method::GET, "/health", None).await;
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(health.json()["status"], json!("healthy"));
    let (_, after) = run(&agent, "echo still-fine", None).await;
    assert_ended(&after, JobStatus::Completed, None, 0);
    assert_eq!(after.stdout, "still-fine\n");
}

/// Interface names in /proc/net/dev.
fn interfaces(proc_net_dev: &str) -> Vec<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split_once(':').map(|(name, _)| name))
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_is_off_unless_granted() {
    let agent = TestAgent::start(
        "network",
        Config::default().controller("ctl-net", &["sandbox:network"]),
    );
    let (_, isolated) = run(
        &agent,
        "cat /proc/net/dev; wget -q -T 2 -O /dev/null http://1.1.1.1/ 2>/dev/null; echo wget=$?",
        None,
    )
    .await;
    assert_ended(&isolated, JobStatus::Completed, None, 0);
    assert_eq!(interfaces(&isolated.stdout), ["lo"], "{}", isolated.stdout);
    assert!(
        isolated.stdout.contains("wget=") && !isolated.stdout.contains("wget=0"),
        "{}",
        isolated.stdout
    );

    // Granted: a controller with sandbox:network asking for it gets an interface.
    let job_id = unique("net");
    let mut p = payload("ctl-net", &job_id, "cat /proc/net/dev");
    p.sandbox = Some(SandboxRequest {
        network: Some(true),
        ..SandboxRequest::default()
    });
    agent.post(agent.body(&p)).await.assert_accepted(&job_id);
    let view = agent.wait_final("ctl-net", &job_id).await;
    let result = view.result.expect("result");
    assert_ended(&result, JobStatus::Completed, None, 0);
    let names = interfaces(&result.stdout);
    assert!(
        names.iter().any(|n| n != "lo"),
        "a granted network has an interface besides lo: {}",
        result.stdout
    );
    // ctl-net without asking stays isolated.
    let job_id = unique("net-off");
    agent
        .post(agent.body(&payload("ctl-net", &job_id, "cat /proc/net/dev")))
        .await
        .assert_accepted(&job_id);
    let result = agent
        .wait_final("ctl-net", &job_id)
        .await
        .result
        .expect("result");
    assert_eq!(interfaces(&result.stdout), ["lo"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_as_nobody_on_a_read_only_root() {
    let agent = TestAgent::start("rootfs", Config::default());
    let (_, who) = run(&agent, "id -u; id -g", None).await;
    assert_ended(&who, JobStatus::Completed, None, 0);
    assert_eq!(who.stdout, "65534\n65534\n");

    let (_, fs) = run(
        &agent,
        "touch /x 2>&1; echo root=$?; touch /tmp/x && echo tmp=ok; touch /work/x && echo work=ok; pwd",
        None,
    )
    .await;
    assert_ended(&fs, JobStatus::Completed, None, 0);
    assert!(fs.stdout.contains("Read-only file system"), "{}", fs.stdout);
    assert!(fs.stdout.contains("root=1\n"), "{}", fs.stdout);
    assert!(fs.stdout.contains("tmp=ok\n"), "{}", fs.stdout);
    assert!(fs.stdout.contains("work=ok\n"), "{}", fs.stdout);
    assert!(fs.stdout.ends_with("/work\n"), "{}", fs.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_sandbox_and_removes_it() {
    let agent = TestAgent::start("cancel", Config::default().set("pids_limit", json!(50)));
    let job_id = unique("cancel");
    agent
        .submit("ctl-a", &job_id, "echo started; sleep 60")
        .await;
    let mut subscriber = agent.subscribe("ctl-a", &job_id, None).await;
    let mut close = None;
    let first = quickcmd_testkit::next_frame(&mut subscriber, &mut close)
        .await
        .expect("first frame");
    assert_eq!(first.data, "started\n");
    assert_eq!(
        agent.view("ctl-a", &job_id).await.status,
        JobStatus::Running
    );

    // While it runs: one container, labelled, locked down as configured.
    let ids = containers(&format!("label=quickcmd.job={job_id}"));
    assert_eq!(ids.len(), 1, "{ids:?}");
    let out = std::process::Command::new("docker")
        .args(["inspect", &ids[0]])
        .output()
        .expect("docker inspect");
    let inspect: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect JSON");
    let c = &inspect[0];
    assert_eq!(
        c["Config"]["Labels"]["quickcmd.agent"],
        json!(agent.agent_id)
    );
    assert_eq!(c["Config"]["User"], json!("65534:65534"));
    assert_eq!(c["HostConfig"]["ReadonlyRootfs"], json!(true));
    assert_eq!(c["HostConfig"]["NetworkMode"], json!("none"));
    assert_eq!(c["HostConfig"]["CapDrop"], json!(["ALL"]));
    assert_eq!(c["HostConfig"]["PidsLimit"], json!(50));
    assert_eq!(c["HostConfig"]["Privileged"], json!(false));
    assert!(
        c["HostConfig"]["SecurityOpt"]
            .as_array()
            .is_some_and(|o| o.contains(&json!("no-new-privileges:true"))),
        "{}",
        c["HostConfig"]["SecurityOpt"]
    );
    assert_eq!(c["HostConfig"]["Memory"], c["HostConfig"]["MemorySwap"]);

    let reply = agent.cancel("ctl-a", &job_id).await;
    let status = reply.assert_accepted(&job_id);
    // The kill is under way; the store may already say how it ended.
    assert!(status == "running" || status == "failed", "{status}");
    let mut transcript = read_to_close(subscriber).await;
    transcript.frames.insert(0, first);
    transcript.assert_complete(1, JobStatus::Failed, 137);
    assert_eq!(transcript.text("stdout"), "started\n");

    let result = agent
        .wait_final("ctl-a", &job_id)
        .await
        .result
        .expect("result");
    assert_ended(&result, JobStatus::Failed, Some("cancelled"), 137);
    assert!(
        containers(&format!("label=quickcmd.job={job_id}")).is_empty(),
        "the cancelled job's container is gone"
    );
    agent
        .cancel("ctl-a", &job_id)
        .await
        .assert_error(409, "JOB_ALREADY_FINISHED");
    let kinds: Vec<String> = agent
        .audit_for(&job_id)
        .iter()
        .map(|r| r["kind"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        kinds,
        ["submission", "state_change", "cancel", "result", "cancel"],
        "audit trail of the cancelled job"
    );
}
