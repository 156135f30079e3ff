//! The contract a script relies on, through the real `quickcmd` binary and, where an agent
//! is needed, real agents on loopback (real TLS, real Docker): a closed pipe ends a command
//! quietly, mistakes are refused locally with exit 2, the exit-code table of
//! docs/controller.md, the summary's counts, visible retries without colour codes, units,
//! the TLS hint, one time format, and `config init` / `config show`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use quickcmd_testkit::*;
use serde_json::Value;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// `quickcmd` with a clean environment and a history in `dir`, no config file.
fn bare(dir: &Path) -> Command {
    let mut command = Command::new(quickcmd_bin());
    command
        .arg("--audit-db")
        .arg(dir.join("history.db"))
        .env_remove("QUICKCMD_HMAC_SECRET")
        .env_remove("QUICKCMD_CONTROLLER_ID")
        .env_remove("QUICKCMD_CONFIG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("XDG_CONFIG_HOME", dir.join("xdg-config"))
        .env("XDG_DATA_HOME", dir.join("xdg-data"))
        .stdin(Stdio::null());
    command
}

fn run(mut command: Command, args: &[&str]) -> Output {
    command.args(args);
    run_bounded(command, Duration::from_secs(120))
}

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Runs `command` with its stdout closed before it writes anything, as `| head` does
/// once it has read enough; returns the exit code and stderr.
fn with_stdout_closed(mut command: Command) -> (Option<i32>, String) {
    // The reader is gone before the command starts (closing it after the spawn would race
    // a command that writes its few lines first).
    let (reader, writer) = std::io::pipe().expect("a pipe");
    drop(reader);
    command.stdout(writer).stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            panic!("{command:?} did not end with its stdout closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), reader.join().expect("stderr reader"))
}

/// Asserts a quiet end on a closed pipe: exit 141, nothing on stderr.
fn assert_quiet_pipe_end(command: Command, what: &str) {
    let (code, stderr) = with_stdout_closed(command);
    assert_eq!(code, Some(141), "{what}: stderr: {stderr}");
    assert!(stderr.is_empty(), "{what}: stderr: {stderr}");
}

/// A secret file and flags for ad-hoc URLs without a config file.
fn adhoc_flags(dir: &Path) -> Vec<String> {
    let secret = write_secret(dir, "adhoc.secret", &gen_key());
    vec![
        "--controller-id".into(),
        CONTROLLER.into(),
        "--hmac-secret-file".into(),
        secret.display().to_string(),
    ]
}

#[test]
fn a_closed_pipe_ends_any_command_quietly() {
    let root = tempdir();
    let dir = root.path();
    // History rows without an agent: submissions to a port nothing listens on.
    let url = format!("https://127.0.0.1:{}", closed_port());
    let flags = adhoc_flags(dir);
    for _ in 0..3 {
        let mut command = bare(dir);
        command
            .args(&flags)
            .args(["--retries", "0", "run", "--agent", &url, "--", "true"]);
        let output = run_bounded(command, Duration::from_secs(60));
        assert_eq!(output.status.code(), Some(255), "{}", show(&output));
    }
    let rows = run(bare(dir), &["history", "-o", "json", "--limit", "50"]);
    assert_eq!(json_lines(&rows).len(), 3, "{}", show(&rows));

    for args in [
        vec!["history", "-o", "json", "--limit", "50"],
        vec!["history"],
        vec!["man"],
        vec!["completions", "bash"],
        vec!["agent", "gen-key"],
        vec!["config", "init", "--stdout"],
        vec!["--help"],
    ] {
        let mut command = bare(dir);
        command.args(&args);
        let (code, stderr) = with_stdout_closed(command);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        // clap prints --help itself and ignores the closed pipe.
        if args != ["--help"] {
            assert_eq!(code, Some(141), "{args:?}: stderr: {stderr}");
            assert!(stderr.is_empty(), "{args:?}: {stderr}");
        }
    }

    // And through a real pipeline: `head -1` gets the first row whole, no panic follows.
    let mut pipeline = Command::new("bash");
    pipeline
        .arg("-c")
        .arg(format!(
            "'{}' --audit-db '{}' history -o json --limit 50 | head -1; exit ${{PIPESTATUS[0]}}",
            quickcmd_bin().display(),
            dir.join("history.db").display()
        ))
        .env("NO_COLOR", "1");
    let output = run_bounded(pipeline, Duration::from_secs(60));
    let code = output.status.code();
    assert!(code == Some(0) || code == Some(141), "{}", show(&output));
    assert!(text(&output.stderr).is_empty(), "{}", show(&output));
    let first: Value = serde_json::from_str(text(&output.stdout).trim()).expect("one JSON row");
    assert_eq!(first["status"], "unreachable");
}

#[test]
fn mistakes_are_refused_locally_with_exit_2() {
    let root = tempdir();
    let dir = root.path();
    // Anything that reached the network would end unreachable (255), not 2.
    let url = format!("https://127.0.0.1:{}", closed_port());
    let flags = adhoc_flags(dir);
    let check = |args: &[&str], expected: &[&str]| {
        let mut command = bare(dir);
        command.args(&flags).arg("--retries").arg("0").args(args);
        let output = run_bounded(command, Duration::from_secs(60));
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", show(&output));
        let stderr = text(&output.stderr);
        for part in expected {
            assert!(
                stderr.contains(part),
                "{args:?}: `{part}` missing: {stderr}"
            );
        }
    };
    check(
        &["history", "--status", "bogus"],
        &["--status", "bogus", "completed", "unreachable", "cancelled"],
    );
    check(&["history", "--limit", "0"], &["--limit", "at least 1"]);
    check(
        &["list", "--agent", &url, "--limit", "5000"],
        &["--limit", "1..=1000"],
    );
    check(
        &["list", "--agent", &url, "--status", "done"],
        &["--status", "done"],
    );
    check(
        &["run", "--agent", &url, "-e", "1BAD=x", "--", "true"],
        &["--env", "1BAD", "[A-Za-z_][A-Za-z0-9_]*"],
    );
    check(
        &["run", "--agent", &url, "-e", "NOVALUE", "--", "true"],
        &["--env", "NOVALUE", "NAME=VALUE"],
    );
    check(
        &["run", "--agent", &url, "--timeout", "5x", "--", "true"],
        &["--timeout", "5m"],
    );
    check(
        &["run", "--agent", &url, "--memory-limit", "1M", "--", "true"],
        &["--memory-limit", "6M"],
    );
    check(
        &["run", "--agent", &url, "--retries", "11", "--", "true"],
        &["--retries"],
    );
    // Nothing was sent, so nothing was recorded.
    let rows = run(bare(dir), &["history", "-o", "json"]);
    assert!(json_lines(&rows).is_empty(), "{}", show(&rows));

    // A missing config file is said once, with the way out.
    let missing = dir.join("missing.yaml");
    let mut command = bare(dir);
    command
        .arg("--config")
        .arg(&missing)
        .args(["list", "--all"]);
    let output = run_bounded(command, Duration::from_secs(30));
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let stderr = text(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");
    assert!(stderr.contains("quickcmd config init"), "{stderr}");
    assert!(!stderr.contains("os error"), "{stderr}");

    let help = run(bare(dir), &["--help"]);
    assert!(
        text(&help.stdout).contains("docs/controller.md"),
        "{}",
        show(&help)
    );
}

#[test]
fn config_init_and_show() {
    let root = tempdir();
    let dir = root.path();
    let config = dir.join("etc").join("controller.yaml");
    let init = |extra: &[&str]| {
        let mut command = bare(dir);
        command
            .arg("--config")
            .arg(&config)
            .args(["config", "init"])
            .args(extra);
        run_bounded(command, Duration::from_secs(30))
    };
    let first = init(&[]);
    assert_eq!(first.status.code(), Some(0), "{}", show(&first));
    let written = std::fs::read_to_string(&config).expect("written");
    assert!(written.contains("controller_id:"), "{written}");
    assert!(
        written.contains("# QuickCMD controller config"),
        "{written}"
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&config)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "mode {mode:o}");

    // A second init refuses to overwrite, and says how.
    std::fs::write(&config, "controller_id: mine\n").expect("edit");
    let again = init(&[]);
    assert_eq!(again.status.code(), Some(2), "{}", show(&again));
    assert!(text(&again.stderr).contains("--force"), "{}", show(&again));
    assert_eq!(
        std::fs::read_to_string(&config).expect("kept"),
        "controller_id: mine\n"
    );
    let forced = init(&["--force"]);
    assert_eq!(forced.status.code(), Some(0), "{}", show(&forced));
    assert_eq!(std::fs::read_to_string(&config).expect("replaced"), written);

    // Show: secrets are never printed, secret files are named, not read.
    let etc = config.parent().expect("etc");
    let default_secret = "default-secret-value-0123456789";
    let own_secret = "own-secret-value-9876543210";
    std::fs::write(etc.join("controller.secret"), default_secret).expect("secret");
    let own = write_secret(etc, "web-1.secret", own_secret);
    std::fs::write(
        &config,
        format!(
            "controller_id: ctl\nhmac_secret_file: controller.secret\nagents:\n  - name: web-1\n    \
             url: https://127.0.0.1:1\n    groups: [web]\n    labels: {{env: prod}}\n    \
             hmac_secret_file: {}\n  - name: db-1\n    url: https://127.0.0.1:2\n    \
             controller_id: ctl-db\n",
            own.display()
        ),
    )
    .expect("config");
    let show_with = |env_secret: Option<&str>, extra: &[&str]| {
        let mut command = bare(dir);
        command
            .arg("--config")
            .arg(&config)
            .args(extra)
            .args(["config", "show"]);
        if let Some(value) = env_secret {
            command.env("QUICKCMD_HMAC_SECRET", value);
        }
        run_bounded(command, Duration::from_secs(30))
    };
    let shown = show_with(None, &[]);
    assert_eq!(shown.status.code(), Some(0), "{}", show(&shown));
    let out = text(&shown.stdout);
    for part in [
        "web-1.secret (own)",
        "controller.secret (default)",
        "ctl-db",
        "env=prod",
        "public roots",
    ] {
        assert!(out.contains(part), "`{part}` missing: {out}");
    }
    let env_value = "env-secret-value-5555555555";
    let shown = show_with(Some(env_value), &["-o", "json"]);
    let everything = format!("{}{}", text(&shown.stdout), text(&shown.stderr));
    for secret in [default_secret, own_secret, env_value] {
        assert!(
            !everything.contains(secret),
            "a secret was printed: {everything}"
        );
    }
    let object: Value = serde_json::from_str(text(&shown.stdout).trim()).expect("json");
    let agents = object["agents"].as_array().expect("agents");
    assert_eq!(agents[0]["secret"]["source"], "agent");
    assert_eq!(agents[1]["secret"]["source"], "environment");
    assert_eq!(agents[1]["controller_id"], "ctl-db");
    let shown = show_with(Some(env_value), &[]);
    assert!(
        text(&shown.stdout).contains("[redacted]"),
        "{}",
        show(&shown)
    );
}

#[test]
fn retries_are_said_and_tunable_without_colour_codes() {
    let root = tempdir();
    let dir = root.path();
    let url = format!("https://127.0.0.1:{}", closed_port());
    let flags = adhoc_flags(dir);
    let attempt = |extra: &[&str]| {
        let mut command = bare(dir);
        // A terminal type that allows colours: only stderr not being a terminal stops them.
        command.env_remove("NO_COLOR").env("TERM", "xterm-256color");
        command.args(&flags).args(extra);
        command.args(["run", "--agent", &url, "--", "true"]);
        run_bounded(command, Duration::from_secs(60))
    };
    let output = attempt(&["--retries", "2", "--connect-timeout", "2s", "-vv"]);
    assert_eq!(output.status.code(), Some(255), "{}", show(&output));
    let stderr = text(&output.stderr);
    let retries: Vec<&str> = stderr.lines().filter(|l| l.contains("; retry ")).collect();
    assert_eq!(retries.len(), 2, "{stderr}");
    assert!(
        retries[0].contains("submit: connection refused; retry 1 of 2 in 1.0s"),
        "{stderr}"
    );
    assert!(retries[1].contains("retry 2 of 2 in 2.0s"), "{stderr}");
    assert!(
        !stderr.contains('\x1b'),
        "ANSI codes on a piped stderr: {stderr:?}"
    );

    let once = attempt(&["--retries", "0"]);
    assert_eq!(once.status.code(), Some(255), "{}", show(&once));
    assert!(!text(&once.stderr).contains("retry"), "{}", show(&once));
    assert!(
        text(&once.stderr).contains("connection refused"),
        "{}",
        show(&once)
    );
}

struct Fleet {
    _root: tempfile::TempDir,
    controller: Controller,
    _agents: Vec<TestAgent>,
    /// ok-1 by a URL the inventory does not know (so no pin applies).
    ok_url: String,
    ok_cert: PathBuf,
}

/// ok-1 and ok-2 (working), wrong-key (another secret: refused), gone (stopped).
fn fleet() -> Fleet {
    let root = tempdir();
    let secret = gen_key();
    let ok1 = AgentSpec::new("ok-1", &secret).start(root.path());
    let ok2 = AgentSpec::new("ok-2", &secret).start(root.path());
    let wrong = AgentSpec::new("wrong-key", &gen_key()).start(root.path());
    let mut gone = AgentSpec::new("gone", &secret).start(root.path());
    gone.kill9();
    let controller = Controller::new(
        root.path(),
        &secret,
        &[
            Entry::of(&ok1),
            Entry::of(&ok2),
            Entry::of(&wrong),
            Entry::of(&gone),
        ],
    );
    Fleet {
        ok_url: format!("https://localhost:{}", ok1.port()),
        ok_cert: ok1.cert_path(),
        _root: root,
        controller,
        _agents: vec![ok1, ok2, wrong, gone],
    }
}

fn summary_line(output: &Output) -> String {
    text(&output.stdout)
        .lines()
        .find(|l| l.contains(" host(s): "))
        .unwrap_or_else(|| panic!("no summary line: {}", show(output)))
        .to_string()
}

#[test]
fn exit_codes_and_summary_counts() {
    let fleet = fleet();
    let c = &fleet.controller;
    let r = |args: &[&str]| {
        let mut all = vec!["--retries", "0"];
        all.extend_from_slice(args);
        c.run(&all)
    };

    // One target: as ssh.
    assert_eq!(
        r(&["run", "-a", "ok-1", "--", "exit 7"]).status.code(),
        Some(7)
    );
    assert_eq!(
        r(&["run", "-a", "ok-1", "--", "exit 0"]).status.code(),
        Some(0)
    );
    let gone = r(&["run", "-a", "gone", "--", "true"]);
    assert_eq!(gone.status.code(), Some(255), "{}", show(&gone));
    assert!(
        text(&gone.stderr).contains("unreachable"),
        "{}",
        show(&gone)
    );
    let refused = r(&["run", "-a", "wrong-key", "--", "true"]);
    assert_eq!(refused.status.code(), Some(255), "{}", show(&refused));
    assert!(text(&refused.stderr).contains("401"), "{}", show(&refused));

    // Several: 0 all succeeded, 1 some command failed, 255 some host could not run it.
    let all_ok = r(&["run", "-a", "ok-1", "-a", "ok-2", "--", "true"]);
    assert_eq!(all_ok.status.code(), Some(0), "{}", show(&all_ok));
    assert_eq!(
        summary_line(&all_ok),
        "2 host(s): 2 succeeded, 0 failed, 0 unreachable, 0 refused, 0 cancelled, 0 skipped"
    );
    let some_failed = r(&["run", "-a", "ok-1", "-a", "ok-2", "--", "exit 3"]);
    assert_eq!(some_failed.status.code(), Some(1), "{}", show(&some_failed));
    assert_eq!(
        summary_line(&some_failed),
        "2 host(s): 0 succeeded, 2 failed, 0 unreachable, 0 refused, 0 cancelled, 0 skipped"
    );
    let mixed = r(&["run", "--all", "--max-errors", "100%", "--", "exit 0"]);
    assert_eq!(mixed.status.code(), Some(255), "{}", show(&mixed));
    assert_eq!(
        summary_line(&mixed),
        "4 host(s): 2 succeeded, 0 failed, 1 unreachable, 1 refused, 0 cancelled, 0 skipped"
    );
    // Skipped hosts are counted apart, not as failed.
    let skipped = r(&[
        "run",
        "-a",
        "wrong-key",
        "-a",
        "ok-1",
        "-a",
        "ok-2",
        "--max-concurrency",
        "1",
        "--",
        "true",
    ]);
    assert_eq!(skipped.status.code(), Some(255), "{}", show(&skipped));
    assert_eq!(
        summary_line(&skipped),
        "3 host(s): 0 succeeded, 0 failed, 0 unreachable, 1 refused, 0 cancelled, 2 skipped"
    );

    // status and logs -f end with the job's outcome; status says 75 while it runs.
    let submitted = r(&["submit", "-a", "ok-1", "--", "echo out; exit 5"]);
    assert_eq!(submitted.status.code(), Some(0), "{}", show(&submitted));
    let job = text(&submitted.stdout).trim().to_string();
    let logs = r(&["logs", "-f", &job]);
    assert_eq!(logs.status.code(), Some(5), "{}", show(&logs));
    assert_eq!(text(&logs.stdout), "out\n");
    let status = r(&["status", &job]);
    assert_eq!(status.status.code(), Some(5), "{}", show(&status));
    let long = r(&["submit", "-a", "ok-1", "--", "sleep 60"]);
    let long_job = text(&long.stdout).trim().to_string();
    eventually(Duration::from_secs(30), "the job to run", || {
        let output = r(&["status", "-o", "json", &long_job]);
        (json_lines(&output).first()?["job"]["status"] == "running").then_some(())
    });
    let running = r(&["status", &long_job]);
    assert_eq!(running.status.code(), Some(75), "{}", show(&running));
    let cancel = r(&["cancel", &long_job]);
    assert_eq!(cancel.status.code(), Some(0), "{}", show(&cancel));
    let unknown = r(&["status", "-a", "ok-1", "no-such-job"]);
    assert_eq!(unknown.status.code(), Some(255), "{}", show(&unknown));

    // A closed pipe on `logs` ends it quietly; `run` follows its job to the end anyway.
    let mut command = c.command();
    command.args(["logs", "-o", "json", &job]);
    assert_quiet_pipe_end(command, "logs -o json");
    let mut command = c.command();
    command.args(["logs", &job]);
    assert_quiet_pipe_end(command, "logs");
    let mut command = c.command();
    command.args(["run", "-a", "ok-1", "--", "echo a; exit 4"]);
    let (code, stderr) = with_stdout_closed(command);
    assert_eq!(code, Some(4), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    // One time format in history and list: UTC to the second.
    let time = |line: &str| {
        let cells: Vec<&str> = line.split_whitespace().collect();
        cells.len() > 2
            && cells[0].len() == 10
            && cells[0].as_bytes()[4] == b'-'
            && cells[1].len() == 8
            && cells[1].as_bytes()[2] == b':'
    };
    let history = text(&r(&["history", "--limit", "3"]).stdout);
    let list = text(&r(&["list", "-a", "ok-1", "--limit", "3"]).stdout);
    for table in [&history, &list] {
        let mut lines = table.lines();
        assert!(lines.next().is_some_and(|h| h.contains("(UTC)")), "{table}");
        assert!(lines.all(time), "{table}");
    }
    // TLS: an unknown issuer says what to do.
    let unpinned = r(&["run", "-a", &fleet.ok_url, "--", "true"]);
    assert_eq!(unpinned.status.code(), Some(255), "{}", show(&unpinned));
    assert!(
        text(&unpinned.stderr).contains("--ca-cert"),
        "{}",
        show(&unpinned)
    );
    let pinned = r(&[
        "--ca-cert",
        &fleet.ok_cert.display().to_string(),
        "run",
        "-a",
        &fleet.ok_url,
        "--",
        "echo pinned",
    ]);
    assert_eq!(pinned.status.code(), Some(0), "{}", show(&pinned));
}

#[test]
fn sizes_and_durations_take_units() {
    let root = tempdir();
    let secret = gen_key();
    let agent = AgentSpec::new("units", &secret).start(root.path());
    let controller = Controller::new(root.path(), &secret, &[Entry::of(&agent)]);
    // 2s, not 2 minutes: the job is killed as timed out.
    let timed = controller.run(&["run", "-a", "units", "--timeout", "2s", "--", "sleep 30"]);
    assert_eq!(timed.status.code(), Some(124), "{}", show(&timed));
    // 16M is 16 MiB: enough to start, too little for a line that never ends.
    let oom = controller.run(&[
        "run",
        "-a",
        "units",
        "-o",
        "json",
        "--memory-limit",
        "16M",
        "--ttl",
        "1m",
        "--",
        "tail /dev/zero",
    ]);
    let object = json_lines(&oom)
        .into_iter()
        .find(|o| o["event"] == "host")
        .expect("host event");
    assert_eq!(object["reason"], "oom", "{}", show(&oom));
    assert_eq!(object["exit_code"], 137, "{}", show(&oom));
    let fits = controller.run(&[
        "run",
        "-a",
        "units",
        "--memory-limit",
        "16M",
        "--",
        "echo fits",
    ]);
    assert_eq!(fits.status.code(), Some(0), "{}", show(&fits));
    assert_eq!(text(&fits.stdout), "fits\n");
}
