//! The warm pool follows SIGHUP: a reload that changes `warm_pool_size` or the default
//! sandbox (`sandbox_user`, the limits, the tmpfs sizes, the image) replaces the pool — the
//! old idle containers go, the new ones carry the new profile, `/metrics` shows the new
//! pool with its totals carried over — while a job already running in an old pool
//! container runs on untouched; size 0 turns the pool off and 0 → N on again.

use std::process::Command;

use nix::sys::signal::Signal;
use quickcmd_protocol::JobStatus;
use quickcmd_testkit::{
    containers, eventually, metric, next_frame, unique, Config, TestAgent, PATIENCE,
};
use serde_json::json;

/// `docker inspect -f FORMAT ID`, trimmed.
fn inspect(container_id: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["inspect", "-f", format, container_id])
        .output()
        .expect("docker inspect runs");
    assert!(
        out.status.success(),
        "docker inspect {container_id}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The user and limits the engine recorded for a container.
fn recorded(container_id: &str) -> [String; 4] {
    [
        "{{.Config.User}}",
        "{{.HostConfig.PidsLimit}}",
        "{{.HostConfig.Memory}}",
        "{{index .HostConfig.Tmpfs \"/tmp\"}}",
    ]
    .map(|format| inspect(container_id, format))
}

/// Waits until `/metrics` shows the pool at `size` with `idle` ready containers, and
/// returns the exposition text.
async fn wait_pool(agent: &TestAgent, size: f64, idle: f64) -> String {
    let deadline = std::time::Instant::now() + PATIENCE;
    loop {
        let text = agent.metrics().await;
        if metric(&text, "quickcmd_agent_warm_pool_size") == Some(size)
            && metric(&text, "quickcmd_agent_warm_pool_idle") == Some(idle)
        {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the pool never reached size {size} with {idle} idle:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn claimed(text: &str) -> Option<f64> {
    metric(text, "quickcmd_agent_warm_pool_claimed_total")
}

/// Pool containers of the agent that exist now, by full id (listed in one call: one may
/// be removed at any moment, so no second look per container).
fn pool_containers(agent: &TestAgent) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter"])
        .arg(format!("label=quickcmd.pool={}", agent.agent_id))
        .output()
        .expect("docker ps runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_replaces_the_warm_pool_and_spares_running_jobs() {
    let first = Config::default().set("warm_pool_size", json!(1));
    let mut agent = TestAgent::start("pool-reload", first.clone());
    wait_pool(&agent, 1.0, 1.0).await;
    let taken = pool_containers(&agent);
    assert_eq!(taken.len(), 1, "{taken:?}");

    // A job of the first profile takes the one pool container and keeps running across the
    // reloads, until a file only `docker exec` can create appears.
    let long = unique("pool-long");
    agent
        .submit(
            "ctl-a",
            &long,
            "echo go; while [ ! -e /tmp/go ]; do sleep 0.1; done; id -u",
        )
        .await;
    let mut ws = agent.subscribe("ctl-a", &long, None).await;
    let mut close = None;
    assert_eq!(
        next_frame(&mut ws, &mut close).await.expect("frame").data,
        "go\n"
    );
    drop(ws);
    let text = wait_pool(&agent, 1.0, 1.0).await;
    assert_eq!(claimed(&text), Some(1.0), "{text}");
    let old_idle: Vec<String> = pool_containers(&agent)
        .into_iter()
        .filter(|id| !taken.contains(id))
        .collect();
    assert_eq!(old_idle.len(), 1, "the refilled container: {old_idle:?}");
    assert_eq!(recorded(&old_idle[0])[0], "65534:65534");

    // The reload: two containers of another user, pids limit, memory and /tmp size.
    let second = first
        .clone()
        .set("warm_pool_size", json!(2))
        .set("sandbox_user", json!("4242:4242"))
        .set("pids_limit", json!(50))
        .set("default_memory_limit", json!(100_663_296))
        .set("sandbox_tmp_bytes", json!(8_388_608));
    agent.write_config(second.clone());
    agent.signal(Signal::SIGHUP);
    agent.wait_log("config reloaded", 1).await;
    assert!(
        agent.log().contains("warm pool replaced"),
        "the change is logged:\n{}",
        agent.log()
    );
    let text = wait_pool(&agent, 2.0, 2.0).await;
    // The totals carry over: a counter never goes backwards.
    assert_eq!(claimed(&text), Some(1.0), "{text}");
    let old = old_idle[0].clone();
    eventually(PATIENCE, "the old idle pool container removed", || {
        (!pool_containers(&agent).contains(&old)).then_some(())
    });
    let new_idle: Vec<String> = pool_containers(&agent)
        .into_iter()
        .filter(|id| !taken.contains(id))
        .collect();
    assert_eq!(new_idle.len(), 2, "{new_idle:?}");
    for id in &new_idle {
        assert_eq!(
            recorded(id),
            [
                "4242:4242".to_string(),
                "50".to_string(),
                "100663296".to_string(),
                "rw,noexec,nosuid,nodev,size=8388608,mode=1777".to_string(),
            ],
            "{id}"
        );
    }

    // The job in the old pool's container ran on, untouched, as the old user.
    assert_eq!(inspect(&taken[0], "{{.State.Running}}"), "true");
    assert_eq!(agent.view("ctl-a", &long).await.status, JobStatus::Running);
    let told = Command::new("docker")
        .args(["exec", &taken[0], "touch", "/tmp/go"])
        .status()
        .expect("docker exec runs");
    assert!(told.success());
    let result = agent
        .wait_final("ctl-a", &long)
        .await
        .result
        .expect("result");
    assert_eq!(
        (result.status, result.exit_code, result.stdout.as_str()),
        (JobStatus::Completed, 0, "go\n65534\n"),
        "{result:#?}"
    );
    assert_eq!(result.sandbox_id, taken[0]);

    // A job of the new default sandbox runs in a new pool container, as the new user.
    let fresh = unique("pool-new");
    agent.submit("ctl-a", &fresh, "id -u; id -g").await;
    let result = agent
        .wait_final("ctl-a", &fresh)
        .await
        .result
        .expect("result");
    assert_eq!(result.stdout, "4242\n4242\n", "{result:#?}");
    assert!(new_idle.contains(&result.sandbox_id), "{result:#?}");
    assert_eq!(claimed(&agent.metrics().await), Some(2.0));

    // Size 0: the pool is off, its containers gone, jobs run cold, the totals stay.
    agent.write_config(second.clone().set("warm_pool_size", json!(0)));
    agent.signal(Signal::SIGHUP);
    agent.wait_log("config reloaded", 2).await;
    assert!(agent.log().contains("warm pool off"), "{}", agent.log());
    wait_pool(&agent, 0.0, 0.0).await;
    eventually(PATIENCE, "no pool container left", || {
        pool_containers(&agent).is_empty().then_some(())
    });
    let cold = unique("pool-off");
    agent.submit("ctl-a", &cold, "id -u").await;
    let result = agent
        .wait_final("ctl-a", &cold)
        .await
        .result
        .expect("result");
    assert_eq!(result.stdout, "4242\n");
    assert_eq!(claimed(&agent.metrics().await), Some(2.0));

    // 0 → 1: on again.
    agent.write_config(second.set("warm_pool_size", json!(1)));
    agent.signal(Signal::SIGHUP);
    agent.wait_log("config reloaded", 3).await;
    // Once at start, once now.
    assert_eq!(
        agent.log().matches("warm pool on").count(),
        2,
        "{}",
        agent.log()
    );
    wait_pool(&agent, 1.0, 1.0).await;
    let on = pool_containers(&agent);
    assert_eq!(on.len(), 1, "{on:?}");
    assert_eq!(recorded(&on[0])[0], "4242:4242");

    agent.signal(Signal::SIGTERM);
    assert!(agent.wait_exit().await.success());
    assert_eq!(
        containers(&format!("label=quickcmd.agent={}", agent.agent_id)),
        Vec::<String>::new(),
        "SIGTERM leaves no container"
    );
}
