//! Exact bytes in and out (protocol v1.1) through the real `quickcmd` binary and real
//! agents on loopback (real TLS, real Docker): stdin is sent, output comes back byte for
//! byte (a tar archive both ways), `requested_by` is signed and shown everywhere, and
//! `health` tells a secret that works from one that does not.

use std::fs::File;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use quickcmd_testkit::*;

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

/// `command` with `stdin` read from the file at `path`, to the end.
fn with_stdin(mut command: Command, args: &[&str], path: &Path) -> Output {
    command
        .args(args)
        .stdin(File::open(path).expect("open stdin file"));
    run_bounded(command, Duration::from_secs(180))
}

/// `tar` on this host, in `dir`; panics when it fails.
fn local_tar(dir: &Path, args: &[&str]) -> Output {
    let output = Command::new("tar")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run tar");
    assert!(output.status.success(), "tar {args:?}: {}", show(&output));
    output
}

/// Every byte value, more than a pipe buffer.
fn binary_content() -> Vec<u8> {
    (0..=255u8).cycle().take(100_000).collect()
}

struct World {
    _root: tempfile::TempDir,
    dir: std::path::PathBuf,
    controller: Controller,
    _agents: Vec<TestAgent>,
    ok_1: String,
}

/// ok-1 and ok-2, and a wrong-key agent (another secret); the controller signs as
/// `ann@ops`.
fn world() -> World {
    let root = tempdir();
    let secret = gen_key();
    let ok1 = AgentSpec::new("ok-1", &secret).start(root.path());
    let ok2 = AgentSpec::new("ok-2", &secret).start(root.path());
    let wrong = AgentSpec::new("wrong-key", &gen_key()).start(root.path());
    let controller = Controller::new(
        root.path(),
        &secret,
        &[Entry::of(&ok1), Entry::of(&ok2), Entry::of(&wrong)],
    );
    let mut yaml = std::fs::read_to_string(&controller.config).expect("read config");
    yaml.push_str("requested_by: ann@ops\n");
    std::fs::write(&controller.config, yaml).expect("write config");
    World {
        dir: root.path().to_path_buf(),
        _root: root,
        controller,
        ok_1: ok1.name.clone(),
        _agents: vec![ok1, ok2, wrong],
    }
}

#[test]
fn tar_round_trip_stdin_scripts_and_binary_output() {
    let world = world();
    let c = &world.controller;
    let dir = &world.dir;

    // A directory with a binary file and a text file, archived here.
    let src = dir.join("src");
    std::fs::create_dir_all(src.join("sub")).expect("mkdir");
    std::fs::write(src.join("bin"), binary_content()).expect("write");
    std::fs::write(src.join("sub/notes.txt"), "héllo\n").expect("write");
    local_tar(dir, &["cf", "in.tar", "-C", "src", "."]);

    // In: `tar c dir | quickcmd run -a h -- tar x -C /work`; out: `tar c` back to us.
    let output = with_stdin(
        c.command(),
        &[
            "run",
            "-a",
            &world.ok_1,
            "--",
            "tar xf - -C /work && tar cf - -C /work .",
        ],
        &dir.join("in.tar"),
    );
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    std::fs::write(dir.join("out.tar"), &output.stdout).expect("write archive");
    let back = dir.join("back");
    std::fs::create_dir_all(&back).expect("mkdir");
    local_tar(dir, &["xf", "out.tar", "-C", "back"]);
    assert_eq!(
        std::fs::read(back.join("bin")).expect("bin came back"),
        binary_content()
    );
    assert_eq!(
        std::fs::read_to_string(back.join("sub/notes.txt")).expect("notes came back"),
        "héllo\n"
    );

    // `quickcmd run -a h -- sh < script.sh`.
    let script = dir.join("script.sh");
    std::fs::write(
        &script,
        "set -e\nname=world\necho \"hello $name\"\nprintf 'no newline at the end'",
    )
    .expect("write script");
    let output = with_stdin(
        c.command(),
        &["run", "-a", &world.ok_1, "--", "sh"],
        &script,
    );
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(text(&output.stdout), "hello world\nno newline at the end");

    // Bytes that are not UTF-8 are not turned into U+FFFD, on stdout and stderr.
    let output = c.run(&[
        "run",
        "-a",
        &world.ok_1,
        "--",
        "printf 'a\\377\\376\\000b'; printf '\\351' >&2",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert_eq!(output.stdout, b"a\xff\xfe\x00b");
    assert!(output.stderr.starts_with(b"\xe9"), "{}", show(&output));

    // The JSON event stream carries the same exact bytes: `data` when they are UTF-8,
    // else `data_b64`, never both.
    let output = c.run(&[
        "run",
        "-o",
        "json",
        "-a",
        &world.ok_1,
        "--",
        "printf 'a\\377\\376\\000b'; printf 'h\\303\\251' >&2",
    ]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let events = json_lines(&output);
    let stream_bytes = |stream: &str| -> Vec<u8> {
        let mut bytes = Vec::new();
        for event in events
            .iter()
            .filter(|e| e["event"] == "output" && e["stream"] == stream)
        {
            match (event["data"].as_str(), event["data_b64"].as_str()) {
                (Some(text), None) => bytes.extend_from_slice(text.as_bytes()),
                (None, Some(b64)) => bytes.extend(
                    base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .expect("data_b64 is base64"),
                ),
                _ => panic!("an output event has exactly one of data, data_b64: {event}"),
            }
        }
        bytes
    };
    assert_eq!(
        stream_bytes("stdout"),
        b"a\xff\xfe\x00b",
        "{}",
        show(&output)
    );
    assert_eq!(stream_bytes("stderr"), "hé".as_bytes(), "{}", show(&output));
    assert!(
        events
            .iter()
            .any(|e| e["stream"] == "stdout" && e.get("data_b64").is_some()),
        "{}",
        show(&output)
    );

    // -n sends nothing, like ssh: the command reads end of file at once.
    let output = with_stdin(
        c.command(),
        &["run", "-n", "-a", &world.ok_1, "--", "wc -c"],
        &script,
    );
    assert_eq!(text(&output.stdout).trim(), "0", "{}", show(&output));

    // Several targets get the same stdin.
    let size = std::fs::metadata(&script).expect("stat").len().to_string();
    let output = with_stdin(
        c.command(),
        &["run", "-a", "ok-1", "-a", "ok-2", "--", "wc -c"],
        &script,
    );
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let lines: Vec<String> = text(&output.stdout)
        .lines()
        .filter(|l| l.contains(" | "))
        .map(|l| l.split(" | ").nth(1).unwrap_or_default().trim().to_string())
        .collect();
    assert_eq!(lines, [size.clone(), size], "{}", show(&output));
}

#[test]
fn stdin_over_the_limit_is_refused_before_anything_is_sent() {
    let world = world();
    let c = &world.controller;
    let big = world.dir.join("big");
    std::fs::write(&big, vec![b'x'; 512 * 1024 + 1]).expect("write");
    let output = with_stdin(
        c.command(),
        &["run", "-a", &world.ok_1, "--", "wc -c"],
        &big,
    );
    assert_eq!(output.status.code(), Some(2), "{}", show(&output));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("standard input") && stderr.contains("512 KiB") && stderr.contains("-n"),
        "{stderr}"
    );
    let history = c.run(&["history", "-o", "json"]);
    assert!(json_lines(&history).is_empty(), "{}", show(&history));

    // Exactly the limit is sent.
    let at_limit = world.dir.join("at-limit");
    std::fs::write(&at_limit, vec![b'x'; 512 * 1024]).expect("write");
    let output = with_stdin(
        c.command(),
        &["run", "-a", &world.ok_1, "--", "wc -c"],
        &at_limit,
    );
    assert_eq!(text(&output.stdout).trim(), "524288", "{}", show(&output));
}

#[test]
fn requested_by_is_signed_and_shown_in_status_history_and_the_agent_audit() {
    let world = world();
    let c = &world.controller;
    let output = c.run(&["run", "-a", &world.ok_1, "--", "true"]);
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    let rows = json_lines(&c.run(&["history", "-o", "json"]));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["requested_by"], "ann@ops");
    let job_id = rows[0]["job_id"].as_str().expect("job id").to_string();

    let history = text(&c.run(&["history"]).stdout);
    assert!(history.contains("REQUESTED BY"), "{history}");
    assert!(history.contains("ann@ops"), "{history}");

    let status = c.run(&["status", "-a", &world.ok_1, &job_id]);
    assert!(
        text(&status.stdout).contains("requested by: ann@ops"),
        "{}",
        show(&status)
    );

    let agent = world
        ._agents
        .iter()
        .find(|a| a.name == world.ok_1)
        .expect("ok-1");
    let table = text(
        &agent
            .cli()
            .args(["audit", "list"])
            .output()
            .expect("audit list")
            .stdout,
    );
    assert!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.contains("REQUESTED BY")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.contains(&job_id) && l.contains("ann@ops")),
        "{table}"
    );

    // Without the key: <login>@<hostname>.
    let yaml = std::fs::read_to_string(&c.config)
        .expect("read")
        .replace("requested_by: ann@ops\n", "");
    std::fs::write(&c.config, yaml).expect("write");
    c.run(&["run", "-a", &world.ok_1, "--", "true"]);
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    let rows = json_lines(&c.run(&["history", "-o", "json", "--limit", "1"]));
    assert_eq!(
        rows[0]["requested_by"],
        format!("e2e-tester@{}", host.trim())
    );
}

#[test]
fn health_says_whether_the_secret_works_and_needs_none_for_liveness() {
    let world = world();
    let c = &world.controller;
    // No target: every inventory agent.
    let output = c.run(&["health"]);
    assert_eq!(output.status.code(), Some(1), "{}", show(&output));
    let table = text(&output.stdout);
    let line = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} in {table}"))
            .to_string()
    };
    assert!(
        line("ok-1").contains("healthy") && line("ok-1").contains(" ok "),
        "{table}"
    );
    assert!(line("ok-2").contains("healthy"), "{table}");
    assert!(
        line("wrong-key").contains("auth-failed") && line("wrong-key").contains("secret"),
        "{table}"
    );
    let json = json_lines(&c.run(&["health", "-o", "json", "-a", "wrong-key"]));
    assert_eq!(json[0]["healthy"], false);
    assert_eq!(json[0]["live"], true);

    // No secret at all: liveness only, and it says the secret was not checked.
    let agent = world
        ._agents
        .iter()
        .find(|a| a.name == world.ok_1)
        .expect("ok-1");
    let mut bare = Command::new(quickcmd_bin());
    bare.env_remove("QUICKCMD_HMAC_SECRET")
        .env_remove("QUICKCMD_CONFIG")
        .env("XDG_CONFIG_HOME", world.dir.join("none"))
        .env("NO_COLOR", "1")
        .args(["--ca-cert"])
        .arg(agent.cert_path())
        .args(["health", "-a", &agent.base]);
    let output = run_bounded(bare, Duration::from_secs(60));
    assert_eq!(output.status.code(), Some(0), "{}", show(&output));
    assert!(
        text(&output.stdout).contains("not checked (no secret)"),
        "{}",
        show(&output)
    );
}
