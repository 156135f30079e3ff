//! Runs as objects, targeting and the output contract, through the real `quickcmd` binary
//! against real agents on loopback (real TLS, real Docker): run ids, `history --run`,
//! `wait`, `rerun --failed`, `cancel --run`, history refresh of `submit`ted jobs, the
//! `queued` notice, globs / ranges / exclusions / label selectors, `--list-hosts`,
//! `inventory`, "did you mean", JSON events with a final summary, the same shape for a
//! group of one, and the truncation marker.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use quickcmd_testkit::controller::gen_cert;
use quickcmd_testkit::*;
use serde_json::{json, Value};

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// One inventory entry: name, URL, certificate, groups, labels.
struct Host<'a> {
    name: &'a str,
    url: String,
    cert: PathBuf,
    groups: &'a [&'a str],
    labels: &'a [(&'a str, &'a str)],
}

impl<'a> Host<'a> {
    fn agent(name: &'a str, agent: &TestAgent) -> Host<'a> {
        Host {
            name,
            url: agent.base.clone(),
            cert: agent.cert_path(),
            groups: &[],
            labels: &[],
        }
    }

    /// An entry whose agent is down.
    fn down(name: &'a str, cert: &Path) -> Host<'a> {
        Host {
            name,
            url: format!("https://127.0.0.1:{}", closed_port()),
            cert: cert.to_path_buf(),
            groups: &[],
            labels: &[],
        }
    }
}

/// A controller config (with labels, which the kit's `Controller` does not write) and a
/// command builder over it.
struct World {
    dir: PathBuf,
    config: PathBuf,
}

impl World {
    fn new(root: &Path, secret: &str, hosts: &[Host<'_>]) -> World {
        let dir = root.join("controller");
        std::fs::create_dir_all(&dir).expect("controller dir");
        let secret_file = write_secret(&dir, "default.secret", secret);
        let mut yaml = format!(
            "controller_id: {CONTROLLER}\nhmac_secret_file: {}\nagents:\n",
            secret_file.display()
        );
        for host in hosts {
            yaml.push_str(&format!(
                "  - name: {}\n    url: {}\n    ca_cert: {}\n    groups: {:?}\n    labels: {{{}}}\n",
                host.name,
                host.url,
                host.cert.display(),
                host.groups,
                host.labels
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let config = dir.join("controller.yaml");
        std::fs::write(&config, yaml).expect("write config");
        World { dir, config }
    }

    fn command(&self) -> Command {
        let mut command = Command::new(quickcmd_bin());
        command
            .arg("--config")
            .arg(&self.config)
            .arg("--audit-db")
            .arg(self.dir.join("history.db"))
            .env_remove("QUICKCMD_HMAC_SECRET")
            .env_remove("QUICKCMD_CONTROLLER_ID")
            .env_remove("QUICKCMD_CONFIG")
            .env_remove("RUST_LOG")
            .env("NO_COLOR", "1")
            .env("XDG_CONFIG_HOME", self.dir.join("xdg-config"))
            .env("XDG_DATA_HOME", self.dir.join("xdg-data"))
            .stdin(Stdio::null());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command();
        command.args(args);
        run_bounded(command, Duration::from_secs(180))
    }
}

fn code(output: &Output) -> Option<i32> {
    output.status.code()
}

/// The events of a JSON run, each line parsed on its own; the last must be the summary.
fn parse_events(output: &Output) -> (Vec<Value>, Value) {
    let mut lines = json_lines(output);
    for line in &lines {
        assert!(line.get("event").is_some(), "no event in {line}");
    }
    let summary = lines.pop().expect("a summary line");
    assert_eq!(summary["event"], "summary", "{}", show(output));
    (lines, summary)
}

fn hosts_of(events: &[Value]) -> Vec<String> {
    let mut hosts: Vec<String> = events
        .iter()
        .filter(|e| e["event"] == "host")
        .map(|e| e["agent"].as_str().unwrap_or_default().to_string())
        .collect();
    hosts.sort();
    hosts
}

#[test]
fn run_ids_history_wait_and_rerun_failed() {
    let root = tempdir();
    let secret = gen_key();
    let one = AgentSpec::new("runs-web-1", &secret).start(root.path());
    let two = AgentSpec::new("runs-web-2", &secret).start(root.path());
    let world = World::new(
        root.path(),
        &secret,
        &[
            Host::agent("web-1", &one),
            Host::agent("web-2", &two),
            Host::down("web-3", &one.cert_path()),
        ],
    );
    let output = world.run(&[
        "--retries",
        "0",
        "run",
        "-a",
        "web-[1-3]",
        "-o",
        "json",
        "--",
        "echo hi; echo e >&2",
    ]);
    assert_eq!(code(&output), Some(255), "{}", show(&output));
    let (events, summary) = parse_events(&output);
    let run_id = summary["run_id"].as_str().expect("run id").to_string();
    assert!(uuid_v7(&run_id), "{run_id}");
    assert_eq!(summary["hosts"], 3);
    assert_eq!(summary["succeeded"], 2);
    assert_eq!(summary["unreachable"], 1);
    assert_eq!(summary["exit_code"], 255);
    for event in &events {
        assert_eq!(event["run_id"], run_id.as_str(), "{event}");
    }
    let outputs: Vec<&Value> = events.iter().filter(|e| e["event"] == "output").collect();
    assert!(
        outputs
            .iter()
            .any(|e| e["stream"] == "stdout" && e["data"] == "hi\n" && e["host"] == "web-1"),
        "{}",
        show(&output)
    );
    assert!(outputs
        .iter()
        .any(|e| e["stream"] == "stderr" && e["data"] == "e\n"));
    assert!(events.iter().any(|e| e["event"] == "submitted"));
    assert_eq!(hosts_of(&events), ["web-1", "web-2", "web-3"]);
    for host in events
        .iter()
        .filter(|e| e["event"] == "host" && e["status"] == "completed")
    {
        assert_eq!(host["stdout"], "hi\n");
        assert_eq!(host["stdout_bytes"], 3);
        assert_eq!(host["stdout_sha256"], sha256_hex(b"hi\n"));
        assert_eq!(host["stdout_truncated"], false);
    }

    // The run is in the history, and `last` names it.
    for run in [run_id.as_str(), "last"] {
        let rows = world.run(&["history", "--run", run, "-o", "json"]);
        assert_eq!(code(&rows), Some(0), "{}", show(&rows));
        let rows = json_lines(&rows);
        assert_eq!(rows.len(), 3, "{rows:?}");
        assert!(rows.iter().all(|r| r["run_id"] == run_id.as_str()));
    }
    let table = world.run(&["history"]);
    assert!(text(&table.stdout).contains("RUN"), "{}", show(&table));

    // `wait RUN` ends as the run did; `wait JOB` as the job did.
    let wait = world.run(&["wait", &run_id]);
    assert_eq!(code(&wait), Some(255), "{}", show(&wait));
    assert!(
        text(&wait.stdout).contains("3 host(s): 2 succeeded"),
        "{}",
        show(&wait)
    );
    let job = events
        .iter()
        .find(|e| e["event"] == "host" && e["agent"] == "web-1")
        .and_then(|e| e["job_id"].as_str())
        .expect("web-1 job")
        .to_string();
    let wait = world.run(&["wait", &job]);
    assert_eq!(code(&wait), Some(0), "{}", show(&wait));
    let unknown = world.run(&["wait", "no-such-thing"]);
    assert_eq!(code(&unknown), Some(2), "{}", show(&unknown));

    // Only the host that failed runs again, as a new run that names the old one.
    let rerun = world.run(&["--retries", "0", "rerun", "--failed", &run_id, "-o", "json"]);
    assert_eq!(code(&rerun), Some(255), "{}", show(&rerun));
    let (again, summary) = parse_events(&rerun);
    assert_eq!(hosts_of(&again), ["web-3"]);
    assert_eq!(summary["hosts"], 1);
    assert_ne!(summary["run_id"], run_id.as_str());
    let last = world.run(&["history", "--run", "last", "-o", "json"]);
    let last = json_lines(&last);
    assert_eq!(last.len(), 1);
    assert_eq!(last[0]["agent"], "web-3");
}

fn uuid_v7(text: &str) -> bool {
    text.len() == 36 && text.as_bytes()[14] == b'7'
}

#[test]
fn submitted_jobs_are_refreshed_waited_for_and_cancelled_by_run() {
    let root = tempdir();
    let secret = gen_key();
    let one = AgentSpec::new("runs-sub-1", &secret).start(root.path());
    let two = AgentSpec::new("runs-sub-2", &secret).start(root.path());
    let mut first = Host::agent("sub-1", &one);
    first.groups = &["pool"];
    let mut second = Host::agent("sub-2", &two);
    second.groups = &["pool"];
    let world = World::new(root.path(), &secret, &[first, second]);

    // `submit` leaves the row open; `history` asks the agent and records the end.
    let submit = world.run(&["submit", "-a", "sub-1", "--", "sleep 1; exit 3"]);
    assert_eq!(code(&submit), Some(0), "{}", show(&submit));
    let job = text(&submit.stdout).trim().to_string();
    eventually(PATIENCE, "history shows the job completed", || {
        let rows = world.run(&["history", "--job", &job, "-o", "json"]);
        let rows = json_lines(&rows);
        rows.first()
            .is_some_and(|r| r["status"] == "completed" && r["exit_code"] == 3)
            .then_some(())
    });
    let wait = world.run(&["wait", &job]);
    assert_eq!(code(&wait), Some(3), "{}", show(&wait));
    let no_refresh = world.run(&["history", "--no-refresh", "--job", &job, "-o", "json"]);
    assert_eq!(json_lines(&no_refresh)[0]["status"], "completed");

    // A run of long jobs, cancelled as a whole.
    let submit = world.run(&["submit", "-g", "pool", "-o", "json", "--", "sleep 300"]);
    assert_eq!(code(&submit), Some(0), "{}", show(&submit));
    let (events, summary) = parse_events(&submit);
    assert_eq!(hosts_of(&events), ["sub-1", "sub-2"]);
    let run_id = summary["run_id"].as_str().expect("run id").to_string();
    let cancel = world.run(&["cancel", "--run", &run_id]);
    assert_eq!(code(&cancel), Some(0), "{}", show(&cancel));
    assert_eq!(
        text(&cancel.stdout).matches("cancel requested").count(),
        2,
        "{}",
        show(&cancel)
    );
    let wait = world.run(&["wait", &run_id, "-o", "json"]);
    assert_eq!(code(&wait), Some(1), "{}", show(&wait));
    let (_, summary) = parse_events(&wait);
    assert_eq!(summary["cancelled"], 2, "{}", show(&wait));
    let again = world.run(&["cancel", "--run", &run_id]);
    assert!(
        text(&again.stdout).contains("no job left"),
        "{}",
        show(&again)
    );
}

#[test]
fn a_queued_job_says_so() {
    let root = tempdir();
    let secret = gen_key();
    let mut spec = AgentSpec::new("runs-queue", &secret);
    spec.max_concurrent_jobs = 1;
    let agent = spec.start(root.path());
    let world = World::new(root.path(), &secret, &[Host::agent("q", &agent)]);
    let blocker = world.run(&["submit", "-a", "q", "--", "sleep 8"]);
    assert_eq!(code(&blocker), Some(0), "{}", show(&blocker));
    let output = world.run(&["run", "-a", "q", "--", "echo done"]);
    assert_eq!(code(&output), Some(0), "{}", show(&output));
    assert_eq!(text(&output.stdout), "done\n", "{}", show(&output));
    assert!(text(&output.stderr).contains("queued"), "{}", show(&output));
}

#[test]
fn a_group_of_one_has_the_fan_out_shape_and_a_named_host_the_bare_one() {
    let root = tempdir();
    let secret = gen_key();
    let agent = AgentSpec::new("runs-shape", &secret).start(root.path());
    let mut host = Host::agent("solo", &agent);
    host.groups = &["one"];
    let world = World::new(root.path(), &secret, &[host]);

    let bare = world.run(&["run", "-a", "solo", "--", "echo hi; exit 4"]);
    assert_eq!(code(&bare), Some(4), "{}", show(&bare));
    assert_eq!(text(&bare.stdout), "hi\n");

    for args in [
        vec!["run", "-g", "one", "--", "echo hi; exit 4"],
        vec!["run", "--all", "--", "echo hi; exit 4"],
        vec!["run", "-a", "sol*", "--", "echo hi; exit 4"],
        vec!["run", "-a", "solo", "--prefix", "--", "echo hi; exit 4"],
    ] {
        let output = world.run(&args);
        assert_eq!(code(&output), Some(1), "{args:?}: {}", show(&output));
        let stdout = text(&output.stdout);
        assert!(
            stdout.starts_with("solo | hi\n"),
            "{args:?}: {}",
            show(&output)
        );
        assert!(
            stdout.contains("1 host(s): 0 succeeded, 1 failed"),
            "{}",
            show(&output)
        );
        assert!(
            stdout.contains("quickcmd history --run "),
            "{}",
            show(&output)
        );
    }
    let forced = world.run(&["run", "-g", "one", "--no-prefix", "--", "echo hi; exit 4"]);
    assert_eq!(code(&forced), Some(4), "{}", show(&forced));
    assert_eq!(text(&forced.stdout), "hi\n");
    // One host in JSON is the same event stream.
    let json = world.run(&["run", "-a", "solo", "-o", "json", "--", "echo hi"]);
    assert_eq!(code(&json), Some(0), "{}", show(&json));
    let (events, summary) = parse_events(&json);
    assert_eq!(summary["succeeded"], 1);
    assert!(events
        .iter()
        .any(|e| e["event"] == "output" && e["data"] == "hi\n"));
}

#[test]
fn output_cut_by_the_agent_is_marked_with_its_size_and_hash() {
    let root = tempdir();
    let secret = gen_key();
    let spec = AgentSpec::new("runs-trunc", &secret);
    let tls = gen_cert(&root.path().join("trunc-tls"));
    let config = spec.config(tls).set("max_output_bytes", json!(1024));
    let agent = TestAgent::start(&spec.agent_id, config);
    let world = World::new(root.path(), &secret, &[Host::agent("big", &agent)]);
    let host_event = |extra: &[&str]| -> Value {
        let mut args = vec!["run", "-a", "big", "-o", "json"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--", "head -c 5000 /dev/zero | tr '\\0' x"]);
        let output = world.run(&args);
        assert_eq!(code(&output), Some(0), "{}", show(&output));
        let (events, _) = parse_events(&output);
        events
            .into_iter()
            .find(|e| e["event"] == "host")
            .expect("host event")
    };
    // Polled: the text is the agent's stored copy, cut; the marker says so, with the
    // whole stream's size and hash.
    let cut = host_event(&["--no-stream"]);
    assert_eq!(cut["stdout_truncated"], true, "{cut}");
    assert_eq!(cut["stdout_bytes"], 5000, "{cut}");
    assert_eq!(cut["stdout_sha256"], sha256_hex(&[b'x'; 5000]), "{cut}");
    assert!(
        cut["stdout"].as_str().map(str::len).unwrap_or(0) < 5000,
        "{cut}"
    );
    // Streamed: every byte came live, so the text is whole.
    let whole = host_event(&[]);
    assert_eq!(whole["stdout_truncated"], false, "{whole}");
    assert_eq!(whole["stdout"].as_str().map(str::len), Some(5000));
    assert_eq!(whole["stdout_sha256"], sha256_hex(&[b'x'; 5000]));
}

#[test]
fn targeting_list_hosts_inventory_and_did_you_mean() {
    let root = tempdir();
    let secret = gen_key();
    let agent = AgentSpec::new("runs-inv", &secret).start(root.path());
    let cert = agent.cert_path();
    let mut up = Host::agent("web-1", &agent);
    up.groups = &["web"];
    up.labels = &[("env", "prod"), ("role", "web")];
    let mut web2 = Host::down("web-2", &cert);
    web2.groups = &["web"];
    web2.labels = &[("env", "dev"), ("role", "web")];
    let mut web12 = Host::down("web-12", &cert);
    web12.labels = &[("env", "prod"), ("role", "web")];
    let mut db = Host::down("db-1", &cert);
    db.groups = &["db"];
    db.labels = &[("env", "prod"), ("role", "db")];
    let world = World::new(root.path(), &secret, &[up, web2, web12, db]);

    let names = |args: &[&str]| -> Vec<String> {
        let mut full = vec!["run"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--list-hosts", "--", "true"]);
        let output = world.run(&full);
        assert_eq!(code(&output), Some(0), "{args:?}: {}", show(&output));
        text(&output.stdout)
            .lines()
            .map(|l| l.split(' ').next().unwrap_or_default().to_string())
            .collect()
    };
    assert_eq!(names(&["-a", "web-*"]), ["web-1", "web-2", "web-12"]);
    assert_eq!(names(&["-a", "web-[1-2]"]), ["web-1", "web-2"]);
    assert_eq!(
        names(&["-a", "web-[10-12]", "-a", "db-1"]),
        ["web-12", "db-1"]
    );
    assert_eq!(
        names(&["--all", "--exclude", "web-1?"]),
        ["web-1", "web-2", "db-1"]
    );
    assert_eq!(names(&["--all", "-a", "!web-*"]), ["db-1"]);
    assert_eq!(names(&["-l", "env=prod,role!=db"]), ["web-1", "web-12"]);
    assert_eq!(names(&["-g", "web", "-l", "env=prod"]), ["web-1"]);
    // Nothing was sent: no history.
    let rows = world.run(&["history", "-o", "json"]);
    assert!(json_lines(&rows).is_empty(), "{}", show(&rows));

    let unknown = world.run(&["run", "-a", "web1", "--", "true"]);
    assert_eq!(code(&unknown), Some(2), "{}", show(&unknown));
    assert!(
        text(&unknown.stderr).contains("did you mean `web-1`"),
        "{}",
        show(&unknown)
    );
    let group = world.run(&["health", "-g", "wbe"]);
    assert_eq!(code(&group), Some(2), "{}", show(&group));
    assert!(text(&group.stderr).contains("`web`"), "{}", show(&group));
    let subcommand = world.run(&["histroy"]);
    assert_eq!(code(&subcommand), Some(2), "{}", show(&subcommand));
    assert!(
        text(&subcommand.stderr).contains("history"),
        "{}",
        show(&subcommand)
    );

    let inventory = world.run(&["inventory"]);
    assert_eq!(code(&inventory), Some(0), "{}", show(&inventory));
    let listing = text(&inventory.stdout);
    for needle in [
        "web-12",
        "env=prod,role=web",
        "group web: web-1 web-2",
        "group db: db-1",
    ] {
        assert!(listing.contains(needle), "{needle}: {listing}");
    }
    let names = world.run(&["inventory", "--names"]);
    assert_eq!(text(&names.stdout), "web-1\nweb-2\nweb-12\ndb-1\n");
    let groups = world.run(&["inventory", "--group-names"]);
    assert_eq!(text(&groups.stdout), "db\nweb\n");
    let check = world.run(&["--retries", "0", "inventory", "--check", "-o", "json"]);
    assert_eq!(code(&check), Some(1), "{}", show(&check));
    let probed = json_lines(&check);
    assert_eq!(probed.len(), 4);
    assert_eq!(probed[0]["healthy"], true, "{probed:?}");
    assert!(probed[1..].iter().all(|p| p["healthy"] == false));

    // Completions ask the inventory for names.
    for shell in ["bash", "zsh", "fish"] {
        let script = world.run(&["completions", shell]);
        assert_eq!(code(&script), Some(0));
        assert!(
            text(&script.stdout).contains("quickcmd inventory --names"),
            "{shell}"
        );
    }
}
