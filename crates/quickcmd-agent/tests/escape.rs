//! The sandbox escape table (issue 8, "Then prove it"): one test per row, each a signed job
//! submitted to the real `quickcmd-agent` binary, run by the real Docker engine as the
//! configured non-root `sandbox_user`, judged from what the job saw and what the host shows
//! afterwards.
//!
//! | row                                   | test                                  |
//! |---------------------------------------|---------------------------------------|
//! | no interface but `lo`                 | [`only_loopback`]                     |
//! | read-only root                        | [`root_is_read_only`]                 |
//! | `/proc/sys` and `/sys` read-only      | [`proc_sys_and_sys_are_read_only`]    |
//! | `CapEff` (and every cap set) zero     | [`no_capabilities`]                   |
//! | `NoNewPrivs: 1`                       | [`no_new_privileges`]                 |
//! | fork bomb stopped by the pids limit   | [`fork_bomb_is_stopped`]              |
//! | memory bomb ends `failed/oom`         | [`memory_bomb_is_oom`]                |
//! | `/tmp` (and the workdir) fill stops   | [`tmp_fill_stops_at_its_size`]        |
//! | CPU hog throttled to `cpu_limit`      | [`cpu_hog_is_throttled`]              |
//! | SIGTERM-proof double fork, cancelled  | [`cancel_leaves_nothing_on_the_host`] |
//!
//! Deeper checks of single rows live elsewhere and are not repeated here: the network grant
//! (`tests/sandbox.rs::network_is_off_unless_granted`), the container's recorded host config
//! (`tests/sandbox.rs::cancel_kills_the_sandbox_and_removes_it`,
//! `quickcmd-sandbox/tests/docker.rs::engine_applied_the_host_config`), the exact process
//! count under `pids_limit` and `noexec` on /tmp (`quickcmd-sandbox/tests/docker.rs`), the
//! timeout and the audit rows of an OOM (`tests/sandbox.rs`).
//!
//! Every row runs once per entry of [`POOL_SIZES`], through [`agent_config`]: the table must
//! hold for a fresh container and for a pre-started (warm) one alike. A pooled run proves
//! each job took a pool container (`quickcmd_agent_warm_pool_claimed_total` goes up by one
//! per job; a cold run has no pool at all), and finds the container a job ran in by its
//! id in the job's result or, while it runs, by the cgroup of its processes — pool
//! containers carry no `quickcmd.job` label, so the label alone would prove nothing.

use std::path::PathBuf;
use std::process::Command;

use quickcmd_protocol::{JobResult, JobStatus, SandboxRequest};
use quickcmd_testkit::{
    assert_no_containers_soon, containers, eventually, metric, payload, unique, Config, TestAgent,
    PATIENCE,
};
use serde_json::json;

/// Warm container pool sizes every row runs with: cold, then pooled.
const POOL_SIZES: &[usize] = &[0, 2];

/// The non-root user the sandbox runs jobs as in this table (not the default 65534, so the
/// test shows the configured value is the one used).
const SANDBOX_USER: &str = "4242:4242";
const PIDS_LIMIT: i64 = 64;
const TMP_BYTES: i64 = 8 * 1024 * 1024;
const WORKDIR_BYTES: i64 = 12 * 1024 * 1024;
const CPU_LIMIT: f64 = 0.25;

/// The agent config of every row, for one warm pool size.
fn agent_config(warm_pool_size: usize) -> Config {
    Config::default()
        .set("sandbox_user", json!(SANDBOX_USER))
        .set("pids_limit", json!(PIDS_LIMIT))
        .set("sandbox_tmp_bytes", json!(TMP_BYTES))
        .set("sandbox_workdir_bytes", json!(WORKDIR_BYTES))
        .set("default_cpu_limit", json!(CPU_LIMIT))
        .set("warm_pool_size", json!(warm_pool_size))
}

/// One agent of the table, and whether its jobs must run in warm pool containers.
struct Rig {
    agent: TestAgent,
    pooled: bool,
}

/// Runs one row against a fresh agent for every pool size.
macro_rules! row {
    ($name:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for &pool in POOL_SIZES {
                let rig = Rig {
                    agent: TestAgent::start(
                        &format!("esc-{}-p{pool}", stringify!($name)),
                        agent_config(pool),
                    ),
                    pooled: pool > 0,
                };
                $body(&rig).await;
            }
        }
    };
}

impl Rig {
    /// Before a job: pooled, waits until a pool container is ready (so the job is a claim,
    /// not a miss) and returns the claims so far; cold, asserts the agent has no pool.
    async fn before_job(&self) -> f64 {
        let deadline = std::time::Instant::now() + PATIENCE;
        loop {
            let text = self.agent.metrics().await;
            let claimed = metric(&text, "quickcmd_agent_warm_pool_claimed_total");
            if !self.pooled {
                assert_eq!(
                    claimed, None,
                    "a cold run has no warm pool:
{text}"
                );
                return 0.0;
            }
            if metric(&text, "quickcmd_agent_warm_pool_idle").is_some_and(|idle| idle >= 1.0) {
                return claimed.expect("a pool counts its claims");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the warm pool never had a container ready:
{text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// After the job: pooled, it was served by the pool (one more claim); cold, still no
    /// pool.
    async fn after_job(&self, claimed_before: f64) {
        let text = self.agent.metrics().await;
        let claimed = metric(&text, "quickcmd_agent_warm_pool_claimed_total");
        if self.pooled {
            assert_eq!(
                claimed,
                Some(claimed_before + 1.0),
                "the job did not run in a warm pool container:
{text}"
            );
        } else {
            assert_eq!(
                claimed, None,
                "a cold run has no warm pool:
{text}"
            );
        }
    }

    /// The containers a running job may be in: cold, those labelled with its id; pooled,
    /// this agent's pool containers (they carry no job label).
    fn candidate_containers(&self, job_id: &str) -> Vec<String> {
        if self.pooled {
            assert!(
                container_ids(job_id).is_empty(),
                "a pool container has no job label"
            );
            containers(&format!("label=quickcmd.pool={}", self.agent.agent_id))
        } else {
            container_ids(job_id)
        }
    }
}

/// Nothing of an ended job's container is left: none labelled with its id, and none with
/// the id its result names (the only way to find a pool container, which has no job
/// label). `soon`: a job that ended by itself (exit, OOM) has its stopped container removed
/// just after its result is sent, so the check waits a little; a cancelled or timed-out
/// job's container is removed before the result, so it is checked at once.
fn container_is_gone(job_id: &str, result: &JobResult, soon: bool) {
    assert!(
        !result.sandbox_id.is_empty(),
        "the result names the container the job ran in: {result:#?}"
    );
    for filter in [
        format!("label=quickcmd.job={job_id}"),
        format!("id={}", result.sandbox_id),
    ] {
        if soon {
            assert_no_containers_soon(&filter);
        } else {
            assert_eq!(containers(&filter), Vec::<String>::new(), "{filter}");
        }
    }
}

/// Submits `command` as ctl-a and waits for its result; asserts the job ran in a pool
/// container when the rig is pooled.
async fn run(rig: &Rig, command: &str, sandbox: Option<SandboxRequest>) -> (String, JobResult) {
    let agent = &rig.agent;
    let claimed = rig.before_job().await;
    let job_id = unique("esc");
    let mut p = payload("ctl-a", &job_id, command);
    p.sandbox = sandbox;
    agent.post(agent.body(&p)).await.assert_accepted(&job_id);
    let result = agent
        .wait_final("ctl-a", &job_id)
        .await
        .result
        .expect("a final job has a result");
    rig.after_job(claimed).await;
    (job_id, result)
}

/// Runs `command`, asserts it completed with exit 0, returns its stdout.
async fn stdout_of(agent: &Rig, command: &str) -> String {
    let (_, result) = run(agent, command, None).await;
    assert_eq!(
        (result.status, result.exit_code),
        (JobStatus::Completed, 0),
        "{result:#?}"
    );
    result.stdout
}

/// `key=value` lines of a job's output.
fn value<'a>(stdout: &'a str, key: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {stdout}"))
}

fn container_ids(job_id: &str) -> Vec<String> {
    containers(&format!("label=quickcmd.job={job_id}"))
}

/// The agent answers `/health` and still runs an ordinary job.
async fn agent_is_fine(rig: &Rig) {
    let health = rig
        .agent
        .request(reqwest::Method::GET, "/health", None)
        .await;
    assert_eq!(health.status, 200, "{}", health.text);
    assert_eq!(health.json()["status"], json!("healthy"), "{}", health.text);
    assert_eq!(stdout_of(rig, "echo still-fine").await, "still-fine\n");
}

// ---------------------------------------------------------------------------------------------
// Rows
// ---------------------------------------------------------------------------------------------

row!(only_loopback, only_loopback_with);
async fn only_loopback_with(rig: &Rig) {
    let out = stdout_of(
        rig,
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' ' | sed 's/^/dev=/'; \
         ls /sys/class/net | sed 's/^/sys=/'",
    )
    .await;
    assert_eq!(out, "dev=lo\nsys=lo\n");
}

row!(root_is_read_only, root_is_read_only_with);
async fn root_is_read_only_with(rig: &Rig) {
    let out = stdout_of(
        rig,
        "for p in /x /etc/x /bin/x /usr/x /var/x; do \
           touch $p 2>&1 && echo \"$p=written\" || echo \"$p=refused\"; done; \
         mkdir /d 2>/dev/null && echo mkdir=written || echo mkdir=refused; \
         grep ' / ' /proc/mounts | cut -d' ' -f4 | cut -d, -f1 | sed 's/^/rootfs=/'",
    )
    .await;
    for path in ["/x", "/etc/x", "/bin/x", "/usr/x", "/var/x"] {
        assert_eq!(value(&out, path), "refused", "{out}");
    }
    assert_eq!(value(&out, "mkdir"), "refused", "{out}");
    assert_eq!(value(&out, "rootfs"), "ro", "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
}

row!(proc_sys_and_sys_are_read_only, proc_sys_and_sys_with);
async fn proc_sys_and_sys_with(rig: &Rig) {
    // The mount options say read-only, and a write is refused for that reason (not only for
    // lack of permission, which a non-root user would get anyway).
    let out = stdout_of(
        rig,
        "for m in /sys /proc/sys; do \
           echo \"$m=$(awk -v m=$m '$2 == m {split($4, o, \",\"); print o[1]}' /proc/mounts)\"; done; \
         { echo x > /proc/sys/kernel/hostname; } 2>&1; echo hostname_rc=$?; \
         { echo x > /sys/kernel/uevent_helper; } 2>&1; echo uevent_rc=$?",
    )
    .await;
    assert_eq!(value(&out, "/sys"), "ro", "{out}");
    assert_eq!(value(&out, "/proc/sys"), "ro", "{out}");
    assert_ne!(value(&out, "hostname_rc"), "0", "{out}");
    assert_ne!(value(&out, "uevent_rc"), "0", "{out}");
    assert!(out.contains("Read-only file system"), "{out}");
}

/// `/proc/self/status` lines as key → value.
fn proc_status(out: &str) -> std::collections::HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_string(), v.trim().to_string()))
        .collect()
}

row!(no_capabilities, no_capabilities_with);
async fn no_capabilities_with(rig: &Rig) {
    let out = stdout_of(
        rig,
        "echo \"User:$(id -u):$(id -g)\"; grep -E '^Cap(Inh|Prm|Eff|Bnd|Amb):' /proc/self/status",
    )
    .await;
    let status = proc_status(&out);
    assert_eq!(
        status.get("User").map(String::as_str),
        Some("4242:4242"),
        "the configured sandbox_user {SANDBOX_USER}: {out}"
    );
    // CapBnd zero too: nothing (a setuid file included) can gain a capability back.
    for cap in ["CapEff", "CapPrm", "CapInh", "CapBnd", "CapAmb"] {
        assert_eq!(
            status.get(cap).map(String::as_str),
            Some("0000000000000000"),
            "{cap}: {out}"
        );
    }
}

row!(no_new_privileges, no_new_privileges_with);
async fn no_new_privileges_with(rig: &Rig) {
    let out = stdout_of(rig, "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status").await;
    let status = proc_status(&out);
    assert_eq!(
        status.get("NoNewPrivs").map(String::as_str),
        Some("1"),
        "{out}"
    );
    // 2: a seccomp filter (the engine's default profile) is in force.
    assert_eq!(
        status.get("Seccomp").map(String::as_str),
        Some("2"),
        "{out}"
    );
}

row!(fork_bomb_is_stopped, fork_bomb_with);
async fn fork_bomb_with(rig: &Rig) {
    let (job_id, bomb) = run(
        rig,
        "bomb() { bomb | bomb & }; bomb; sleep 3",
        Some(SandboxRequest {
            timeout_seconds: Some(15),
            ..SandboxRequest::default()
        }),
    )
    .await;
    assert!(bomb.status.is_final(), "{bomb:#?}");
    container_is_gone(&job_id, &bomb, true);
    // The host can still fork, and the agent still serves and runs jobs.
    let host = Command::new("true").status().expect("the host can fork");
    assert!(host.success());
    agent_is_fine(rig).await;
}

row!(memory_bomb_is_oom, memory_bomb_with);
async fn memory_bomb_with(rig: &Rig) {
    // `tail` keeps a line that never ends in memory; 16 MiB (memory + swap) stops it.
    let (job_id, result) = run(
        rig,
        "tail /dev/zero",
        Some(SandboxRequest {
            memory_limit: Some(16 * 1024 * 1024),
            ..SandboxRequest::default()
        }),
    )
    .await;
    assert_eq!(
        (result.status, result.reason.as_deref(), result.exit_code),
        (JobStatus::Failed, Some("oom"), 137),
        "{result:#?}"
    );
    container_is_gone(&job_id, &result, true);
    agent_is_fine(rig).await;
}

row!(tmp_fill_stops_at_its_size, tmp_fill_with);
async fn tmp_fill_with(rig: &Rig) {
    // 32 MiB into each tmpfs: the writes stop at the configured size with ENOSPC.
    let out = stdout_of(
        rig,
        "for d in /tmp /work; do \
           { head -c 33554432 /dev/zero > $d/fill; } 2>&1; echo \"$d.rc=$?\"; \
           echo \"$d.bytes=$(wc -c < $d/fill)\"; done; \
         { echo more > /tmp/more; } 2>&1; echo more.rc=$?",
    )
    .await;
    for (dir, size) in [("/tmp", TMP_BYTES), ("/work", WORKDIR_BYTES)] {
        assert_ne!(value(&out, &format!("{dir}.rc")), "0", "{out}");
        let bytes: i64 = value(&out, &format!("{dir}.bytes"))
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("byte count of {dir}: {out}"));
        assert!(
            bytes <= size && bytes > size / 2,
            "{dir} took {bytes} bytes with a size of {size}: {out}"
        );
    }
    assert_ne!(value(&out, "more.rc"), "0", "{out}");
    assert!(out.contains("No space left on device"), "{out}");
}

/// Shell that prints the container's own CPU usage in nanoseconds (cgroup v1 cpuacct or
/// v2 cpu.stat; the cgroup namespace is private, so its root is the container's cgroup).
const CPU_USAGE_NS: &str = "usage() { \
    if [ -r /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then cat /sys/fs/cgroup/cpuacct/cpuacct.usage; \
    else echo $(( $(awk '/^usage_usec/ {print $2}' /sys/fs/cgroup/cpu.stat) * 1000 )); fi; }";

row!(cpu_hog_is_throttled, cpu_hog_with);
async fn cpu_hog_with(rig: &Rig) {
    // Three busy loops (more than this 2-core host has) for 6 s of wall time; the container's
    // CPU time over the same span, against cpu_limit. A limit, not a latency: without it the
    // ratio would be 1 or more.
    let script = format!(
        "{CPU_USAGE_NS}; \
         u0=$(usage); t0=$(cut -d' ' -f1 /proc/uptime); \
         (while :; do :; done) & p1=$!; (while :; do :; done) & p2=$!; (while :; do :; done) & p3=$!; \
         sleep 6; \
         u1=$(usage); t1=$(cut -d' ' -f1 /proc/uptime); \
         kill $p1 $p2 $p3; \
         echo usage_ns=$((u1 - u0)); echo wall=$t0,$t1"
    );
    let out = stdout_of(rig, &script).await;
    let usage_ns: f64 = value(&out, "usage_ns")
        .parse()
        .unwrap_or_else(|_| panic!("usage: {out}"));
    let (t0, t1) = value(&out, "wall")
        .split_once(',')
        .unwrap_or_else(|| panic!("wall: {out}"));
    let wall = t1.parse::<f64>().expect("uptime") - t0.parse::<f64>().expect("uptime");
    let ratio = usage_ns / 1e9 / wall;
    eprintln!("cpu hog: {usage_ns} ns of CPU in {wall} s of wall time = {ratio:.3} cores (cpu_limit {CPU_LIMIT})");
    assert!(wall >= 5.0, "{out}");
    assert!(
        ratio <= CPU_LIMIT * 1.5,
        "the hog used {ratio:.3} cores under cpu_limit {CPU_LIMIT}: {out}"
    );
    // The measurement saw the hog at all (a broken reading would pass the bound above).
    assert!(ratio >= 0.02, "no CPU time measured: {out}");
}

/// Host processes whose command line holds `marker`.
fn host_processes_with(marker: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(marker))
        })
        .collect()
}

/// The host directory of the cgroup that holds `pid` (the `pids` hierarchy on cgroup v1,
/// the unified one on v2).
fn host_cgroup_of(pid: u32) -> PathBuf {
    let text =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("read /proc/pid/cgroup");
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        match (controllers, path) {
            (Some(c), Some(path)) if c.split(',').any(|c| c == "pids") => {
                return PathBuf::from("/sys/fs/cgroup/pids").join(path.trim_start_matches('/'));
            }
            (Some(""), Some(path)) => unified = Some(path.to_string()),
            _ => {}
        }
    }
    let path = unified.unwrap_or_else(|| panic!("no cgroup for {pid}: {text}"));
    PathBuf::from("/sys/fs/cgroup").join(path.trim_start_matches('/'))
}

/// The host pid of a container's first process; `None` when it is not running (a pool
/// container being made, say), so it cannot hold any process.
fn running_init(container_id: &str) -> Option<u32> {
    let inspect = Command::new("docker")
        .args(["inspect", "-f", "{{.State.Pid}}", container_id])
        .output()
        .expect("docker inspect");
    String::from_utf8_lossy(&inspect.stdout)
        .trim()
        .parse()
        .ok()
        .filter(|pid| *pid != 0)
}

/// Pids listed in a cgroup directory (none when it is gone).
fn cgroup_procs(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

row!(cancel_leaves_nothing_on_the_host, cancel_with);
async fn cancel_with(rig: &Rig) {
    let agent = &rig.agent;
    let marker = unique("escape-marker");
    // Every shell ignores SIGTERM; the middle one forks the last into its own session and
    // exits (a double fork), so the last is nobody's child but the container's init.
    let command = format!(
        "trap '' TERM; \
         (trap '' TERM; setsid sh -c \"trap '' TERM; while :; do sleep 1; done; : {marker}\" &); \
         echo started; while :; do sleep 1; done"
    );
    let claimed = rig.before_job().await;
    let job_id = unique("esc-cancel");
    agent.submit("ctl-a", &job_id, &command).await;
    agent.wait_running("ctl-a", &job_id).await;

    // While it runs: the job's processes are visible on the host, in the cgroup of exactly
    // one of the containers it may be in (cold: the one with its job label; pooled: one of
    // the agent's pool containers).
    let before = eventually(PATIENCE, "the job's two shells on the host", || {
        let pids = host_processes_with(&marker);
        (pids.len() >= 2).then_some(pids)
    });
    let job_cgroup = host_cgroup_of(before[0]);
    let holding: Vec<(String, PathBuf)> = rig
        .candidate_containers(&job_id)
        .into_iter()
        .filter_map(|id| {
            let cgroup = host_cgroup_of(running_init(&id)?);
            (cgroup == job_cgroup).then_some((id, cgroup))
        })
        .collect();
    assert_eq!(
        holding.len(),
        1,
        "one container holds the job's processes: {holding:?}"
    );
    let (container, cgroup) = holding.into_iter().next().expect("one container");
    let procs = cgroup_procs(&cgroup);
    // A matching process may be a short-lived helper of the job that is gone by now (seen
    // in CI): the ones still alive must all be in the job's cgroup.
    let alive: Vec<_> = before
        .iter()
        .filter(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists())
        .collect();
    assert!(alive.len() >= 2, "the job's two shells: {before:?}");
    for pid in alive {
        assert!(
            procs.contains(&pid.to_string()),
            "process {pid} is in the job's cgroup {} ({procs:?})",
            cgroup.display()
        );
    }

    agent
        .cancel("ctl-a", &job_id)
        .await
        .assert_accepted(&job_id);
    let result = agent
        .wait_final("ctl-a", &job_id)
        .await
        .result
        .expect("result");
    assert_eq!(
        (result.status, result.reason.as_deref(), result.exit_code),
        (JobStatus::Failed, Some("cancelled"), 137),
        "{result:#?}"
    );
    rig.after_job(claimed).await;
    assert!(
        result.sandbox_id.starts_with(&container),
        "the result names the container that held the job ({container}): {result:#?}"
    );
    // Nothing of the job is left: no container, no process, no member of its cgroup.
    container_is_gone(&job_id, &result, false);
    let left = host_processes_with(&marker);
    assert!(
        left.is_empty(),
        "processes of the job left on the host: {left:?}"
    );
    let procs = cgroup_procs(&cgroup);
    assert!(
        procs.is_empty(),
        "processes left in {}: {procs:?}",
        cgroup.display()
    );
}
