//! The sandbox against the real Docker engine and the real `quickcmd-sandbox:latest` image
//! (built by `scripts/build-sandbox-image.sh` when needed). No engine is a failure, never a
//! skip: every behaviour the agent relies on is proven here.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
};
use bollard::Docker;
use quickcmd_sandbox::{
    BindMount, DockerSandbox, EndReason, OutputChunk, PoolProfile, SandboxError, SandboxOutcome,
    SandboxSpec, LABEL_AGENT, LABEL_JOB, LABEL_MANAGED, LABEL_POOL,
};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

const IMAGE: &str = "quickcmd-sandbox:latest";
const NOBODY: &str = "65534:65534";

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{nanos:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn no_engine(what: &str, err: &dyn std::fmt::Display) -> ! {
    let ci = std::env::var("CI").is_ok_and(|value| value == "true");
    panic!(
        "the Docker engine does not answer ({what}: {err}); these tests need a real engine, \
         start one with scripts/ensure-docker.sh{}",
        if ci {
            " (CI=true: a missing engine fails the build)"
        } else {
            ""
        }
    )
}

/// Builds the image once per test binary; the script is a no-op when the image is current.
async fn ensure_image() {
    static IMAGE_READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = tokio::task::spawn_blocking(|| {
        IMAGE_READY
            .get_or_init(|| {
                let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("../../scripts/build-sandbox-image.sh");
                let result = std::process::Command::new("bash")
                    .arg(&script)
                    .arg(IMAGE)
                    .output()
                    .map_err(|err| format!("cannot run {}: {err}", script.display()))?;
                if result.status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} failed: {}",
                        script.display(),
                        String::from_utf8_lossy(&result.stderr)
                    ))
                }
            })
            .clone()
    })
    .await
    .expect("image build task panicked");
    if let Err(err) = ready {
        panic!("the sandbox image {IMAGE} is not available: {err}");
    }
}

async fn sandbox() -> DockerSandbox {
    let sandbox = match DockerSandbox::connect(None).await {
        Ok(sandbox) => sandbox,
        Err(err) => no_engine("connect", &err),
    };
    if let Err(err) = sandbox.ping().await {
        no_engine("ping", &err);
    }
    ensure_image().await;
    sandbox
}

/// A raw engine handle for checking what the crate did, independent of the crate.
async fn raw_docker() -> Docker {
    let docker = Docker::connect_with_local_defaults().expect("local docker socket");
    docker.negotiate_version().await.expect("version handshake")
}

async fn containers_labelled(label: &str) -> Vec<String> {
    let filters = HashMap::from([("label", vec![label.to_owned()])]);
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

async fn container_exists(container_id: &str) -> bool {
    match raw_docker()
        .await
        .inspect_container(container_id, None)
        .await
    {
        Ok(_) => true,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => false,
        Err(err) => panic!("inspect {container_id}: {err}"),
    }
}

fn spec(agent_id: &str, command: &str) -> SandboxSpec {
    SandboxSpec {
        job_id: unique("job"),
        agent_id: agent_id.to_owned(),
        image: IMAGE.to_owned(),
        command: command.to_owned(),
        user: NOBODY.to_owned(),
        network: false,
        cpu_limit: 1.0,
        memory_limit_bytes: 64 << 20,
        pids_limit: 64,
        timeout: Duration::from_secs(30),
        env: BTreeMap::new(),
        workdir: "/work".to_owned(),
        tmp_size_bytes: 16 << 20,
        workdir_size_bytes: 16 << 20,
        mounts: Vec::new(),
        stdin: None,
    }
}

// ---------------------------------------------------------------------------------------------
// Cold and pooled: every sandbox test runs both ways
// ---------------------------------------------------------------------------------------------

/// How a test's jobs reach their container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A fresh container per job (no pool).
    Cold,
    /// A warm pool whose profile is `spec()`'s defaults; every job is checked to have been
    /// served by it.
    Pooled,
}

/// The pool profile matching `spec(agent, _)`.
fn profile(agent_id: &str) -> PoolProfile {
    let defaults = spec(agent_id, "");
    PoolProfile {
        agent_id: agent_id.to_owned(),
        image: defaults.image,
        user: defaults.user,
        workdir: defaults.workdir,
        tmp_size_bytes: defaults.tmp_size_bytes,
        workdir_size_bytes: defaults.workdir_size_bytes,
        cpu_limit: defaults.cpu_limit,
        memory_limit_bytes: defaults.memory_limit_bytes,
        pids_limit: defaults.pids_limit,
    }
}

/// A sandbox for one test, its agent id, and (pooled) its warm pool.
struct Harness {
    sandbox: DockerSandbox,
    agent: String,
    mode: Mode,
}

impl Harness {
    async fn new(mode: Mode) -> Self {
        Self::with_pool_size(mode, 1).await
    }

    async fn with_pool_size(mode: Mode, pool_size: usize) -> Self {
        let agent = unique("agent");
        let sandbox = sandbox().await;
        let sandbox = match mode {
            Mode::Cold => sandbox,
            Mode::Pooled => sandbox
                .with_warm_pool(pool_size, profile(&agent))
                .expect("start the warm pool"),
        };
        Self {
            sandbox,
            agent,
            mode,
        }
    }

    fn spec(&self, command: &str) -> SandboxSpec {
        spec(&self.agent, command)
    }

    /// Stops the pool and removes its idle containers, and checks none is left.
    async fn finish(&self) {
        self.sandbox.shutdown_warm_pool().await;
        assert_eq!(
            containers_labelled(&format!("{LABEL_POOL}={}", self.agent)).await,
            Vec::<String>::new(),
            "pool containers outlived the pool"
        );
    }

    /// Pooled: waits until the pool holds `count` ready containers.
    async fn wait_idle(&self, count: usize) {
        if self.mode == Mode::Cold {
            return;
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let stats = self.sandbox.warm_pool_stats().expect("a pool");
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

    fn claimed(&self) -> u64 {
        self.sandbox
            .warm_pool_stats()
            .map_or(0, |stats| stats.claimed_total)
    }

    async fn run(&self, spec: SandboxSpec) -> Finished {
        self.run_with(spec, CancellationToken::new(), 64, Duration::ZERO, |_| {})
            .await
    }

    async fn run_command(&self, command: &str) -> Finished {
        self.run(self.spec(command)).await
    }

    /// `run_with` after the pool is ready; pooled, asserts the job really took a pool
    /// container.
    async fn run_with(
        &self,
        spec: SandboxSpec,
        cancel: CancellationToken,
        capacity: usize,
        read_delay: Duration,
        on_started: impl FnOnce(String) + Send + 'static,
    ) -> Finished {
        self.wait_idle(1).await;
        let before = self.claimed();
        let cancelled_early = cancel.is_cancelled();
        let finished = run_with(
            &self.sandbox,
            spec,
            cancel,
            capacity,
            read_delay,
            on_started,
        )
        .await;
        if self.mode == Mode::Pooled && !cancelled_early {
            assert_eq!(self.claimed(), before + 1, "the job did not use the pool");
        }
        finished
    }
}

/// Runs one test body with a fresh harness of `mode`, then stops its pool and removes the
/// pool's idle containers (a test that panics leaves them to the next agent sweep).
async fn both<F>(mode: Mode, body: F)
where
    F: for<'h> FnOnce(&'h Harness) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'h>>,
{
    let h = Harness::new(mode).await;
    body(&h).await;
    h.finish().await;
}

/// Each named `async fn NAME(h: &Harness)` becomes two tests, `cold::NAME` and
/// `pooled::NAME`.
macro_rules! both_ways {
    ($($name:ident),* $(,)?) => {
        mod cold {
            $(#[tokio::test] async fn $name() { super::both(super::Mode::Cold, |h| Box::pin(super::$name(h))).await })*
        }
        mod pooled {
            $(#[tokio::test] async fn $name() { super::both(super::Mode::Pooled, |h| Box::pin(super::$name(h))).await })*
        }
    };
}

both_ways!(
    exit_codes_zero_and_three,
    stdout_and_stderr_are_separate,
    first_line_is_never_lost,
    last_bytes_arrive_through_a_slow_small_channel,
    output_is_live_not_buffered_until_exit,
    env_and_workdir,
    stdin_bytes_reach_the_command_then_end_of_file,
    without_stdin_the_command_reads_end_of_file,
    the_workdir_is_writable_by_the_sandbox_user_default_and_custom,
    timeout_kills_with_124_and_removes_the_container,
    out_of_memory_is_reported_as_oom,
    fork_bomb_is_contained_by_the_pids_limit,
    pids_limit_is_enforced_inside,
    no_network_only_loopback,
    runs_as_nobody,
    root_is_read_only_while_tmp_and_workdir_are_writable,
    no_capabilities_no_new_privs_and_seccomp,
    engine_applied_the_host_config,
    cancel_kills_fast,
    cancel_before_start_never_starts,
    dropped_run_future_still_removes_the_container,
    run_keeping_hands_back_only_a_stopped_container,
);

/// One finished `run`, with every output chunk and when it arrived.
struct Finished {
    result: Result<SandboxOutcome, SandboxError>,
    events: Vec<(Instant, OutputChunk)>,
    started_at: Option<Instant>,
    returned_at: Instant,
}

impl Finished {
    fn outcome(&self) -> &SandboxOutcome {
        match &self.result {
            Ok(outcome) => outcome,
            Err(err) => panic!("run failed: {err}"),
        }
    }

    fn stdout(&self) -> String {
        self.collect(|chunk| match chunk {
            OutputChunk::Stdout(bytes) => Some(bytes),
            OutputChunk::Stderr(_) => None,
        })
    }

    fn stderr(&self) -> String {
        self.collect(|chunk| match chunk {
            OutputChunk::Stderr(bytes) => Some(bytes),
            OutputChunk::Stdout(_) => None,
        })
    }

    fn collect(&self, pick: impl Fn(&OutputChunk) -> Option<&bytes::Bytes>) -> String {
        let bytes: Vec<u8> = self
            .events
            .iter()
            .filter_map(|(_, chunk)| pick(chunk))
            .flat_map(|bytes| bytes.iter().copied())
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// When the first chunk containing `needle` arrived.
    fn arrival_of(&self, needle: &str) -> Instant {
        self.events
            .iter()
            .find(|(_, chunk)| match chunk {
                OutputChunk::Stdout(bytes) | OutputChunk::Stderr(bytes) => {
                    String::from_utf8_lossy(bytes).contains(needle)
                }
            })
            .map(|(at, _)| *at)
            .unwrap_or_else(|| panic!("{needle:?} never arrived"))
    }
}

/// Runs `spec` with an output channel of `capacity`, a reader that sleeps `read_delay` per
/// chunk, and `on_started` called with the container id once it runs. Afterwards asserts the
/// container is gone.
async fn run_with(
    sandbox: &DockerSandbox,
    spec: SandboxSpec,
    cancel: CancellationToken,
    capacity: usize,
    read_delay: Duration,
    on_started: impl FnOnce(String) + Send + 'static,
) -> Finished {
    let job_label = format!("{LABEL_JOB}={}", spec.job_id);
    let (output_tx, mut output_rx) = mpsc::channel(capacity);
    let (started_tx, started_rx) = oneshot::channel();
    let reader = tokio::spawn(async move {
        let mut events = Vec::new();
        while let Some(chunk) = output_rx.recv().await {
            events.push((Instant::now(), chunk));
            if !read_delay.is_zero() {
                tokio::time::sleep(read_delay).await;
            }
        }
        events
    });
    let starter = tokio::spawn(async move {
        let container_id = started_rx.await.ok()?;
        let at = Instant::now();
        on_started(container_id);
        Some(at)
    });
    let result = sandbox.run(spec, output_tx, cancel, started_tx).await;
    let returned_at = Instant::now();
    let events = reader.await.expect("reader task");
    let started_at = starter.await.expect("starter task");
    assert_eq!(
        containers_labelled(&job_label).await,
        Vec::<String>::new(),
        "the job's container must be removed when run returns ({result:?})"
    );
    // A pooled job's container carries no job label: check it by id.
    if let Ok(outcome) = &result {
        if !outcome.container_id.is_empty() {
            assert!(
                !container_exists(&outcome.container_id).await,
                "container {} outlived its job",
                outcome.container_id
            );
        }
    }
    Finished {
        result,
        events,
        started_at,
        returned_at,
    }
}

async fn run(sandbox: &DockerSandbox, spec: SandboxSpec) -> Finished {
    run_with(
        sandbox,
        spec,
        CancellationToken::new(),
        64,
        Duration::ZERO,
        |_| {},
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Exit codes and output
// ---------------------------------------------------------------------------------------------

async fn exit_codes_zero_and_three(h: &Harness) {
    let ok = h.run(h.spec("true")).await;
    assert_eq!(ok.outcome().exit_code, 0);
    assert_eq!(ok.outcome().reason, EndReason::Exited);
    assert_eq!(ok.outcome().container_id.len(), 64);

    let three = h.run(h.spec("exit 3")).await;
    assert_eq!(three.outcome().exit_code, 3);
    assert_eq!(three.outcome().reason, EndReason::Exited);
    eprintln!(
        "create->start latency: {:?} and {:?}",
        ok.outcome().start_latency,
        three.outcome().start_latency
    );
}

async fn stdout_and_stderr_are_separate(h: &Harness) {
    let finished = h
        .run_command("echo to-out; echo to-err >&2; echo more-out")
        .await;
    assert_eq!(finished.outcome().exit_code, 0);
    assert_eq!(finished.stdout(), "to-out\nmore-out\n");
    assert_eq!(finished.stderr(), "to-err\n");
}

async fn first_line_is_never_lost(outer: &Harness) {
    // Attach-before-start is what makes this hold; a fast command is the worst case.
    // Pooled: six ready containers, six jobs at once.
    let mode = outer.mode;
    let h = Harness::with_pool_size(mode, 6).await;
    h.wait_idle(6).await;
    let runs = (0..6).map(|_| run(&h.sandbox, h.spec("echo first")));
    let finished_all = futures_util::future::join_all(runs).await;
    if mode == Mode::Pooled {
        assert_eq!(h.claimed(), 6, "every job used the pool");
    }
    for finished in finished_all {
        assert_eq!(finished.outcome().exit_code, 0);
        assert_eq!(finished.stdout(), "first\n");
    }
    h.finish().await;
}

async fn last_bytes_arrive_through_a_slow_small_channel(h: &Harness) {
    // 256 KiB through a channel of one slot with a slow reader: the command is throttled by
    // backpressure, and everything up to the final marker (no newline) still arrives.
    let command = "head -c 262144 /dev/zero | tr '\\0' a; printf END";
    let finished = h
        .run_with(
            h.spec(command),
            CancellationToken::new(),
            1,
            Duration::from_millis(2),
            |_| {},
        )
        .await;
    assert_eq!(finished.outcome().exit_code, 0);
    let stdout = finished.stdout();
    assert_eq!(stdout.len(), 262_144 + 3);
    assert!(stdout.ends_with("aEND"));
}

async fn output_is_live_not_buffered_until_exit(h: &Harness) {
    let finished = h.run(h.spec("echo early; sleep 2; echo late")).await;
    assert_eq!(finished.outcome().exit_code, 0);
    assert_eq!(finished.stdout(), "early\nlate\n");
    let early = finished.arrival_of("early");
    let late = finished.arrival_of("late");
    // Event order, with the 2 s sleep between them: "early" reached us while the job was
    // still sleeping, not when the job ended.
    assert!(early < late);
    assert!(
        late.duration_since(early) >= Duration::from_secs(1),
        "early and late arrived together: output was buffered"
    );
    assert!(finished.returned_at.duration_since(early) >= Duration::from_secs(1));
}

#[tokio::test]
async fn output_is_live_handshake_through_a_read_only_bind_mount() {
    let sandbox = sandbox().await;
    let signal_dir = tempfile::tempdir().expect("temp dir");
    let go_file = signal_dir.path().join("go");
    // The job prints, then waits for a file the test creates only after it has seen the
    // print. Buffered output would deadlock into the timeout.
    let mut job = spec(
        &unique("agent"),
        "echo ready; while [ ! -e /signal/go ]; do sleep 0.05; done; \
         touch /signal/x 2>/dev/null && echo writable || echo read-only",
    );
    job.timeout = Duration::from_secs(20);
    job.mounts.push(BindMount {
        source: signal_dir.path().to_path_buf(),
        target: "/signal".to_owned(),
        read_only: true,
    });
    let (output_tx, mut output_rx) = mpsc::channel(8);
    let (started_tx, _started_rx) = oneshot::channel();
    let running = sandbox.run(job, output_tx, CancellationToken::new(), started_tx);
    let handshake = async {
        let mut seen = String::new();
        while let Some(chunk) = output_rx.recv().await {
            if let OutputChunk::Stdout(bytes) = chunk {
                seen.push_str(&String::from_utf8_lossy(&bytes));
                if seen.contains("ready\n") && !go_file.exists() {
                    tokio::fs::write(&go_file, b"")
                        .await
                        .expect("write go file");
                }
            }
        }
        seen
    };
    let (result, seen) = tokio::join!(running, handshake);
    let outcome = result.expect("run");
    assert_eq!(outcome.reason, EndReason::Exited, "output was not live");
    assert_eq!(seen, "ready\nread-only\n");
}

async fn env_and_workdir(h: &Harness) {
    let mut job = h.spec("echo \"$GREETING\"; pwd");
    job.env
        .insert("GREETING".to_owned(), "hello world; $(id)".to_owned());
    let finished = h.run(job).await;
    assert_eq!(finished.stdout(), "hello world; $(id)\n/work\n");
}

async fn stdin_bytes_reach_the_command_then_end_of_file(h: &Harness) {
    // NUL, a lone 0xff, no final newline, and 300 KiB so the bytes cannot all sit in one pipe
    // buffer: every byte arrives, then end of file (`wc` returns).
    let mut data = b"first\n\0\xffno newline".to_vec();
    data.extend(std::iter::repeat_n(b'z', 300 * 1024));
    let mut job = h.spec("od -An -c | head -2 | tr -s ' \n' ' '; echo; wc -c < /dev/null");
    job.stdin = Some(data.clone());
    let finished = h.run(job).await;
    assert_eq!(finished.outcome().exit_code, 0);
    assert_eq!(
        finished.stdout(),
        " f i r s t \\n \\0 377 n o n e w l i n e z z z z z z z z z z z z z z \n0\n"
    );

    let mut count = h.spec("wc -c; cat >/dev/null; echo eof");
    count.stdin = Some(data.clone());
    let finished = h.run(count).await;
    assert_eq!(finished.outcome().exit_code, 0);
    assert_eq!(finished.stdout(), format!("{}\neof\n", data.len()));
}

async fn without_stdin_the_command_reads_end_of_file(h: &Harness) {
    // `cat` returns at once: stdin is at end of file, not an open pipe that never closes.
    let finished = h.run_command("cat; wc -c; echo done").await;
    assert_eq!(finished.outcome().exit_code, 0);
    assert_eq!(finished.stdout(), "0\ndone\n");
}

async fn the_workdir_is_writable_by_the_sandbox_user_default_and_custom(h: &Harness) {
    // `/work` is the pool's profile (pooled in that mode); `/srv/app` always runs cold.
    for workdir in ["/work", "/srv/app"] {
        let mut job = h.spec("touch f && ls -ldn . && echo wrote");
        job.workdir = workdir.to_owned();
        let finished = if workdir == "/work" {
            h.run(job).await
        } else {
            // Another workdir does not fit the pool's profile: cold in both modes.
            run(&h.sandbox, job).await
        };
        assert_eq!(
            finished.outcome().exit_code,
            0,
            "{workdir}: {}",
            finished.stderr()
        );
        let stdout = finished.stdout();
        assert!(stdout.ends_with("wrote\n"), "{workdir}: {stdout}");
        let fields: Vec<&str> = stdout.split_whitespace().collect();
        assert_eq!(
            fields.get(2..4),
            Some(&["65534", "65534"][..]),
            "{workdir} owner: {stdout}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Limits: timeout, OOM, PIDs
// ---------------------------------------------------------------------------------------------

async fn timeout_kills_with_124_and_removes_the_container(h: &Harness) {
    let mut job = h.spec("echo before; sleep 30");
    job.timeout = Duration::from_secs(2);
    let finished = h.run(job).await;
    assert_eq!(finished.outcome().reason, EndReason::Timeout);
    assert_eq!(finished.outcome().exit_code, 124);
    assert_eq!(finished.stdout(), "before\n");
    let started_at = finished.started_at.expect("the job started");
    let took = finished.returned_at.duration_since(started_at);
    assert!(
        took >= Duration::from_secs(2),
        "returned before the timeout: {took:?}"
    );
    assert!(took < Duration::from_secs(15), "timeout took {took:?}");
}

async fn out_of_memory_is_reported_as_oom(h: &Harness) {
    // busybox tail keeps its whole input in memory when it has no newline; 64 MiB of zeros
    // through a 16 MiB limit without swap must be OOM-killed.
    let mut job = h.spec("head -c 64m /dev/zero | tail");
    job.memory_limit_bytes = 16 << 20;
    let finished = h.run(job).await;
    let outcome = finished.outcome();
    assert_eq!(
        outcome.reason,
        EndReason::Oom,
        "exit code {} without State.OOMKilled: the engine saw no OOM event; if the dockerd \
         log says 'loading cgroup for <pid>: cannot find cgroup mount destination', a cgroup \
         v1 hierarchy exists that is not mounted on the host (containerd then cannot watch \
         memory.oom_control)",
        outcome.exit_code
    );
    assert_eq!(outcome.exit_code, 137);
}

async fn fork_bomb_is_contained_by_the_pids_limit(h: &Harness) {
    let mut job = h.spec("bomb() { bomb | bomb & }; bomb; sleep 30");
    job.pids_limit = 32;
    job.timeout = Duration::from_secs(5);
    let finished = h.run(job).await;
    let outcome = finished.outcome();
    assert!(
        matches!(outcome.reason, EndReason::Timeout | EndReason::Exited),
        "{outcome:?}"
    );
    let took = finished
        .returned_at
        .duration_since(finished.started_at.expect("the job started"));
    assert!(took < Duration::from_secs(30), "fork bomb ran for {took:?}");

    // The host can still fork, and the engine still runs jobs.
    let host = tokio::process::Command::new("true")
        .status()
        .await
        .expect("the host can still start processes");
    assert!(host.success());
    let after = h.run(h.spec("echo alive")).await;
    assert_eq!(after.stdout(), "alive\n");
}

async fn pids_limit_is_enforced_inside(h: &Harness) {
    // 20 sleeping children fit under 32; 40 do not, and the shell says it cannot fork.
    let mut job =
        h.spec("i=0; while [ $i -lt 40 ]; do sleep 5 & i=$((i+1)); done 2>&1; echo spawned");
    job.pids_limit = 32;
    job.timeout = Duration::from_secs(10);
    let finished = h.run(job).await;
    let all = format!("{}{}", finished.stdout(), finished.stderr());
    assert!(
        all.contains("can't fork") || all.contains("Resource temporarily unavailable"),
        "40 processes under pids_limit 32 did not fail: {all:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Isolation
// ---------------------------------------------------------------------------------------------

async fn no_network_only_loopback(h: &Harness) {
    let finished = h
        .run_command(
            "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; \
         wget -q -T 2 -O /dev/null http://1.1.1.1/ 2>/dev/null && echo reached || echo unreachable",
        )
        .await;
    assert_eq!(finished.outcome().exit_code, 0);
    assert_eq!(finished.stdout(), "lo\nunreachable\n");
}

#[tokio::test]
async fn network_true_has_an_interface_beyond_loopback() {
    // Proves the isolation test above can tell the difference.
    let sandbox = sandbox().await;
    let mut job = spec(
        &unique("agent"),
        "tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '",
    );
    job.network = true;
    let finished = run(&sandbox, job).await;
    let interfaces: Vec<String> = finished.stdout().lines().map(str::to_owned).collect();
    assert!(interfaces.iter().any(|name| name == "lo"));
    assert!(interfaces.iter().any(|name| name != "lo"), "{interfaces:?}");
}

async fn runs_as_nobody(h: &Harness) {
    let finished = h.run_command("id -u; id -g").await;
    assert_eq!(finished.stdout(), "65534\n65534\n");
}

async fn root_is_read_only_while_tmp_and_workdir_are_writable(h: &Harness) {
    // The copies keep busybox's name: it picks the applet from argv[0].
    let finished = h.run_command(
        "touch /x 2>/dev/null && echo root-writable || echo root-read-only; \
         touch /bin/x 2>/dev/null && echo bin-writable || echo bin-read-only; \
         touch /tmp/x && echo tmp-writable; \
         touch /work/x && echo work-writable; \
         mkdir /tmp/b /work/b; cp /bin/busybox /tmp/b/ && cp /bin/busybox /work/b/ || echo copy-failed; \
         /tmp/b/busybox true 2>/dev/null && echo tmp-exec || echo tmp-noexec; \
         /work/b/busybox true && echo work-exec || echo work-noexec; \
         head -c 20m /dev/zero > /tmp/big 2>/dev/null && echo tmp-unbounded || echo tmp-bounded",
    )
    .await;
    assert_eq!(
        finished.stdout(),
        "root-read-only\nbin-read-only\ntmp-writable\nwork-writable\n\
         tmp-noexec\nwork-exec\ntmp-bounded\n"
    );
}

async fn no_capabilities_no_new_privs_and_seccomp(h: &Harness) {
    let finished = h
        .run_command(
            "grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' /proc/self/status",
        )
        .await;
    let status: HashMap<String, String> = finished
        .stdout()
        .lines()
        .filter_map(|line| line.split_once(':'))
        .map(|(key, value)| (key.to_owned(), value.trim().to_owned()))
        .collect();
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(
            status.get(cap).map(String::as_str),
            Some("0000000000000000"),
            "{cap}"
        );
    }
    assert_eq!(status.get("NoNewPrivs").map(String::as_str), Some("1"));
    // 2 = seccomp filter mode: the engine's default profile is in force.
    assert_eq!(status.get("Seccomp").map(String::as_str), Some("2"));
}

async fn engine_applied_the_host_config(h: &Harness) {
    // What the engine actually recorded for a running job, not what we think we sent.
    let mode = h.mode;
    let mut job = h.spec("sleep 30");
    job.cpu_limit = 0.5;
    job.pids_limit = 48;
    job.memory_limit_bytes = 96 << 20;
    let job_id = job.job_id.clone();
    let cancel = CancellationToken::new();
    let (inspected_tx, inspected_rx) = oneshot::channel();
    let cancel_after_inspect = cancel.clone();
    let finished = h
        .run_with(
            job,
            cancel.clone(),
            8,
            Duration::ZERO,
            move |container_id| {
                tokio::spawn(async move {
                    let inspected = raw_docker()
                        .await
                        .inspect_container(&container_id, None)
                        .await;
                    let _ = inspected_tx.send(inspected);
                    cancel_after_inspect.cancel();
                });
            },
        )
        .await;
    assert_eq!(finished.outcome().reason, EndReason::Cancelled);
    let inspected = inspected_rx
        .await
        .expect("inspection ran")
        .expect("inspect container");
    let config = inspected.config.expect("config");
    assert_eq!(config.user.as_deref(), Some(NOBODY));
    assert_eq!(config.working_dir.as_deref(), Some("/work"));
    assert_eq!(config.tty, Some(false));
    let labels = config.labels.unwrap_or_default();
    assert_eq!(labels.get(LABEL_AGENT), Some(&h.agent));
    assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));
    let name = inspected.name.unwrap_or_default();
    match mode {
        Mode::Cold => {
            assert_eq!(config.open_stdin, Some(false));
            assert_eq!(labels.get(LABEL_JOB), Some(&job_id));
            assert!(name.starts_with("/quickcmd-job-"), "{name}");
        }
        Mode::Pooled => {
            // Made before the job existed: stdin open for its script, labelled as the pool's.
            assert_eq!(config.open_stdin, Some(true));
            assert_eq!(config.stdin_once, Some(true));
            assert_eq!(labels.get(LABEL_POOL), Some(&h.agent));
            assert!(name.starts_with("/quickcmd-pool-"), "{name}");
        }
    }

    let host = inspected.host_config.expect("host config");
    assert_eq!(host.network_mode.as_deref(), Some("none"));
    assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
    assert!(host.cap_add.unwrap_or_default().is_empty());
    assert_eq!(
        host.security_opt,
        Some(vec!["no-new-privileges:true".to_owned()])
    );
    assert_eq!(host.readonly_rootfs, Some(true));
    assert_eq!(host.privileged, Some(false));
    assert_eq!(host.auto_remove, Some(false));
    assert_eq!(host.init, Some(false));
    assert!(host.devices.unwrap_or_default().is_empty());
    assert_eq!(host.memory, Some(96 << 20));
    assert_eq!(host.memory_swap, Some(96 << 20));
    assert_eq!(host.nano_cpus, Some(500_000_000));
    assert_eq!(host.pids_limit, Some(48));
    let tmpfs = host.tmpfs.unwrap_or_default();
    assert_eq!(
        tmpfs.get("/tmp").map(String::as_str),
        Some("rw,noexec,nosuid,nodev,size=16777216,mode=1777")
    );
    assert_eq!(
        tmpfs.get("/work").map(String::as_str),
        Some("rw,exec,nosuid,nodev,size=16777216,uid=65534,gid=65534,mode=0700")
    );
    assert_eq!(
        host.log_config.and_then(|log| log.typ).as_deref(),
        Some("none")
    );
}

// ---------------------------------------------------------------------------------------------
// Cancel, errors, cleanup
// ---------------------------------------------------------------------------------------------

async fn cancel_kills_fast(h: &Harness) {
    let cancel = CancellationToken::new();
    let canceller = cancel.clone();
    let finished = h
        .run_with(h.spec("sleep 60"), cancel, 8, Duration::ZERO, move |_| {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(300)).await;
                canceller.cancel();
            });
        })
        .await;
    assert_eq!(finished.outcome().reason, EndReason::Cancelled);
    assert_eq!(finished.outcome().exit_code, 137);
    let took = finished
        .returned_at
        .duration_since(finished.started_at.expect("the job started"));
    assert!(took < Duration::from_secs(10), "cancel took {took:?}");
}

async fn cancel_before_start_never_starts(h: &Harness) {
    let cancel = CancellationToken::new();
    cancel.cancel();
    let finished = h
        .run_with(
            h.spec("echo should-not-run"),
            cancel,
            8,
            Duration::ZERO,
            |_| {},
        )
        .await;
    assert_eq!(finished.outcome().reason, EndReason::Cancelled);
    assert_eq!(finished.outcome().exit_code, -1, "no command ran");
    assert_eq!(finished.outcome().start_latency, None);
    assert!(finished.started_at.is_none(), "started was sent");
    assert_eq!(finished.stdout(), "");
}

#[tokio::test]
async fn missing_image_is_image_unavailable_with_the_engine_message() {
    let sandbox = sandbox().await;
    let mut job = spec(&unique("agent"), "true");
    job.image = format!("{}:nope", unique("quickcmd-missing-image"));
    let finished = run(&sandbox, job.clone()).await;
    match finished.result {
        Err(SandboxError::ImageUnavailable { image, message }) => {
            eprintln!("engine said: {message}");
            assert_eq!(image, job.image);
            assert!(!message.is_empty());
            assert!(
                !message.contains("DockerResponseServerError")
                    && !message.contains("DockerStreamError"),
                "not the engine's text: {message}"
            );
        }
        other => panic!("expected ImageUnavailable, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn start_failure_is_an_engine_error_and_the_container_is_removed() {
    let sandbox = sandbox().await;
    let mut job = spec(&unique("agent"), "true");
    job.user = "no-such-user".to_owned();
    // run_with asserts the container is gone afterwards.
    let finished = run(&sandbox, job).await;
    match finished.result {
        Err(SandboxError::Engine {
            action, message, ..
        }) => {
            assert_eq!(action, "start container");
            assert!(message.contains("no-such-user"), "{message}");
        }
        other => panic!("expected an engine error, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn invalid_spec_is_refused_before_the_engine_sees_it() {
    let sandbox = sandbox().await;
    let mut job = spec(&unique("agent"), "true");
    job.pids_limit = 0;
    let finished = run(&sandbox, job).await;
    assert!(
        matches!(finished.result, Err(SandboxError::InvalidSpec { .. })),
        "{:?}",
        finished.result.map(|_| ())
    );
}

async fn dropped_run_future_still_removes_the_container(h: &Harness) {
    h.wait_idle(1).await;
    let job = h.spec("sleep 60");
    let (output_tx, _output_rx) = mpsc::channel(8);
    let (started_tx, started_rx) = oneshot::channel();
    let running = tokio::spawn({
        let sandbox = h.sandbox.clone();
        async move {
            sandbox
                .run(job, output_tx, CancellationToken::new(), started_tx)
                .await
        }
    });
    let container_id = started_rx.await.expect("the job started");
    assert!(container_exists(&container_id).await);
    running.abort();
    let deadline = Instant::now() + Duration::from_secs(15);
    while container_exists(&container_id).await {
        assert!(
            Instant::now() < deadline,
            "the container outlived its aborted run"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `run_keeping` with a reader that drains the output; pooled, asserts the pool served it.
async fn run_keeping(
    h: &Harness,
    spec: SandboxSpec,
) -> (
    Result<SandboxOutcome, SandboxError>,
    Option<quickcmd_sandbox::Removal>,
) {
    h.wait_idle(1).await;
    let before = h.claimed();
    let (output_tx, mut output_rx) = mpsc::channel(64);
    let reader = tokio::spawn(async move { while output_rx.recv().await.is_some() {} });
    let (started_tx, _started_rx) = oneshot::channel();
    let kept = h
        .sandbox
        .run_keeping(spec, output_tx, CancellationToken::new(), started_tx)
        .await;
    reader.await.expect("reader task");
    if h.mode == Mode::Pooled {
        assert_eq!(h.claimed(), before + 1, "the job did not use the pool");
    }
    kept
}

/// The result can be sent before the removal: only a container the engine saw stop by
/// itself comes back, stopped, and it is removed when the removal is awaited or dropped.
/// A timed-out one (which might still be running) is removed before the result.
async fn run_keeping_hands_back_only_a_stopped_container(h: &Harness) {
    let (result, removal) = run_keeping(h, h.spec("echo hi; exit 5")).await;
    let outcome = result.expect("the job ran");
    assert_eq!((outcome.exit_code, outcome.reason), (5, EndReason::Exited));
    let removal = removal.expect("an exited job's container comes back for removal");
    assert_eq!(removal.container_id(), outcome.container_id);
    let state = raw_docker()
        .await
        .inspect_container(&outcome.container_id, None)
        .await
        .expect("the container exists until removed")
        .state
        .expect("a state");
    assert_eq!(state.running, Some(false), "handed back while running");
    removal.remove().await.expect("removed");
    assert!(!container_exists(&outcome.container_id).await);

    // Dropped instead of awaited: removed all the same.
    let (result, removal) = run_keeping(h, h.spec("true")).await;
    let container_id = result.expect("the job ran").container_id;
    drop(removal.expect("a removal"));
    let deadline = Instant::now() + Duration::from_secs(15);
    while container_exists(&container_id).await {
        assert!(
            Instant::now() < deadline,
            "a dropped removal left the container"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Timed out: the kill may not have stopped it, so it is gone before the result.
    let mut spec = h.spec("sleep 60");
    spec.timeout = Duration::from_secs(1);
    let (result, removal) = run_keeping(h, spec).await;
    let outcome = result.expect("the job ran");
    assert_eq!(outcome.reason, EndReason::Timeout);
    assert!(removal.is_none(), "a timed-out container was handed back");
    assert!(!container_exists(&outcome.container_id).await);
}

#[tokio::test]
async fn remove_agent_containers_removes_only_that_agents_leftovers() {
    let sandbox = sandbox().await;
    let docker = raw_docker().await;
    let agent = unique("agent");
    let other_agent = unique("agent");

    let leftover = |agent_id: &str, command: &str| {
        let labels = HashMap::from([
            (LABEL_AGENT.to_owned(), agent_id.to_owned()),
            (LABEL_JOB.to_owned(), unique("job")),
            (LABEL_MANAGED.to_owned(), "true".to_owned()),
        ]);
        ContainerCreateBody {
            image: Some(IMAGE.to_owned()),
            cmd: Some(vec!["sh".into(), "-c".into(), command.to_owned()]),
            labels: Some(labels),
            host_config: Some(bollard::models::HostConfig {
                network_mode: Some("none".to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        }
    };
    let mut mine = Vec::new();
    for command in ["true", "sleep 60"] {
        let name = unique("quickcmd-leftover");
        let created = docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                leftover(&agent, command),
            )
            .await
            .expect("create leftover");
        mine.push(created.id);
    }
    docker
        .start_container(&mine[1], None)
        .await
        .expect("start the running leftover");
    let other = docker
        .create_container(
            Some(
                CreateContainerOptionsBuilder::new()
                    .name(&unique("quickcmd-other"))
                    .build(),
            ),
            leftover(&other_agent, "true"),
        )
        .await
        .expect("create other agent's container")
        .id;

    let removed = sandbox
        .remove_agent_containers(&agent)
        .await
        .expect("remove leftovers");
    assert_eq!(removed, 2);
    assert!(containers_labelled(&format!("{LABEL_AGENT}={agent}"))
        .await
        .is_empty());
    let others = containers_labelled(&format!("{LABEL_AGENT}={other_agent}")).await;
    assert_eq!(
        others,
        vec![other.clone()],
        "another agent's container was touched"
    );
    assert_eq!(
        sandbox
            .remove_agent_containers(&agent)
            .await
            .expect("second cleanup"),
        0
    );

    docker
        .remove_container(
            &other,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await
        .expect("clean up the other agent's container");
}

#[tokio::test]
async fn connect_accepts_explicit_hosts_and_rejects_unknown_schemes() {
    let explicit = DockerSandbox::connect(Some("unix:///var/run/docker.sock")).await;
    let explicit = match explicit {
        Ok(sandbox) => sandbox,
        Err(err) => no_engine("connect unix:///var/run/docker.sock", &err),
    };
    explicit.ping().await.expect("ping");
    let engine_api = raw_docker()
        .await
        .version()
        .await
        .expect("engine version")
        .api_version
        .expect("engine api version");
    // bollard speaks a newer API than most engines; the handshake must come down to the
    // engine's (1.41 on Engine 20.10) or every call with new fields is refused.
    assert_eq!(explicit.api_version(), engine_api, "version not negotiated");

    assert!(matches!(
        DockerSandbox::connect(Some("ftp://example.invalid")).await,
        Err(SandboxError::UnsupportedDockerHost { .. })
    ));
    assert!(matches!(
        DockerSandbox::connect(Some("unix:///nonexistent/docker.sock")).await,
        Err(SandboxError::Connect { .. })
    ));
}

// ---------------------------------------------------------------------------------------------
// The warm pool itself
// ---------------------------------------------------------------------------------------------

/// The ids of the pool containers of `agent` that exist now.
async fn pool_containers(agent: &str) -> Vec<String> {
    containers_labelled(&format!("{LABEL_POOL}={agent}")).await
}

#[tokio::test]
async fn pooled_job_cannot_fake_its_exit_code() {
    let h = Harness::new(Mode::Pooled).await;
    // What a wrapper that parsed the job's output for a status would be fooled by: a status
    // line on both streams, a NUL, a half line, then the real exit.
    let command = "echo 'exit code: 0'; echo 'EXIT_STATUS=0' >&2; echo '__quickcmd_exit__ 0'; \
                   printf '\\0exit 0\\n0'; exit 3";
    let finished = h.run_command(command).await;
    assert_eq!(finished.outcome().exit_code, 3);
    assert_eq!(finished.outcome().reason, EndReason::Exited);

    // Its last command killed by a signal: the engine's 137, whatever the job wrote first.
    // (PID 1 cannot SIGKILL itself from inside its namespace, cold or pooled.)
    let finished = h
        .run_command("echo 0; sleep 30 & kill -9 $!; wait $!")
        .await;
    assert_eq!(finished.outcome().exit_code, 137);

    // The job is PID 1 itself, as in a cold container: there is no wrapper left to fool.
    let finished = h
        .run_command("echo $$; cat /proc/1/cmdline | tr '\\0' ' '")
        .await;
    assert_eq!(
        finished.stdout(),
        "1\nsh -c echo $$; cat /proc/1/cmdline | tr '\\0' ' ' "
    );
    h.finish().await;
}

#[tokio::test]
async fn a_pool_container_serves_one_job_and_is_never_reused() {
    let h = Harness::new(Mode::Pooled).await;
    let mut seen = Vec::new();
    for round in 0..3 {
        let finished = h
            .run_command("hostname; ls -a /work | wc -l; touch /work/mark")
            .await;
        let outcome = finished.outcome();
        assert!(
            !seen.contains(&outcome.container_id),
            "round {round}: container {} served twice",
            outcome.container_id
        );
        // A fresh workdir every time: the previous job's mark is not there.
        assert!(
            finished.stdout().ends_with("2\n"),
            "{:?}",
            finished.stdout()
        );
        assert!(!container_exists(&outcome.container_id).await);
        seen.push(outcome.container_id.clone());
    }
    let stats = h.sandbox.warm_pool_stats().expect("a pool");
    assert_eq!(stats.claimed_total, 3);
    assert_eq!(stats.misses_total, 0);
    h.finish().await;
}

#[tokio::test]
async fn an_idle_pool_container_costs_no_cpu() {
    let h = Harness::new(Mode::Pooled).await;
    h.wait_idle(1).await;
    let ids = pool_containers(&h.agent).await;
    assert_eq!(ids.len(), 1, "{ids:?}");
    let read = |file: String| {
        let text = std::fs::read_to_string(&file).unwrap_or_else(|err| panic!("{file}: {err}"));
        text.trim()
            .parse::<u64>()
            .unwrap_or_else(|err| panic!("{file}: {text:?}: {err}"))
    };
    // cgroup v1 with the cgroupfs driver, as on the machines this runs on.
    let cpu_file = format!("/sys/fs/cgroup/cpuacct/docker/{}/cpuacct.usage", ids[0]);
    let memory_file = format!(
        "/sys/fs/cgroup/memory/docker/{}/memory.usage_in_bytes",
        ids[0]
    );
    let first = read(cpu_file.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = read(cpu_file);
    let memory = read(memory_file);
    eprintln!(
        "idle pool container: {} ns CPU over 2 s (total {second} ns since start), {} KiB memory",
        second - first,
        memory / 1024
    );
    // Blocked in read(2): not a single scheduler tick's worth of CPU in two seconds.
    assert!(
        second - first < 5_000_000,
        "an idle pool container used {} ns of CPU",
        second - first
    );
    assert!(
        memory < 8 << 20,
        "an idle pool container uses {memory} bytes"
    );
    h.finish().await;
}

#[tokio::test]
async fn pooled_and_cold_jobs_see_the_same_environment() {
    let cold = Harness::new(Mode::Cold).await;
    let pooled = Harness::new(Mode::Pooled).await;
    let command = "env | grep -v '^HOSTNAME=' | sort; pwd; umask; ulimit -n; id";
    let mut job = cold.spec(command);
    job.env
        .insert("QUOTED".to_owned(), "it's $HOME `x`\nline2".to_owned());
    let from_cold = cold.run(job.clone()).await;
    job.job_id = unique("job");
    job.agent_id = pooled.agent.clone();
    let from_pool = pooled.run(job).await;
    assert_eq!(from_cold.outcome().exit_code, 0);
    assert_eq!(from_pool.outcome().exit_code, 0);
    assert_eq!(from_pool.stdout(), from_cold.stdout());
    // `sort` put the value's second line elsewhere; both lines are there, verbatim.
    assert!(from_pool.stdout().contains("QUOTED=it's $HOME `x`\n"));
    assert!(from_pool.stdout().contains("\nline2\n"));
    pooled.finish().await;
}

#[tokio::test]
async fn jobs_that_do_not_fit_the_profile_run_cold_and_an_empty_pool_is_a_miss() {
    let h = Harness::new(Mode::Pooled).await;
    h.wait_idle(1).await;
    let mut network = h.spec("true");
    network.network = true;
    let mut other_user = h.spec("id -u");
    other_user.user = "1234:1234".to_owned();
    let mut odd_env = h.spec("true");
    odd_env
        .env
        .insert("NOT-A-SHELL-NAME".to_owned(), "x".to_owned());
    for job in [network, other_user, odd_env] {
        let finished = run(&h.sandbox, job).await;
        assert_eq!(finished.outcome().exit_code, 0);
    }
    let stats = h.sandbox.warm_pool_stats().expect("a pool");
    assert_eq!(stats.claimed_total, 0);
    assert_eq!(stats.cold_fallbacks_total, 3);

    // Two at once with one ready container: one claims it, the other misses and runs cold.
    let both = futures_util::future::join(
        run(&h.sandbox, h.spec("echo a")),
        run(&h.sandbox, h.spec("echo b")),
    )
    .await;
    assert_eq!(both.0.stdout(), "a\n");
    assert_eq!(both.1.stdout(), "b\n");
    let stats = h.sandbox.warm_pool_stats().expect("a pool");
    assert_eq!(stats.claimed_total, 1);
    assert_eq!(stats.misses_total, 1);
    // And it refills.
    h.wait_idle(1).await;
    h.finish().await;
}

#[tokio::test]
async fn start_up_sweep_removes_an_old_pool_but_spares_its_own() {
    let agent = unique("agent");
    let old = sandbox()
        .await
        .with_warm_pool(1, profile(&agent))
        .expect("old pool");
    let old = Harness {
        sandbox: old,
        agent: agent.clone(),
        mode: Mode::Pooled,
    };
    old.wait_idle(1).await;
    let old_ids = pool_containers(&agent).await;
    assert_eq!(old_ids.len(), 1);
    // As if the old process had crashed: its pool container is still there when a new
    // process with the same agent id starts and sweeps.

    let new = sandbox()
        .await
        .with_warm_pool(1, profile(&agent))
        .expect("new pool");
    let new = Harness {
        sandbox: new,
        agent: agent.clone(),
        mode: Mode::Pooled,
    };
    new.wait_idle(1).await;
    let removed = new
        .sandbox
        .remove_agent_containers(&agent)
        .await
        .expect("sweep");
    assert_eq!(removed, 1, "the old pool's container is a leftover");
    assert!(!container_exists(&old_ids[0]).await);
    let left = pool_containers(&agent).await;
    assert_eq!(left.len(), 1, "the new pool's own container is spared");
    let finished = new.run_command("echo still-works").await;
    assert_eq!(finished.stdout(), "still-works\n");

    new.sandbox.shutdown_warm_pool().await;
    old.sandbox.shutdown_warm_pool().await;
    assert!(pool_containers(&agent).await.is_empty());
}

/// The cold path remembers an image it saw for a while, but a deleted image is noticed at
/// the next create and looked up again after that; a re-made one works at once.
#[tokio::test]
async fn a_cached_image_check_notices_a_deleted_image() {
    let sandbox = sandbox().await;
    let agent = unique("agent");
    let tag = format!("quickcmd-sandbox:{}", unique("cache"));
    let docker = raw_docker().await;
    let tag_it = |tag: String| {
        let docker = docker.clone();
        async move {
            let (repo, name) = tag.split_once(':').expect("repo:tag");
            let options = bollard::query_parameters::TagImageOptionsBuilder::new()
                .repo(repo)
                .tag(name)
                .build();
            docker.tag_image(IMAGE, Some(options)).await.expect("tag");
        }
    };
    let untag = |tag: &str| {
        let (docker, tag) = (docker.clone(), tag.to_owned());
        async move {
            let options = None::<bollard::query_parameters::RemoveImageOptions>;
            docker
                .remove_image(&tag, options, None)
                .await
                .expect("untag");
        }
    };
    tag_it(tag.clone()).await;
    let with_image = |command: &str| SandboxSpec {
        image: tag.clone(),
        ..spec(&agent, command)
    };
    let first = run(&sandbox, with_image("true")).await;
    assert_eq!(first.outcome().exit_code, 0);

    untag(&tag).await;
    let second = run(&sandbox, with_image("true")).await;
    let err = second.result.expect_err("a deleted image cannot run");
    assert!(err.to_string().contains(&tag), "{err}");
    let third = run(&sandbox, with_image("true")).await;
    assert!(
        matches!(third.result, Err(SandboxError::ImageUnavailable { .. })),
        "{:?}",
        third.result
    );

    tag_it(tag.clone()).await;
    let fourth = run(&sandbox, with_image("true")).await;
    assert_eq!(fourth.outcome().exit_code, 0);
    untag(&tag).await;
}
