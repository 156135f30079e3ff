//! Replacing the warm pool while it serves (what the agent does on SIGHUP), against the real
//! Docker engine: the old pool's idle containers are removed and never handed out, a job
//! already running in an old pool container is not touched, the new pool's containers carry
//! the new profile, size 0 turns the pool off and 0 → N turns it on again, and the counters
//! never go backwards.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use quickcmd_sandbox::{
    DockerSandbox, OutputChunk, PoolProfile, SandboxError, SandboxOutcome, SandboxSpec, LABEL_POOL,
    LABEL_POOL_INSTANCE,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "quickcmd-sandbox:latest";

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

async fn raw_docker() -> Docker {
    let docker = Docker::connect_with_local_defaults().expect("local docker socket");
    docker.negotiate_version().await.expect("version handshake")
}

/// The ids of the pool containers of `agent` that exist now, running or not.
async fn pool_containers(agent: &str) -> Vec<String> {
    let filters = HashMap::from([("label", vec![format!("{LABEL_POOL}={agent}")])]);
    let options = ListContainersOptionsBuilder::new()
        .all(true)
        .filters(&filters)
        .build();
    raw_docker()
        .await
        .list_containers(Some(options))
        .await
        .expect("list containers")
        .into_iter()
        .filter_map(|container| container.id)
        .collect()
}

/// The first profile: nobody, 64 MiB, 64 pids, one core, 16 MiB tmpfs each.
fn first_profile(agent: &str) -> PoolProfile {
    PoolProfile {
        agent_id: agent.to_owned(),
        image: IMAGE.to_owned(),
        user: "65534:65534".to_owned(),
        workdir: "/work".to_owned(),
        tmp_size_bytes: 16 << 20,
        workdir_size_bytes: 16 << 20,
        cpu_limit: 1.0,
        memory_limit_bytes: 64 << 20,
        pids_limit: 64,
    }
}

/// What a reload changes: every field of the profile but the image and workdir.
fn second_profile(agent: &str) -> PoolProfile {
    PoolProfile {
        user: "4242:4242".to_owned(),
        tmp_size_bytes: 8 << 20,
        workdir_size_bytes: 12 << 20,
        cpu_limit: 0.5,
        memory_limit_bytes: 96 << 20,
        pids_limit: 50,
        ..first_profile(agent)
    }
}

/// A job of exactly `profile`'s sandbox.
fn spec(profile: &PoolProfile, command: &str) -> SandboxSpec {
    SandboxSpec {
        job_id: unique("job"),
        agent_id: profile.agent_id.clone(),
        image: profile.image.clone(),
        command: command.to_owned(),
        user: profile.user.clone(),
        network: false,
        cpu_limit: profile.cpu_limit,
        memory_limit_bytes: profile.memory_limit_bytes,
        pids_limit: profile.pids_limit,
        timeout: Duration::from_secs(120),
        env: BTreeMap::new(),
        workdir: profile.workdir.clone(),
        tmp_size_bytes: profile.tmp_size_bytes,
        workdir_size_bytes: profile.workdir_size_bytes,
        mounts: Vec::new(),
        stdin: None,
    }
}

/// A job running in the background: its container id once started, then its end.
struct Running {
    container_id: String,
    ended: tokio::task::JoinHandle<(Result<SandboxOutcome, SandboxError>, String)>,
}

async fn start(sandbox: &DockerSandbox, spec: SandboxSpec) -> Running {
    let (output_tx, mut output_rx) = mpsc::channel(64);
    let (started_tx, started_rx) = oneshot::channel();
    let sandbox = sandbox.clone();
    let ended = tokio::spawn(async move {
        let reader = tokio::spawn(async move {
            let mut stdout = Vec::new();
            while let Some(chunk) = output_rx.recv().await {
                if let OutputChunk::Stdout(bytes) = chunk {
                    stdout.extend_from_slice(&bytes);
                }
            }
            String::from_utf8_lossy(&stdout).into_owned()
        });
        let result = sandbox
            .run(spec, output_tx, CancellationToken::new(), started_tx)
            .await;
        (result, reader.await.expect("output reader"))
    });
    let container_id = started_rx.await.expect("the job started");
    Running {
        container_id,
        ended,
    }
}

async fn run(sandbox: &DockerSandbox, spec: SandboxSpec) -> (SandboxOutcome, String) {
    let job = start(sandbox, spec).await;
    let (result, stdout) = job.ended.await.expect("job task");
    (result.expect("the job ran"), stdout)
}

async fn wait_idle(sandbox: &DockerSandbox, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let stats = sandbox.warm_pool_stats().expect("a pool");
        if stats.idle >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the warm pool did not fill to {count}: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

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

/// The user, limits and tmpfs of a container as the engine recorded them.
fn recorded_profile(container_id: &str) -> (String, String, String, String, String, String) {
    let tmpfs = |path: &str| {
        inspect(
            container_id,
            &format!("{{{{index .HostConfig.Tmpfs \"{path}\"}}}}"),
        )
    };
    (
        inspect(container_id, "{{.Config.User}}"),
        inspect(container_id, "{{.HostConfig.Memory}}"),
        inspect(container_id, "{{.HostConfig.PidsLimit}}"),
        inspect(container_id, "{{.HostConfig.NanoCpus}}"),
        tmpfs("/tmp"),
        tmpfs("/work"),
    )
}

fn expected_profile(profile: &PoolProfile) -> (String, String, String, String, String, String) {
    (
        profile.user.clone(),
        profile.memory_limit_bytes.to_string(),
        profile.pids_limit.to_string(),
        ((profile.cpu_limit * 1e9).round() as i64).to_string(),
        format!(
            "rw,noexec,nosuid,nodev,size={},mode=1777",
            profile.tmp_size_bytes
        ),
        format!(
            "rw,exec,nosuid,nodev,size={},uid={},gid={},mode=0700",
            profile.workdir_size_bytes,
            profile.user.split(':').next().expect("uid"),
            profile.user.split(':').nth(1).expect("gid"),
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconfiguring_replaces_the_pool_and_spares_running_jobs() {
    let agent = unique("agent-reconf");
    let first = first_profile(&agent);
    let second = second_profile(&agent);
    let sandbox = DockerSandbox::connect(None)
        .await
        .expect("the Docker engine answers")
        .with_warm_pool(2, first.clone())
        .expect("start the warm pool");
    // The clone a job task would hold: it must follow the swap too.
    let job_task_clone = sandbox.clone();
    wait_idle(&sandbox, 2).await;

    // A job of the first profile keeps running in its pool container across the swap; it
    // ends when told to, through a file only `docker exec` can create.
    let running = start(
        &sandbox,
        spec(
            &first,
            "echo started; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo done; id -u",
        ),
    )
    .await;
    assert_eq!(sandbox.warm_pool_stats().expect("a pool").claimed_total, 1);
    assert_eq!(
        inspect(
            &running.container_id,
            "{{index .Config.Labels \"quickcmd.pool\"}}"
        ),
        agent,
        "the long job runs in a pool container"
    );
    wait_idle(&sandbox, 2).await;
    let old_idle: Vec<String> = pool_containers(&agent)
        .await
        .into_iter()
        .filter(|id| id != &running.container_id)
        .collect();
    assert_eq!(old_idle.len(), 2, "{old_idle:?}");
    let old_instance = inspect(
        &old_idle[0],
        &format!("{{{{index .Config.Labels \"{LABEL_POOL_INSTANCE}\"}}}}"),
    );

    // Same size and profile: nothing to do.
    assert!(!sandbox
        .reconfigure_warm_pool(2, first.clone())
        .expect("valid profile"));
    // An invalid profile is refused and the running pool stays.
    let invalid = PoolProfile {
        pids_limit: 0,
        ..second.clone()
    };
    assert!(sandbox.reconfigure_warm_pool(3, invalid).is_err());
    assert_eq!(sandbox.warm_pool_stats().expect("a pool").size, 2);

    // The reload: size 3 and the second profile.
    assert!(sandbox
        .reconfigure_warm_pool(3, second.clone())
        .expect("valid profile"));
    // At once, before anything was removed: a job of the old profile gets no old container
    // (it does not fit the new pool and runs cold), even through a clone made earlier.
    let before = job_task_clone.warm_pool_stats().expect("a pool");
    assert_eq!(before.size, 3);
    let (outcome, stdout) = run(&job_task_clone, spec(&first, "id -u")).await;
    assert_eq!((outcome.exit_code, stdout.as_str()), (0, "65534\n"));
    assert!(!old_idle.contains(&outcome.container_id));
    let after = job_task_clone.warm_pool_stats().expect("a pool");
    assert_eq!(after.claimed_total, before.claimed_total, "{after:?}");
    assert_eq!(after.cold_fallbacks_total, before.cold_fallbacks_total + 1);

    sandbox.wait_retired_warm_pools().await;
    for id in &old_idle {
        assert_eq!(
            Command::new("docker")
                .args(["inspect", id])
                .output()
                .expect("docker inspect runs")
                .status
                .code(),
            Some(1),
            "the old pool's idle container {id} is removed"
        );
    }
    // The start-up sweep spares what this process's pools made, the replaced one's running
    // container included.
    assert_eq!(
        sandbox
            .remove_agent_containers(&agent)
            .await
            .expect("sweep"),
        0
    );

    // The job in the old pool's container was not touched: it is still running and ends
    // normally once told to.
    assert_eq!(inspect(&running.container_id, "{{.State.Running}}"), "true");
    let told = Command::new("docker")
        .args(["exec", &running.container_id, "touch", "/tmp/go"])
        .status()
        .expect("docker exec runs");
    assert!(told.success());
    let (result, stdout) = running.ended.await.expect("job task");
    let outcome = result.expect("the long job ran");
    assert_eq!(
        (outcome.exit_code, stdout.as_str()),
        (0, "started\ndone\n65534\n")
    );

    // The new pool: three containers of the second profile, none of the old ones.
    wait_idle(&sandbox, 3).await;
    let new_idle = pool_containers(&agent).await;
    assert_eq!(new_idle.len(), 3, "{new_idle:?}");
    for id in &new_idle {
        assert!(!old_idle.contains(id), "{id} is an old pool container");
        assert_eq!(recorded_profile(id), expected_profile(&second), "{id}");
        assert_ne!(
            inspect(
                id,
                &format!("{{{{index .Config.Labels \"{LABEL_POOL_INSTANCE}\"}}}}")
            ),
            old_instance
        );
    }
    // A job of the new profile takes one of them.
    let claimed = sandbox.warm_pool_stats().expect("a pool").claimed_total;
    let (outcome, stdout) = run(&sandbox, spec(&second, "id -u; id -g")).await;
    assert_eq!((outcome.exit_code, stdout.as_str()), (0, "4242\n4242\n"));
    assert!(new_idle.contains(&outcome.container_id));
    assert_eq!(
        sandbox.warm_pool_stats().expect("a pool").claimed_total,
        claimed + 1
    );

    // Size 0 turns the pool off: no container left, jobs run cold, the totals stay.
    assert!(sandbox
        .reconfigure_warm_pool(0, second.clone())
        .expect("valid profile"));
    sandbox.wait_retired_warm_pools().await;
    assert_eq!(pool_containers(&agent).await, Vec::<String>::new());
    let off = sandbox.warm_pool_stats().expect("counters stay");
    assert_eq!((off.size, off.idle, off.claimed_total), (0, 0, claimed + 1));
    let (outcome, stdout) = run(&sandbox, spec(&second, "id -u")).await;
    assert_eq!((outcome.exit_code, stdout.as_str()), (0, "4242\n"));
    assert_eq!(
        sandbox
            .warm_pool_stats()
            .expect("counters stay")
            .claimed_total,
        claimed + 1
    );

    // 0 → 1 turns it on again, with the profile given now.
    assert!(sandbox
        .reconfigure_warm_pool(1, first.clone())
        .expect("valid profile"));
    wait_idle(&sandbox, 1).await;
    let on = pool_containers(&agent).await;
    assert_eq!(on.len(), 1, "{on:?}");
    assert_eq!(recorded_profile(&on[0]), expected_profile(&first));
    let (outcome, _) = run(&sandbox, spec(&first, "true")).await;
    assert_eq!(outcome.container_id, on[0]);

    sandbox.shutdown_warm_pool().await;
    assert_eq!(pool_containers(&agent).await, Vec::<String>::new());
}
