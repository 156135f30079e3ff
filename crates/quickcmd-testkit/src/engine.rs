//! A private Docker engine for fault tests that stop and start it: its own socket, data
//! root, exec root (so its own containerd), pid file and network namespace, no bridge and
//! no iptables rules, so it touches nothing of the shared engine other tests use. Needs
//! root, `dockerd` and `unshare` (util-linux).
//!
//! The network namespace matters: `dockerd --bridge=none` deletes any `docker0` interface
//! it sees at start, and in the host's namespace that is the shared engine's bridge (every
//! `network: true` sandbox of every other test then fails to start).
//!
//! Dropping a [`PrivateEngine`] stops it, unmounts whatever it left mounted and removes its
//! directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{docker, unique, IMAGE, PATIENCE};

pub struct PrivateEngine {
    /// `/run/qc-fault-…`: socket, pid file, exec root, log.
    run_dir: PathBuf,
    /// `/var/lib/qc-fault-…`: images and containers.
    data_root: PathBuf,
    child: Option<Child>,
}

impl PrivateEngine {
    /// Starts a private `dockerd` and loads the sandbox image from the shared engine into it.
    pub fn start() -> PrivateEngine {
        docker::ensure_docker();
        // Short names: the containerd socket lives under the exec root and a unix socket
        // path must stay under 108 bytes.
        let name = unique("qc-fault");
        let mut engine = PrivateEngine {
            run_dir: PathBuf::from(format!("/run/{name}")),
            data_root: PathBuf::from(format!("/var/lib/{name}")),
            child: None,
        };
        std::fs::create_dir_all(&engine.run_dir).expect("create the private engine's run dir");
        engine.resume();
        let mut save = Command::new("docker")
            .args(["save", IMAGE])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run docker save");
        let load = Command::new("docker")
            .args(["-H", &engine.host(), "load"])
            .stdin(save.stdout.take().expect("docker save stdout"))
            .output()
            .expect("run docker load");
        let saved = save.wait().expect("wait for docker save");
        assert!(saved.success(), "docker save {IMAGE} failed ({saved})");
        assert!(
            load.status.success(),
            "loading {IMAGE} into the private engine failed: {}",
            String::from_utf8_lossy(&load.stderr)
        );
        engine
    }

    /// `unix:///run/qc-fault-…/docker.sock`, for `docker_host` and `docker -H`.
    pub fn host(&self) -> String {
        format!("unix://{}", self.run_dir.join("docker.sock").display())
    }

    /// Whether the engine answers a ping.
    pub fn answers(&self) -> bool {
        Command::new("docker")
            .args([
                "-H",
                &self.host(),
                "version",
                "--format",
                "{{.Server.Version}}",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts `dockerd` (again) on the same directories; returns once it answers.
    pub fn resume(&mut self) {
        assert!(
            self.child.is_none(),
            "the private engine is already running"
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.run_dir.join("dockerd.log"))
            .expect("open the private engine's log");
        // In a network namespace of its own: a `dockerd --bridge=none` deletes the host's
        // `docker0` at start, which would cut the shared engine's bridged containers off.
        let child = Command::new("unshare")
            .args(["--net", "--", "dockerd"])
            .arg(format!("--host={}", self.host()))
            .arg(format!("--data-root={}", self.data_root.display()))
            .arg(format!(
                "--exec-root={}",
                self.run_dir.join("exec").display()
            ))
            .arg(format!(
                "--pidfile={}",
                self.run_dir.join("docker.pid").display()
            ))
            .args([
                "--bridge=none",
                "--iptables=false",
                "--ip6tables=false",
                "--ip-masq=false",
                "--shutdown-timeout=2",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("clone log handle")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `unshare --net dockerd` for a private engine: {e}")
            });
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "the private engine did not answer; its log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stops `dockerd` as `systemctl stop docker` would (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while matches!(child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.wait();
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir.join("dockerd.log")).unwrap_or_default()
    }
}

/// Mount points at or below `root`, deepest first.
fn mounts_under(root: &Path) -> Vec<PathBuf> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut found: Vec<PathBuf> = table
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|point| point.starts_with(root))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found
}

impl Drop for PrivateEngine {
    fn drop(&mut self) {
        self.stop();
        // containerd and its shims were children of dockerd: stop any left behind in our
        // exec root (matched by that path on their command line, never by name).
        let exec = self.run_dir.join("exec");
        if let Ok(entries) = std::fs::read_dir("/proc") {
            for entry in entries.flatten() {
                let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                    continue;
                };
                let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
                let cmdline = String::from_utf8_lossy(&cmdline);
                if cmdline.contains(&*exec.to_string_lossy()) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
        }
        for root in [&self.data_root, &self.run_dir] {
            for point in mounts_under(root) {
                let _ = Command::new("umount")
                    .arg("-l")
                    .arg(&point)
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = std::fs::remove_dir_all(root);
        }
    }
}
