//! `quickcmd` end to end: real agents on loopback (real TLS, real Docker), the real
//! binary, and what an operator would check — exit codes, output, fan-out failures,
//! secrets, Ctrl-C, dropped streams, history and JSON.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use quickcmd_testkit::{
    eventually, gen_key, json_lines, quickcmd_bin, run_bounded, show, text, write_secret,
    AgentSpec, Controller, CutProxy, Entry, Grant, CONTROLLER,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `host` events of a JSON run (one per host; the other events and the summary are
/// tested in tests/runs.rs).
fn host_events(output: &std::process::Output) -> Vec<serde_json::Value> {
    json_lines(output)
        .into_iter()
        .filter(|o| o["event"] == "host")
        .collect()
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn exit_codes_pass_through_for_one_host() {
    let root = tempdir();
    let secret = gen_key();
    let agent = AgentSpec::new("solo", &secret).start(root.path());
    let controller = Controller::new(root.path(), &secret, &[Entry::of(&agent)]);

    let ok = controller.run(&["run", "--agent", "solo", "--", "exit 0"]);
    assert_eq!(ok.status.code(), Some(0), "{}", show(&ok));

    let three = controller.run(&["run", "--agent", "solo", "--", "echo before; exit 3"]);
    assert_eq!(three.status.code(), Some(3), "{}", show(&three));
    assert_eq!(text(&three.stdout), "before\n");

    let timeout = controller.run(&["run", "--agent", "solo", "--timeout", "2", "--", "sleep 30"]);
    assert_eq!(timeout.status.code(), Some(124), "{}", show(&timeout));
    assert!(
        text(&timeout.stderr).contains("timeout"),
        "{}",
        show(&timeout)
    );

    // The same through polling instead of the stream.
    let polled = controller.run(&[
        "run",
        "--agent",
        "solo",
        "--no-stream",
        "--",
        "echo p; exit 7",
    ]);
    assert_eq!(polled.status.code(), Some(7), "{}", show(&polled));
    assert_eq!(text(&polled.stdout), "p\n");
}

#[test]
fn stdout_and_stderr_stay_apart() {
    let root = tempdir();
    let secret = gen_key();
    let agent = AgentSpec::new("apart", &secret).start(root.path());
    let controller = Controller::new(root.path(), &secret, &[Entry::of(&agent)]);
    let output = controller.run(&[
        "run",
        "--agent",
        "apart",
        "--",
        "echo out1; echo err1 >&2; echo out2; echo err2 >&2",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(text(&output.stdout), "out1\nout2\n");
    assert_eq!(text(&output.stderr), "err1\nerr2\n");
}

#[test]
fn output_streams_live_and_in_order() {
    let root = tempdir();
    let secret = gen_key();
    let agent = AgentSpec::new("live", &secret).start(root.path());
    let controller = Controller::new(root.path(), &secret, &[Entry::of(&agent)]);
    let mut command = controller.command();
    command
        .args([
            "run",
            "--agent",
            "live",
            "--",
            "for i in 1 2 3 4 5; do echo line$i; sleep 1; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn quickcmd");
    let stdout = child.stdout.take().expect("stdout");
    let mut arrivals = Vec::new();
    for line in BufReader::new(stdout).lines() {
        arrivals.push((line.expect("line"), Instant::now()));
    }
    let status = child.wait().expect("wait");
    let ended = Instant::now();
    assert!(status.success(), "exit {status:?}");
    let lines: Vec<&str> = arrivals.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(lines, ["line1", "line2", "line3", "line4", "line5"]);
    // Live: the first line is printed while the job still has seconds to run.
    let first_early = ended.duration_since(arrivals[0].1);
    assert!(
        first_early >= Duration::from_millis(2500),
        "line1 arrived only {first_early:?} before the end"
    );
    for pair in arrivals.windows(2) {
        let gap = pair[1].1.duration_since(pair[0].1);
        assert!(
            gap >= Duration::from_millis(300),
            "lines came in a burst: {gap:?}"
        );
    }
}

#[test]
fn fan_out_reports_a_stopped_agent_as_unreachable() {
    let root = tempdir();
    let secret = gen_key();
    let one = AgentSpec::new("one", &secret).start(root.path());
    let two = AgentSpec::new("two", &secret).start(root.path());
    let mut three = AgentSpec::new("three", &secret).start(root.path());
    three.kill9();
    let controller = Controller::new(
        root.path(),
        &secret,
        &[Entry::of(&one), Entry::of(&two), Entry::of(&three)],
    );
    assert_ne!(one.port(), two.port());

    let output = controller.run(&["run", "--all", "--", "echo hello from $HOSTNAME; echo done"]);
    // A host that could not run it: 255, as ssh says for "could not connect".
    assert_eq!(output.status.code(), Some(255), "{}", show(&output));
    let stdout = text(&output.stdout);
    for host in ["one  ", "two  "] {
        assert!(
            stdout.contains(&format!("{host} | done")),
            "no prefixed output of {host}: {}",
            show(&output)
        );
    }
    let row = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(name) && !l.contains(" | "))
            .unwrap_or_else(|| panic!("no summary row for {name}: {}", show(&output)))
            .to_string()
    };
    assert!(row("one").contains("completed"), "{}", row("one"));
    assert!(row("two").contains("completed"), "{}", row("two"));
    let stopped = row("three");
    assert!(stopped.contains("unreachable"), "{stopped}");
    assert!(stopped.contains("connection refused"), "{stopped}");
    assert!(
        stdout.contains(
            "3 host(s): 2 succeeded, 0 failed, 1 unreachable, 0 refused, 0 cancelled, 0 skipped"
        ),
        "{stdout}"
    );

    let json = controller.run(&["run", "--all", "--output", "json", "--", "echo hi"]);
    assert_eq!(json.status.code(), Some(255), "{}", show(&json));
    let mut objects = host_events(&json);
    objects.sort_by_key(|o| o["agent"].as_str().map(str::to_string));
    let statuses: Vec<(&str, &str)> = objects
        .iter()
        .map(|o| {
            (
                o["agent"].as_str().unwrap_or_default(),
                o["status"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            ("one", "completed"),
            ("three", "unreachable"),
            ("two", "completed")
        ]
    );
    assert_eq!(objects[0]["stdout"], "hi\n");
    assert_eq!(objects[0]["exit_code"], 0);
    assert_eq!(objects[1]["reason"], "connection refused");

    let health = controller.run(&["health", "--all"]);
    assert_eq!(health.status.code(), Some(1), "{}", show(&health));
    let health_text = text(&health.stdout);
    for (name, agent_id) in [("one", &one.agent_id), ("two", &two.agent_id)] {
        let row = health_text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no health row for {name}: {health_text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], "healthy", "{row}");
        assert_eq!(cells[3], agent_id.as_str(), "the agent id: {row}");
    }
    assert!(
        health_text
            .lines()
            .any(|l| l.starts_with("three") && l.contains("unreachable")),
        "{health_text}"
    );
}

#[test]
fn max_errors_zero_starts_no_host_after_a_failure() {
    let root = tempdir();
    let secret = gen_key();
    let bad = AgentSpec::new("bad", &gen_key()).start(root.path());
    let good_a = AgentSpec::new("good-a", &secret).start(root.path());
    let good_b = AgentSpec::new("good-b", &secret).start(root.path());
    let controller = Controller::new(
        root.path(),
        &secret,
        &[Entry::of(&bad), Entry::of(&good_a), Entry::of(&good_b)],
    );
    let output = controller.run(&[
        "run",
        "--agent",
        "bad",
        "--agent",
        "good-a",
        "--agent",
        "good-b",
        "--max-concurrency",
        "1",
        "--max-errors",
        "0",
        "--output",
        "json",
        "--",
        "echo should not run",
    ]);
    assert_eq!(output.status.code(), Some(255), "{}", show(&output));
    let objects = host_events(&output);
    let status_of = |name: &str| {
        objects
            .iter()
            .find(|o| o["agent"] == name)
            .and_then(|o| o["status"].as_str())
            .unwrap_or_else(|| panic!("no result for {name}: {}", show(&output)))
            .to_string()
    };
    assert_eq!(status_of("bad"), "refused");
    assert_eq!(status_of("good-a"), "skipped");
    assert_eq!(status_of("good-b"), "skipped");
    // Nothing was submitted to the skipped hosts: the history has only the failed one.
    let history = controller.run(&["history", "--output", "json", "--limit", "10"]);
    let rows = json_lines(&history);
    assert_eq!(rows.len(), 1, "{}", show(&history));
    assert_eq!(rows[0]["agent"], "bad");

    // With room for one failure, both good hosts run.
    let tolerant = controller.run(&[
        "run",
        "--agent",
        "bad",
        "--agent",
        "good-a",
        "--agent",
        "good-b",
        "--max-concurrency",
        "1",
        "--max-errors",
        "1",
        "--",
        "echo ran",
    ]);
    assert_eq!(tolerant.status.code(), Some(255), "{}", show(&tolerant));
    assert!(
        text(&tolerant.stdout).contains("good-a | ran"),
        "{}",
        show(&tolerant)
    );
    assert!(
        text(&tolerant.stdout).contains("good-b | ran"),
        "{}",
        show(&tolerant)
    );
}

#[test]
fn per_agent_secrets_and_controller_ids() {
    let root = tempdir();
    let (secret_a, secret_b, default) = (gen_key(), gen_key(), gen_key());
    let a = AgentSpec::new("sec-a", &secret_a).start(root.path());
    // This agent knows us under another id with its own secret (protocol `controllers`).
    let b = AgentSpec {
        agent_id: "sec-b".into(),
        secret: None,
        controllers: vec![Grant {
            id: "ops-controller".into(),
            secret: secret_b.clone(),
            scopes: vec![],
        }],
        max_concurrent_jobs: 2,
    }
    .start(root.path());
    let secrets = root.path().join("secrets");
    std::fs::create_dir_all(&secrets).expect("dir");
    let file_a = write_secret(&secrets, "a.secret", &secret_a);
    let file_b = write_secret(&secrets, "b.secret", &secret_b);
    let controller = Controller::new(
        root.path(),
        &default,
        &[
            Entry {
                secret_file: Some(&file_a),
                ..Entry::of(&a)
            },
            Entry {
                secret_file: Some(&file_b),
                controller_id: Some("ops-controller"),
                ..Entry::of(&b)
            },
        ],
    );
    let output = controller.run(&["run", "--all", "--", "echo signed"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(
        text(&output.stdout).contains("sec-a | signed"),
        "{}",
        show(&output)
    );
    assert!(
        text(&output.stdout).contains("sec-b | signed"),
        "{}",
        show(&output)
    );

    // Reads are signed per agent too.
    let list = controller.run(&["list", "--all", "--output", "json"]);
    assert_eq!(list.status.code(), Some(0), "{}", show(&list));
    for object in json_lines(&list) {
        assert_eq!(object["jobs"].as_array().map(Vec::len), Some(1), "{object}");
    }
}

#[test]
fn a_wrong_secret_is_reported_as_such() {
    let root = tempdir();
    let agent = AgentSpec::new("strict", &gen_key()).start(root.path());
    let controller = Controller::new(root.path(), &gen_key(), &[Entry::of(&agent)]);
    let output = controller.run(&["run", "--agent", "strict", "--", "echo never"]);
    assert_eq!(output.status.code(), Some(255), "{}", show(&output));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("401 INVALID_SIGNATURE"), "{stderr}");
    assert!(stderr.contains("HMAC secret"), "{stderr}");
    assert!(text(&output.stdout).is_empty());

    let json = controller.run(&["run", "--agent", "strict", "--output", "json", "--", "true"]);
    let objects = host_events(&json);
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0]["status"], "refused");
    assert_eq!(objects[0]["reason"], "401 INVALID_SIGNATURE");

    // Reads with the wrong secret are refused as well.
    let list = controller.run(&["list", "--agent", "strict"]);
    assert_eq!(list.status.code(), Some(1), "{}", show(&list));
    assert!(
        text(&list.stderr).contains("401 UNAUTHORIZED"),
        "{}",
        show(&list)
    );
}

#[test]
fn sigint_cancels_the_remote_jobs() {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;

    let root = tempdir();
    let secret = gen_key();
    let a = AgentSpec::new("int-a", &secret).start(root.path());
    let b = AgentSpec::new("int-b", &secret).start(root.path());
    let controller = Controller::new(root.path(), &secret, &[Entry::of(&a), Entry::of(&b)]);
    let mut command = controller.command();
    command
        .args(["run", "--all", "--", "echo started; sleep 120"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    // Both jobs are running once both have printed.
    let mut started = 0;
    let mut seen = Vec::new();
    while started < 2 {
        let line = receiver
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("jobs did not start; output so far: {seen:?}"));
        if line.ends_with("| started") {
            started += 1;
        }
        seen.push(line);
    }
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    kill(pid, Signal::SIGINT).expect("send SIGINT");
    let waited = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            waited.elapsed() < Duration::from_secs(30),
            "quickcmd ignored SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    let stderr = stderr_reader.join().expect("stderr");
    assert_eq!(
        stderr.matches("cancelled job ").count(),
        2,
        "both jobs reported cancelled: {stderr}"
    );

    // The agents agree: both jobs ended cancelled, long before their 120 s.
    let history = controller.run(&["history", "--output", "json"]);
    let rows = json_lines(&history);
    assert_eq!(rows.len(), 2, "{}", show(&history));
    for row in rows {
        assert_eq!(row["status"], "cancelled", "{row}");
        let job = row["job_id"].as_str().expect("job id").to_string();
        let agent = row["agent"].as_str().expect("agent").to_string();
        let view = eventually(Duration::from_secs(30), "the job to end", || {
            let output = controller.run(&["status", "--agent", &agent, "--output", "json", &job]);
            let objects = json_lines(&output);
            let view = objects.first()?.get("job")?.clone();
            (view["status"] != "running" && view["status"] != "pending").then_some(view)
        });
        assert_eq!(view["status"], "failed", "{view}");
        assert_eq!(view["result"]["reason"], "cancelled", "{view}");
    }
}

#[test]
fn a_stream_cut_mid_job_still_delivers_every_line() {
    let root = tempdir();
    let secret = gen_key();
    let agent = AgentSpec::new("cut", &secret).start(root.path());
    let proxy = CutProxy::start(agent.port());
    let proxied_url = format!("https://127.0.0.1:{}", proxy.port);
    let controller = Controller::new(
        root.path(),
        &secret,
        &[Entry {
            url: &proxied_url,
            ..Entry::of(&agent)
        }],
    );
    let mut command = controller.command();
    command
        .env("RUST_LOG", "quickcmd=debug")
        .args([
            "run",
            "--agent",
            "cut",
            "--",
            "for i in $(seq 1 30); do echo line$i; sleep 0.2; done",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let mut lines = Vec::new();
    let mut cut_sockets = 0;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        // Cut the connections mid-job, once, while lines are still coming.
        if line == "line8" {
            cut_sockets = proxy.cut();
        }
        lines.push(line);
    }
    let status = child.wait().expect("wait");
    let stderr = stderr_reader.join().expect("stderr");
    assert!(status.success(), "exit {status:?}\n{stderr}");
    assert!(cut_sockets >= 2, "the stream connection was not cut");
    let expected: Vec<String> = (1..=30).map(|i| format!("line{i}")).collect();
    assert_eq!(lines, expected, "every line, once, in order\n{stderr}");
    assert!(
        stderr.contains("reconnecting after frame"),
        "the client did not resume: {stderr}"
    );
    assert!(proxy.accepted.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}

#[test]
fn history_rows_match_what_ran() {
    let root = tempdir();
    let secret = gen_key();
    let agent = AgentSpec::new("hist", &secret).start(root.path());
    let controller = Controller::new(root.path(), &secret, &[Entry::of(&agent)]);

    let first = controller.run(&[
        "run",
        "--agent",
        "hist",
        "--prompt",
        "greet",
        "--output",
        "json",
        "--",
        "echo hello; echo oops >&2",
    ]);
    assert_eq!(first.status.code(), Some(0), "{}", show(&first));
    let second = controller.run(&["run", "--agent", "hist", "--output", "json", "--", "exit 3"]);
    assert_eq!(second.status.code(), Some(3), "{}", show(&second));
    let first = &host_events(&first)[0];
    let second = &host_events(&second)[0];

    let history = controller.run(&["history", "--output", "json"]);
    assert_eq!(history.status.code(), Some(0), "{}", show(&history));
    let rows = json_lines(&history);
    assert_eq!(rows.len(), 2);
    // Newest first.
    let (row2, row1) = (&rows[0], &rows[1]);
    assert_eq!(row1["job_id"], first["job_id"]);
    assert_eq!(row2["job_id"], second["job_id"]);
    for row in [row1, row2] {
        assert_eq!(row["agent"], "hist");
        assert_eq!(
            row["agent_url"],
            format!("{}/", agent.base.trim_end_matches('/'))
        );
        assert_eq!(row["controller_id"], CONTROLLER);
        assert_eq!(row["user"], "e2e-tester");
        assert_eq!(row["status"], "completed");
        assert_eq!(row["signature"].as_str().map(str::len), Some(64));
        assert_eq!(row["payload_sha256"].as_str().map(str::len), Some(64));
        assert!(row["ended_at"].is_string(), "{row}");
        assert!(row["duration_ms"].as_i64().is_some(), "{row}");
    }
    assert_eq!(row1["command"], "echo hello; echo oops >&2");
    assert_eq!(row1["prompt"], "greet");
    assert_eq!(row1["exit_code"], 0);
    assert_eq!(row1["stdout_bytes"], 6);
    assert_eq!(row1["stderr_bytes"], 5);
    assert_eq!(
        row1["stdout_sha256"],
        hex::encode(Sha256::digest(b"hello\n")).as_str()
    );
    assert_eq!(
        row1["stderr_sha256"],
        hex::encode(Sha256::digest(b"oops\n")).as_str()
    );
    assert_eq!(row2["command"], "exit 3");
    assert_eq!(
        row2["prompt"], "exit 3",
        "the prompt defaults to the command"
    );
    assert_eq!(row2["exit_code"], 3);

    let filtered = controller.run(&[
        "history", "--output", "json", "--limit", "1", "--agent", "hist",
    ]);
    assert_eq!(json_lines(&filtered).len(), 1);
    let table = controller.run(&["history"]);
    let table = text(&table.stdout);
    assert!(table.starts_with("SUBMITTED"), "{table}");
    assert!(table.contains("e2e-tester"), "{table}");

    // A job command without a target finds the agent in the history.
    let job = first["job_id"].as_str().expect("job id");
    let status = controller.run(&["status", job]);
    assert_eq!(status.status.code(), Some(0), "{}", show(&status));
    assert!(
        text(&status.stdout).contains("completed"),
        "{}",
        show(&status)
    );
}

#[test]
fn submit_status_logs_and_cancel() {
    let root = tempdir();
    let secret = gen_key();
    let agent = AgentSpec::new("ops", &secret).start(root.path());
    let controller = Controller::new(root.path(), &secret, &[Entry::of(&agent)]);

    let submitted = controller.run(&[
        "submit",
        "--agent",
        "ops",
        "--output",
        "json",
        "--",
        "echo one; sleep 1; echo two",
    ]);
    assert_eq!(submitted.status.code(), Some(0), "{}", show(&submitted));
    let object = &host_events(&submitted)[0];
    assert_eq!(object["status"], "submitted");
    let job = object["job_id"].as_str().expect("job id").to_string();

    let logs = controller.run(&["logs", "--follow", &job]);
    assert_eq!(logs.status.code(), Some(0), "{}", show(&logs));
    assert_eq!(text(&logs.stdout), "one\ntwo\n");

    let status = controller.run(&["status", "--agent", "ops", "--output", "json", &job]);
    let view: Value = json_lines(&status)[0]["job"].clone();
    assert_eq!(view["status"], "completed", "{view}");
    assert_eq!(view["result"]["stdout"], "one\ntwo\n");
    // `status` completed the history row `submit` left pending.
    let history = json_lines(&controller.run(&["history", "--output", "json"]));
    assert_eq!(history[0]["status"], "completed");
    assert_eq!(history[0]["exit_code"], 0);

    // Log frames as JSON: seq from 1, the final frame last; `--since` resumes after one.
    let frames = json_lines(&controller.run(&["logs", "--output", "json", &job]));
    let last = frames.last().expect("frames");
    assert_eq!(last["final"], true);
    assert_eq!(last["status"], "completed");
    assert_eq!(last["exit_code"], 0);
    assert_eq!(last["seq"], frames.len() as u64);
    let resumed = json_lines(&controller.run(&["logs", "--output", "json", "--since", "1", &job]));
    assert_eq!(resumed.len(), frames.len() - 1);
    assert_eq!(resumed[0]["seq"], 2);

    // A plain-text submit prints just the job id.
    let long = controller.run(&["submit", "--agent", "ops", "--", "sleep 120"]);
    assert_eq!(long.status.code(), Some(0), "{}", show(&long));
    let long_job = text(&long.stdout).trim().to_string();
    assert_eq!(long_job.len(), 36, "{}", show(&long));
    eventually(Duration::from_secs(30), "the job to run", || {
        let output = controller.run(&["status", "--output", "json", &long_job]);
        (json_lines(&output).first()?["job"]["status"] == "running").then_some(())
    });
    let cancel = controller.run(&["cancel", &long_job]);
    assert_eq!(cancel.status.code(), Some(0), "{}", show(&cancel));
    assert!(
        text(&cancel.stdout).contains("cancel requested"),
        "{}",
        show(&cancel)
    );
    let view = eventually(Duration::from_secs(30), "the job to end", || {
        let output = controller.run(&["status", "--output", "json", &long_job]);
        let view = json_lines(&output).first()?["job"].clone();
        (view["status"] == "failed").then_some(view)
    });
    assert_eq!(view["result"]["reason"], "cancelled");

    let list = controller.run(&["list", "--agent", "ops"]);
    assert_eq!(list.status.code(), Some(0), "{}", show(&list));
    assert!(text(&list.stdout).contains(&long_job), "{}", show(&list));
}

#[test]
fn json_output_is_one_object_per_host() {
    let root = tempdir();
    let secret = gen_key();
    let a = AgentSpec::new("json-a", &secret).start(root.path());
    let b = AgentSpec::new("json-b", &secret).start(root.path());
    let controller = Controller::new(root.path(), &secret, &[Entry::of(&a), Entry::of(&b)]);
    let output = controller.run(&[
        "run",
        "--all",
        "-o",
        "json",
        "--",
        "echo '{\"x\": 1}'; echo e >&2; exit 2",
    ]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let objects = host_events(&output);
    assert_eq!(objects.len(), 2);
    let summary = json_lines(&output).pop().expect("summary");
    assert_eq!(summary["event"], "summary");
    assert_eq!(summary["failed"], 2);
    for object in &objects {
        for key in [
            "agent",
            "url",
            "job_id",
            "status",
            "exit_code",
            "duration_ms",
            "stdout",
            "stderr",
        ] {
            assert!(object.get(key).is_some(), "{key} missing in {object}");
        }
        assert_eq!(object["status"], "completed");
        assert_eq!(object["exit_code"], 2);
        assert_eq!(object["stdout"], "{\"x\": 1}\n");
        assert_eq!(object["stderr"], "e\n");
    }
}

#[test]
fn usage_and_config_errors_exit_2() {
    let root = tempdir();
    let config = root.path().join("controller.yaml");
    std::fs::write(
        &config,
        "controller_id: c\nagents:\n  - name: a\n    url: https://a:1\n    lables: {}\n",
    )
    .expect("write");
    let output = run_bounded(
        {
            let mut command = std::process::Command::new(quickcmd_bin());
            command
                .arg("--config")
                .arg(&config)
                .args(["run", "--all", "--", "true"])
                .stdin(Stdio::null());
            command
        },
        Duration::from_secs(30),
    );
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let stderr = text(&output.stderr);
    assert!(stderr.contains("controller.yaml:5:"), "{stderr}");
    assert!(stderr.contains("lables"), "{stderr}");

    let mut command = std::process::Command::new(quickcmd_bin());
    command.args(["run", "--agent", "x"]);
    assert_eq!(
        run_bounded(command, Duration::from_secs(30)).status.code(),
        Some(2)
    );

    let completions = run_bounded(
        {
            let mut command = std::process::Command::new(quickcmd_bin());
            command.args(["completions", "bash"]);
            command
        },
        Duration::from_secs(30),
    );
    assert!(text(&completions.stdout).contains("quickcmd"));
    let man = run_bounded(
        {
            let mut command = std::process::Command::new(quickcmd_bin());
            command.arg("man");
            command
        },
        Duration::from_secs(30),
    );
    assert!(text(&man.stdout).contains(".TH quickcmd"), "{}", show(&man));
}

#[test]
fn insecure_warns_every_time_and_pinning_refuses_a_stranger() {
    let root = tempdir();
    let secret = gen_key();
    let agent = AgentSpec::new("pin", &secret).start(root.path());
    let stranger = AgentSpec::new("stranger", &secret).start(root.path());
    // The inventory pins `pin`'s certificate, but the URL leads to `stranger`.
    let controller = Controller::new(
        root.path(),
        &secret,
        &[Entry {
            url: &stranger.base,
            ..Entry::of(&agent)
        }],
    );
    let output = controller.run(&["run", "--agent", "pin", "--", "true"]);
    assert_eq!(output.status.code(), Some(255), "{}", show(&output));
    assert!(
        text(&output.stderr).contains("TLS error"),
        "{}",
        show(&output)
    );

    let insecure = controller.run(&["run", "--insecure", "--agent", "pin", "--", "echo anyway"]);
    assert_eq!(insecure.status.code(), Some(0), "{}", show(&insecure));
    assert!(
        text(&insecure.stderr).contains("warning: --insecure"),
        "{}",
        show(&insecure)
    );
    assert_eq!(text(&insecure.stdout), "anyway\n");
}
