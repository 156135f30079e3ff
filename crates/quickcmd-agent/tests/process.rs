//! The agent as an operating-system process: started as root it becomes `run_as_user`
//! (keeping the Docker socket's group) and still runs jobs; a `run_as_user` that does not
//! exist stops it at start with a clear error; its logs are one JSON object per line with
//! `log_format: json`, and plain text without colour codes when stderr is not a terminal.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::{Gid, Group, Uid, User};
use quickcmd_protocol::JobStatus;
use quickcmd_testkit::{unique, Config, TestAgent};
use serde_json::{json, Value};

/// The system user the privilege-drop test creates (and leaves in place).
const RUN_AS_USER: &str = "qc-privdrop-test";

/// Fails (never skips) unless the tests run as root, which the privilege drop needs.
#[track_caller]
fn require_root(what: &str) {
    let out = Command::new("id").arg("-u").output().expect("run `id -u`");
    let uid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(
        uid, "0",
        "{what} needs root: the agent only drops privileges when started as root, and the \
         test creates a system user; run the tests as root (as CI does). `id -u` says {uid:?}"
    );
}

/// Runs a user-management command, retrying while another process (a parallel CI run)
/// holds the passwd/group lock; `done` says whether the goal is reached anyway.
fn manage_users(program: &str, args: &[&str], done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        if out.status.success() || done() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{program} {args:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn lookup_user(name: &str) -> Option<User> {
    User::from_name(name).expect("look up a user")
}

/// The gid of the Docker socket the agent talks to (`DOCKER_HOST` when it is a unix
/// socket, else /var/run/docker.sock).
fn docker_socket() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// Creates the system user if needed and makes it a member of `group`; idempotent.
fn ensure_run_as_user(group: &str) -> User {
    if lookup_user(RUN_AS_USER).is_none() {
        manage_users(
            "useradd",
            &[
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                RUN_AS_USER,
            ],
            || lookup_user(RUN_AS_USER).is_some(),
        );
    }
    let in_group = || {
        Group::from_name(group)
            .expect("look up a group")
            .is_some_and(|g| g.mem.iter().any(|m| m == RUN_AS_USER))
    };
    if !in_group() {
        manage_users("usermod", &["-aG", group, RUN_AS_USER], in_group);
    }
    lookup_user(RUN_AS_USER).expect("the user exists now")
}

/// The `Key:` line of a /proc status file, split on whitespace.
fn status_field(status: &str, key: &str) -> Vec<String> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key}: line in\n{status}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Every file directly in `dir` with its owner.
fn owners(dir: &Path) -> Vec<(String, u32, u32)> {
    let mut files: Vec<(String, u32, u32)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("list {}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.expect("directory entry");
            let meta = entry.metadata().expect("stat a data file");
            (
                entry.file_name().to_string_lossy().into_owned(),
                meta.uid(),
                meta.gid(),
            )
        })
        .collect();
    files.sort();
    files
}

#[track_caller]
fn assert_all_owned_by(dir: &Path, uid: Uid, gid: Gid, when: &str) {
    let files = owners(dir);
    for name in ["agent.db", "agent-audit.db"] {
        assert!(
            files.iter().any(|(n, _, _)| n == name),
            "{when}: {name} is missing from the data dir: {files:?}"
        );
    }
    let wrong: Vec<_> = files
        .iter()
        .filter(|(_, u, g)| *u != uid.as_raw() || *g != gid.as_raw())
        .collect();
    assert!(
        wrong.is_empty(),
        "{when}: data files not owned by {RUN_AS_USER} ({uid}:{gid}): {wrong:?} (all: {files:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_as_root_drops_to_run_as_user_keeping_docker_group() {
    require_root("started_as_root_drops_to_run_as_user_keeping_docker_group");
    quickcmd_testkit::ensure_docker();
    let socket = docker_socket();
    let socket_gid = Gid::from_raw(
        std::fs::metadata(&socket)
            .unwrap_or_else(|e| panic!("stat the Docker socket {}: {e}", socket.display()))
            .gid(),
    );
    let socket_group = Group::from_gid(socket_gid)
        .expect("look up the socket's group")
        .unwrap_or_else(|| panic!("the Docker socket's gid {socket_gid} has no group name"))
        .name;
    let user = ensure_run_as_user(&socket_group);
    let primary = Group::from_gid(user.gid)
        .expect("look up the primary group")
        .unwrap_or_else(|| panic!("{RUN_AS_USER}'s primary gid {} has no name", user.gid))
        .name;
    assert!(!user.uid.is_root(), "{RUN_AS_USER} must not be uid 0");

    let config = Config::default()
        .set("run_as_user", json!(RUN_AS_USER))
        .set("run_as_group", json!(primary));
    let mut agent = TestAgent::prepare("privdrop", config);
    // The data dir does not exist yet: the agent, still root, creates it and hands it to
    // the user it becomes. The temp dir above it (root's, 0700) may be passed through, as
    // /var/lib would be.
    let data = agent.data_dir();
    assert!(
        !data.exists(),
        "the data dir must not exist before the agent starts"
    );
    std::fs::set_permissions(agent.dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod the temp dir");
    agent.spawn();
    // The databases (and their -wal and -shm files) were opened as root, then handed over.
    assert_all_owned_by(&data, user.uid, user.gid, "right after start");
    let data_meta = std::fs::metadata(&data).expect("stat the data dir");
    assert_eq!(
        (data_meta.uid(), data_meta.gid()),
        (user.uid.as_raw(), user.gid.as_raw()),
        "the data dir the agent created as root was not handed to {RUN_AS_USER}"
    );

    // "listening on" is printed after the drop, so the process has dropped by now; every
    // thread (the runtime's workers were started while it was root) must have.
    let pid = agent.pid();
    let tasks: Vec<PathBuf> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("list the agent's threads")
        .map(|e| e.expect("task entry").path())
        .collect();
    assert!(!tasks.is_empty());
    let uid = user.uid.to_string();
    let gid = user.gid.to_string();
    for status_path in std::iter::once(PathBuf::from(format!("/proc/{pid}/status")))
        .chain(tasks.iter().map(|t| t.join("status")))
    {
        let status = std::fs::read_to_string(&status_path)
            .unwrap_or_else(|e| panic!("read {}: {e}", status_path.display()));
        assert_eq!(
            status_field(&status, "Uid"),
            vec![uid.clone(); 4],
            "real, effective, saved and fs uid of {}:\n{status}",
            status_path.display()
        );
        assert_eq!(
            status_field(&status, "Gid"),
            vec![gid.clone(); 4],
            "real, effective, saved and fs gid of {}:\n{status}",
            status_path.display()
        );
        let groups = status_field(&status, "Groups");
        assert!(
            groups.contains(&socket_gid.to_string()),
            "supplementary groups {groups:?} lack the Docker socket's group {socket_group} \
             ({socket_gid}) in {}",
            status_path.display()
        );
        assert!(
            socket_gid.as_raw() == 0 || !groups.contains(&"0".to_string()),
            "root's group is still a supplementary group: {groups:?}"
        );
        for caps in ["CapPrm", "CapEff", "CapAmb"] {
            assert_eq!(
                status_field(&status, caps),
                vec!["0000000000000000".to_string()],
                "{caps} of {} is not empty:\n{status}",
                status_path.display()
            );
        }
    }

    // The dropped process still reaches the Docker socket and writes its databases.
    let job_id = unique("privdrop");
    agent.submit("ctl-a", &job_id, "id -u; echo ok").await;
    let view = agent.wait_final("ctl-a", &job_id).await;
    let result = view.result.expect("a final job has a result");
    assert_eq!(
        (result.status, result.exit_code, result.reason.as_deref()),
        (JobStatus::Completed, 0, None),
        "{result:#?}\nagent log:\n{}",
        agent.log()
    );
    assert_eq!(result.stdout, "65534\nok\n", "{result:#?}");
    // Before any `audit` CLI run as root: SQLite run as root re-owns -wal/-shm files to the
    // database's owner when it opens them, which would hide a file the agent left to root.
    assert_all_owned_by(&data, user.uid, user.gid, "after the job");
    let rows = agent.audit_for(&job_id);
    let last = rows.last().expect("audit rows for the job");
    assert_eq!(
        (&last["kind"], &last["status"], &last["exit_code"]),
        (&json!("result"), &json!("completed"), &json!(0)),
        "{rows:#?}"
    );

    // A graceful stop still writes (the shutdown audit row) and leaves nothing to root.
    agent.signal(Signal::SIGTERM);
    let exit = agent.wait_exit().await;
    assert!(
        exit.success(),
        "the dropped agent did not stop cleanly ({exit}); its log:\n{}",
        agent.log()
    );
    assert_all_owned_by(&data, user.uid, user.gid, "after a graceful stop");
    let (code, report) = agent.audit_verify();
    assert_eq!(code, 0, "{report}");
    let last = agent.audit_rows().pop().expect("audit rows");
    assert_eq!(last["kind"], json!("shutdown"), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_as_user_that_does_not_exist_is_a_clear_error() {
    require_root("run_as_user_that_does_not_exist_is_a_clear_error");
    assert!(
        lookup_user("no-such-user-qc").is_none(),
        "a user named no-such-user-qc exists on this machine"
    );
    let config = Config::default().set("run_as_user", json!("no-such-user-qc"));
    let mut agent = TestAgent::prepare("nouser", config);
    let started = Instant::now();
    let status = agent.spawn_expecting_exit(Duration::from_secs(60));
    let log = agent.log();
    assert!(
        !status.success(),
        "the agent exited successfully although run_as_user does not exist; its log:\n{log}"
    );
    assert!(
        log.contains("run_as_user") && log.contains("no-such-user-qc"),
        "stderr does not name run_as_user and no-such-user-qc:\n{log}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the agent took {:?} to refuse; its log:\n{log}",
        started.elapsed()
    );
}

/// Runs `echo hello` as ctl-a, waits for its `job finished` log line, then stops the agent
/// gracefully so that its whole log is written; returns the job id and the log.
async fn run_one_job_and_stop(agent: &mut TestAgent) -> (String, String) {
    let job_id = unique("logs");
    agent.submit("ctl-a", &job_id, "echo hello").await;
    let view = agent.wait_final("ctl-a", &job_id).await;
    assert_eq!(view.status, JobStatus::Completed, "{view:#?}");
    agent.wait_log("job finished", 1).await;
    agent.signal(Signal::SIGTERM);
    let exit = agent.wait_exit().await;
    assert!(exit.success(), "{exit}; log:\n{}", agent.log());
    (job_id, agent.log())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_line_per_job_outcome() {
    let mut agent = TestAgent::start(
        "jsonlog",
        Config::default().set("log_format", json!("json")),
    );
    let (job_id, log) = run_one_job_and_stop(&mut agent).await;
    assert!(!log.trim().is_empty(), "the agent logged nothing");
    let lines: Vec<Value> = log
        .lines()
        .map(|line| {
            let value: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line:?}\nlog:\n{log}"));
            assert!(value.is_object(), "log line is not an object: {line}");
            value
        })
        .collect();
    let finished: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["message"] == json!("job finished"))
        .collect();
    assert_eq!(finished.len(), 1, "`job finished` lines:\n{log}");
    let line = finished[0];
    let fields = &line["fields"];
    assert_eq!(line["level"], json!("INFO"), "{line}");
    assert_eq!(fields["job_id"], json!(job_id), "{line}");
    assert_eq!(fields["controller"], json!("ctl-a"), "{line}");
    assert_eq!(fields["status"], json!("completed"), "{line}");
    assert_eq!(fields["exit_code"], json!(0), "{line}");
    assert!(fields["duration_ms"].is_u64(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_have_no_ansi_escapes_when_not_a_terminal() {
    let mut agent = TestAgent::prepare("textlog", Config::default());
    agent.stderr_through_pipe = true;
    agent.spawn();
    let stderr = std::fs::read_link(format!("/proc/{}/fd/2", agent.pid())).expect("readlink fd 2");
    assert!(
        stderr.to_string_lossy().starts_with("pipe:"),
        "the agent's stderr is {}, not a pipe",
        stderr.display()
    );
    let (job_id, log) = run_one_job_and_stop(&mut agent).await;
    assert!(
        !log.contains("\x1b["),
        "the text log holds ANSI escapes although stderr is a pipe:\n{log:?}"
    );
    let finished: Vec<&str> = log.lines().filter(|l| l.contains("job finished")).collect();
    assert_eq!(finished.len(), 1, "`job finished` lines:\n{log}");
    assert!(
        finished[0].contains(&format!("job_id={job_id}")),
        "the `job finished` line does not name job {job_id}: {}",
        finished[0]
    );
}
