//! The Docker engine: present and answering, the sandbox image built, containers by label.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::IMAGE;

/// Fails (never skips) when Docker is missing; builds the sandbox image when it is absent.
pub fn ensure_docker() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        let version = Command::new("docker")
            .args(["version", "--format", "{{.Server.Version}}"])
            .output();
        match version {
            Err(error) => panic!(
                "these tests need Docker, but the `docker` client cannot be run ({error}); \
                 install and start it with scripts/ensure-docker.sh"
            ),
            Ok(out) if !out.status.success() => panic!(
                "these tests need Docker, but the Docker engine does not answer: {}; \
                 start it with scripts/ensure-docker.sh",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Ok(_) => {}
        }
        let present = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            let script =
                Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/build-sandbox-image.sh");
            let status = Command::new("bash")
                .arg(&script)
                .arg(IMAGE)
                .status()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                status.success(),
                "{} could not build the sandbox image {IMAGE} ({status})",
                script.display()
            );
        }
    });
}

/// Waits (up to 15 s) until no container matches `filter`. A job that ended by itself has
/// its stopped container removed just after its result is sent, so a check made the moment
/// the job turns final would race that removal; timeouts and cancels remove first.
pub fn assert_no_containers_soon(filter: &str) {
    let started = std::time::Instant::now();
    loop {
        let left = containers(filter);
        if left.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "containers matching {filter} outlived their job: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Ids of containers (running or not) matching a `docker ps` filter, e.g.
/// `label=quickcmd.job=<id>`.
pub fn containers(filter: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args(["ps", "-aq", "--filter", filter])
        .output()
        .expect("docker ps runs");
    assert!(
        out.status.success(),
        "docker ps --filter {filter} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Removes every container labelled with this agent id. Best effort and never a panic: it
/// runs inside `Drop`, after a test that failed half-way may have left sandboxes behind.
pub(crate) fn remove_agent_containers(agent_id: &str) {
    let listed = Command::new("docker")
        .args(["ps", "-aq", "--filter"])
        .arg(format!("label=quickcmd.agent={agent_id}"))
        .output();
    if let Ok(out) = listed {
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if !ids.is_empty() {
            let _ = Command::new("docker")
                .args(["rm", "-f"])
                .args(&ids)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
