//! Processes: the binaries cargo built, the [`TestAgent`] life cycle (start, restart, signal,
//! kill, wait for a log line), copying child streams, polling for a condition.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, ExitStatus, Output, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::{docker, tls, unique, PATIENCE};

/// The directory cargo put the binaries of this build in: the test executable lives in
/// `target/<profile>/deps/`, the binaries one level up.
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own executable");
    let deps = exe
        .parent()
        .expect("the test executable lives in a directory");
    if deps.ends_with("deps") {
        deps.parent().unwrap_or(deps).to_path_buf()
    } else {
        deps.to_path_buf()
    }
}

/// `$env_var`, else `name` in the target directory of this build; asserts it exists.
fn binary(env_var: &str, name: &str, build: &str) -> PathBuf {
    let path = match std::env::var_os(env_var) {
        Some(path) => PathBuf::from(path),
        None => target_dir().join(name),
    };
    assert!(
        path.is_file(),
        "the binary {} is missing: build it with `{build}` (or point {env_var} at one)",
        path.display()
    );
    path
}

/// `$QUICKCMD_AGENT_BIN`, else the `quickcmd-agent` cargo built beside this test (the
/// agent's own tests always have it; the controller's need `cargo build -p quickcmd-agent`
/// or a `cargo test` that includes the agent's tests).
pub fn agent_bin() -> PathBuf {
    binary(
        "QUICKCMD_AGENT_BIN",
        "quickcmd-agent",
        "cargo build -p quickcmd-agent",
    )
}

/// `$QUICKCMD_BIN`, else the `quickcmd` cargo built beside this test.
pub fn quickcmd_bin() -> PathBuf {
    binary("QUICKCMD_BIN", "quickcmd", "cargo build -p quickcmd")
}

/// A running `quickcmd-agent` process with its temp dir; stopped on drop.
pub struct TestAgent {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub config_path: PathBuf,
    /// The name the test gave (an inventory name for controller tests).
    pub name: String,
    /// The agent's `agent_id`: the name made unique on this Docker engine.
    pub agent_id: String,
    /// `https://127.0.0.1:<port>` of the current process.
    pub base: String,
    log_path: PathBuf,
    /// Send the process's stderr through a pipe (copied into the log file) rather than
    /// straight into the log file. Either way it is not a terminal.
    pub stderr_through_pipe: bool,
    child: Option<Child>,
    pub(crate) http: reqwest::Client,
    pub(crate) tls: Arc<rustls::ClientConfig>,
}

impl TestAgent {
    /// Writes the config and starts the agent; returns once it listens.
    pub fn start(name: &str, config: Config) -> TestAgent {
        let mut agent = TestAgent::prepare(name, config);
        agent.spawn();
        agent
    }

    /// Writes the config (temp dir, certificate, agent id) without starting the process,
    /// for tests that set up the data dir first; [`TestAgent::spawn`] starts it.
    pub fn prepare(name: &str, config: Config) -> TestAgent {
        docker::ensure_docker();
        let dir = tempfile::Builder::new()
            .prefix(&format!("quickcmd-it-{name}-"))
            .tempdir()
            .expect("temp dir");
        let cert = tls::test_cert();
        std::fs::write(dir.path().join("cert.pem"), &cert.cert_pem).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), &cert.key_pem).expect("write key");
        let mut agent = TestAgent {
            config_path: dir.path().join("agent-config.yaml"),
            log_path: dir.path().join("agent.log"),
            name: name.to_string(),
            agent_id: unique(&format!("it-{name}")),
            dir,
            config: config.clone(),
            base: String::new(),
            stderr_through_pipe: false,
            child: None,
            http: tls::http_client(),
            tls: tls::rustls_client(),
        };
        agent.write_config(config);
        agent
    }

    /// Rewrites the config file (the running process sees it after SIGHUP or a restart).
    pub fn write_config(&mut self, config: Config) {
        let text = config.render(&self.agent_id, self.dir.path());
        self.write_config_text(&text);
        self.config = config;
    }

    pub fn write_config_text(&self, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(&self.config_path, text).expect("write config");
        std::fs::set_permissions(&self.config_path, std::fs::Permissions::from_mode(0o600))
            .expect("chmod config");
    }

    pub fn config_text(&self) -> String {
        std::fs::read_to_string(&self.config_path).expect("read config")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The certificate the agent serves.
    pub fn cert_path(&self) -> PathBuf {
        self.config.tls_files(self.dir.path()).cert
    }

    /// The port of the current process.
    pub fn port(&self) -> u16 {
        self.base
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in {:?}", self.base))
    }

    /// Starts a (new) process on the same config and data dir.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the agent is already running");
        let log = self.open_log();
        let (stderr, piped_into) = if self.stderr_through_pipe {
            (Stdio::piped(), Some(log))
        } else {
            (Stdio::from(log), None)
        };
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn quickcmd-agent");
        if let (Some(stderr), Some(log)) = (child.stderr.take(), piped_into) {
            copy_into_log(stderr, log);
        }
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Keep reading to the end so the agent never writes into a closed pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    if let Some(url) = line.trim().strip_prefix("listening on ") {
                        assert!(
                            url.starts_with("https://127.0.0.1:"),
                            "unexpected listen line {line:?}"
                        );
                        self.base = url.to_string();
                        return;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.as_mut().and_then(|c| c.wait().ok());
                    self.child = None;
                    panic!(
                        "the agent exited ({status:?}) without listening; its log:\n{}",
                        self.log()
                    );
                }
            }
            if Instant::now() > deadline {
                panic!(
                    "the agent did not listen within 60 s; its log:\n{}",
                    self.log()
                );
            }
        }
    }

    fn open_log(&self) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open agent log")
    }

    /// `quickcmd-agent --config=<this agent's file>` without the secret from the
    /// environment, for a subcommand (`audit list`, `--check-config`, ...) to be added.
    pub fn cli(&self) -> Command {
        let mut command = Command::new(agent_bin());
        command
            .arg(format!("--config={}", self.config_path.display()))
            .env_remove("QUICKCMD_HMAC_SECRET");
        command
    }

    /// The serving command line (no subcommand), debug logging, stdin closed; stdout and
    /// stderr are the caller's to set.
    fn command(&self) -> Command {
        let mut command = self.cli();
        command
            .env("QUICKCMD_LOG", "info,quickcmd_agent=debug")
            .stdin(Stdio::null());
        command
    }

    /// Starts a process that is expected to refuse to serve: waits (up to `within`) for it
    /// to exit and returns its status; its stderr is in [`TestAgent::log`]. Panics if it
    /// starts listening or outlives `within` (it is killed first).
    pub fn spawn_expecting_exit(&mut self, within: Duration) -> ExitStatus {
        assert!(self.child.is_none(), "the agent is already running");
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::from(self.open_log()))
            .spawn()
            .expect("spawn quickcmd-agent");
        let stdout = drain(child.stdout.take().expect("piped stdout"));
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the agent did not exit within {within:?}; its log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let stdout = String::from_utf8_lossy(&stdout.join().unwrap_or_default()).into_owned();
        assert!(
            !stdout.contains("listening on"),
            "the agent listened although it should have refused to start: {stdout}; its \
             log:\n{}",
            self.log()
        );
        status
    }

    pub fn pid(&self) -> nix::unistd::Pid {
        let child = self.child.as_ref().expect("the agent is running");
        nix::unistd::Pid::from_raw(child.id() as i32)
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        nix::sys::signal::kill(self.pid(), signal).expect("signal the agent");
    }

    /// SIGKILL, as a crash would; waits for the process to be gone (its port then refuses
    /// connections).
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the process to exit by itself (e.g. after SIGTERM).
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let child = self.child.as_mut().expect("the agent is running");
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the agent did not exit; its log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().expect("try_wait").is_none(),
            None => false,
        }
    }

    /// Everything the agent wrote to stderr, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits until `needle` occurs at least `count` times in the agent's log.
    pub async fn wait_log(&self, needle: &str, count: usize) {
        let deadline = Instant::now() + PATIENCE;
        while self.log().matches(needle).count() < count {
            assert!(
                Instant::now() < deadline,
                "{needle:?} did not appear {count} time(s) in the log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        // A graceful stop first: the agent's drain kills and removes its sandboxes (a
        // SIGKILL now could leave a container the engine is still creating). Our idle
        // connections go first, so the agent need not wait for them to close (the tests run
        // on a multi-threaded runtime, whose workers close them while this thread waits).
        self.http = reqwest::Client::new();
        if let Some(child) = self.child.as_mut() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_ok() {
                let deadline = Instant::now() + Duration::from_secs(30);
                while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        self.kill9();
        docker::remove_agent_containers(&self.agent_id);
        if std::thread::panicking() {
            eprintln!("---- log of agent {} ----\n{}", self.agent_id, self.log());
        }
    }
}

/// Copies a child's stderr pipe into the log file as it arrives, until the pipe closes.
fn copy_into_log(mut from: ChildStderr, mut to: std::fs::File) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 8192];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// Reads a pipe to its end on a thread of its own (so the child never blocks on a full
/// pipe); the join handle gives the bytes.
pub fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

/// Runs a command with piped output; panics if it outlives `limit`.
pub fn run_bounded(mut command: Command, limit: Duration) -> Output {
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let stdout = drain(child.stdout.take().expect("stdout"));
    let stderr = drain(child.stderr.take().expect("stderr"));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{command:?} ran over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Polls `check` every 100 ms until it returns `Some`, or panics after `limit`.
pub fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Resident memory of a process in KiB (`VmRSS` in `/proc/<pid>/status`); `None` once it
/// is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}

impl TestAgent {
    /// The agent's resident memory in KiB, now.
    pub fn rss_kib(&self) -> u64 {
        let pid = self.pid().as_raw() as u32;
        rss_kib(pid).unwrap_or_else(|| panic!("no VmRSS for the agent (pid {pid})"))
    }
}
