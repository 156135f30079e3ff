//! End-to-end harness: real `quickcmd-agent` processes on loopback with real TLS (their
//! certificates made by `quickcmd agent gen-cert`) and real Docker, driven through the
//! real `quickcmd` binary. Nothing here is skipped: a missing agent binary, Docker or
//! sandbox image is a failure that says how to fix it.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

pub const CONTROLLER: &str = "controller-1";
pub const IMAGE: &str = "quickcmd-sandbox:latest";

/// The `quickcmd` binary under test.
pub fn quickcmd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_quickcmd"))
}

/// `$QUICKCMD_AGENT_BIN`, else `quickcmd-agent` beside the `quickcmd` binary.
pub fn agent_bin() -> PathBuf {
    let path = match std::env::var_os("QUICKCMD_AGENT_BIN") {
        Some(path) => PathBuf::from(path),
        None => quickcmd_bin()
            .parent()
            .expect("the binary lives in a target directory")
            .join("quickcmd-agent"),
    };
    assert!(
        path.is_file(),
        "the agent binary {} is missing: build it with `cargo build -p quickcmd-agent` \
         (or point QUICKCMD_AGENT_BIN at one)",
        path.display()
    );
    path
}

static PREFLIGHT: Once = Once::new();
static NEXT_AGENT: AtomicUsize = AtomicUsize::new(0);

/// Docker must answer and the sandbox image must exist.
pub fn preflight() {
    PREFLIGHT.call_once(|| {
        let docker = Command::new("docker")
            .args(["image", "inspect", IMAGE, "--format", "{{.Id}}"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker ({e}): run scripts/ensure-docker.sh"));
        assert!(
            docker.status.success(),
            "docker cannot find {IMAGE}: run scripts/ensure-docker.sh and \
             scripts/build-sandbox-image.sh ({})",
            String::from_utf8_lossy(&docker.stderr).trim()
        );
        agent_bin();
    });
}

/// A new random secret from `quickcmd agent gen-key`.
pub fn gen_key() -> String {
    let output = Command::new(quickcmd_bin())
        .args(["agent", "gen-key"])
        .output()
        .expect("run gen-key");
    assert!(output.status.success());
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}

/// One controller an agent knows.
#[derive(Clone, Debug)]
pub struct Grant {
    pub id: String,
    pub secret: String,
    pub scopes: Vec<String>,
}

/// What an agent is started with.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    pub agent_id: String,
    /// The global `hmac_secret` with `allowed_controllers: [controller-1]`, when set.
    pub secret: Option<String>,
    /// Per-controller secrets.
    pub controllers: Vec<Grant>,
    pub max_concurrent_jobs: u32,
}

impl AgentSpec {
    pub fn new(agent_id: &str, secret: &str) -> AgentSpec {
        AgentSpec {
            agent_id: agent_id.to_string(),
            secret: Some(secret.to_string()),
            controllers: Vec::new(),
            max_concurrent_jobs: 5,
        }
    }
}

/// A running agent process; killed when dropped.
pub struct Agent {
    /// The inventory name.
    pub name: String,
    /// The agent's own `agent_id` (the name made unique).
    pub agent_id: String,
    pub url: String,
    pub port: u16,
    pub cert: PathBuf,
    pub dir: PathBuf,
    child: Option<Child>,
}

impl Agent {
    /// Starts an agent under `root/<agent_id>` with a fresh certificate.
    pub fn start(root: &Path, spec: &AgentSpec) -> Agent {
        preflight();
        let dir = root.join(&spec.agent_id);
        let tls = dir.join("tls");
        std::fs::create_dir_all(dir.join("data")).expect("agent dir");
        let status = Command::new(quickcmd_bin())
            .args([
                "agent",
                "gen-cert",
                "--host",
                "127.0.0.1",
                "--host",
                "localhost",
                "--out",
            ])
            .arg(&tls)
            .stdout(Stdio::null())
            .status()
            .expect("run gen-cert");
        assert!(status.success(), "gen-cert failed");
        // Unique per process: an agent removes leftover containers of its own id at start,
        // and other test runs may be using this Docker engine at the same time.
        let agent_id = format!(
            "{}-{}-{}",
            spec.agent_id,
            std::process::id(),
            NEXT_AGENT.fetch_add(1, Ordering::SeqCst)
        );
        let mut yaml = format!(
            "port: 0\nbind_address: \"127.0.0.1\"\nagent_id: \"{id}\"\n\
             tls_cert_file: \"{cert}\"\ntls_key_file: \"{key}\"\n\
             allowed_images: [\"{IMAGE}\"]\ndefault_image: \"{IMAGE}\"\n\
             data_dir: \"{data}\"\naudit_db_path: \"{data}/agent-audit.db\"\n\
             max_concurrent_jobs: {jobs}\ndefault_timeout_seconds: 300\n",
            id = agent_id,
            cert = tls.join("agent-cert.pem").display(),
            key = tls.join("agent-key.pem").display(),
            data = dir.join("data").display(),
            jobs = spec.max_concurrent_jobs,
        );
        if let Some(secret) = &spec.secret {
            yaml.push_str(&format!(
                "hmac_secret: \"{secret}\"\nallowed_controllers: [\"{CONTROLLER}\"]\n"
            ));
        }
        if !spec.controllers.is_empty() {
            yaml.push_str("controllers:\n");
            for grant in &spec.controllers {
                yaml.push_str(&format!(
                    "  - id: \"{}\"\n    hmac_secret: \"{}\"\n    scopes: {:?}\n",
                    grant.id, grant.secret, grant.scopes
                ));
            }
        }
        let config = dir.join("agent.yaml");
        std::fs::write(&config, yaml).expect("write agent config");
        let log = std::fs::File::create(dir.join("agent.log")).expect("agent log");
        let mut child = Command::new(agent_bin())
            .arg(format!("--config={}", config.display()))
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start the agent");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("listening on ") {
                    let _ = sender.send(url.trim().to_string());
                }
            }
        });
        let url = match receiver.recv_timeout(Duration::from_secs(30)) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                let log = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
                panic!(
                    "agent {} did not print `listening on`:\n{log}",
                    spec.agent_id
                );
            }
        };
        let port = url
            .rsplit(':')
            .next()
            .and_then(|p| p.trim_end_matches('/').parse().ok())
            .unwrap_or_else(|| panic!("no port in {url}"));
        Agent {
            name: spec.agent_id.clone(),
            agent_id,
            url,
            port,
            cert: tls.join("agent-cert.pem"),
            dir,
            child: Some(child),
        }
    }

    /// Stops the agent (its port then refuses connections).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One inventory entry of a controller config.
pub struct Entry<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub cert: &'a Path,
    pub secret_file: Option<&'a Path>,
    pub controller_id: Option<&'a str>,
    pub groups: &'a [&'a str],
}

impl<'a> Entry<'a> {
    pub fn of(agent: &'a Agent) -> Entry<'a> {
        Entry {
            name: &agent.name,
            url: &agent.url,
            cert: &agent.cert,
            secret_file: None,
            controller_id: None,
            groups: &[],
        }
    }
}

/// A controller's world: its config, history and environment, in a temp directory.
pub struct Controller {
    pub root: PathBuf,
    pub config: PathBuf,
    pub history: PathBuf,
}

impl Controller {
    /// Writes `controller.yaml` with a default secret file holding `secret`.
    pub fn new(root: &Path, secret: &str, entries: &[Entry<'_>]) -> Controller {
        let dir = root.join("controller");
        std::fs::create_dir_all(&dir).expect("controller dir");
        let secret_file = write_secret(&dir, "default.secret", secret);
        let mut yaml = format!(
            "controller_id: {CONTROLLER}\nhmac_secret_file: {}\nagents:\n",
            secret_file.display()
        );
        for entry in entries {
            yaml.push_str(&format!(
                "  - name: {}\n    url: {}\n    ca_cert: {}\n",
                entry.name,
                entry.url,
                entry.cert.display()
            ));
            if let Some(file) = entry.secret_file {
                yaml.push_str(&format!("    hmac_secret_file: {}\n", file.display()));
            }
            if let Some(id) = entry.controller_id {
                yaml.push_str(&format!("    controller_id: {id}\n"));
            }
            if !entry.groups.is_empty() {
                yaml.push_str(&format!("    groups: {:?}\n", entry.groups));
            }
        }
        let config = dir.join("controller.yaml");
        std::fs::write(&config, yaml).expect("write controller config");
        Controller {
            history: dir.join("history.db"),
            root: dir,
            config,
        }
    }

    /// `quickcmd --config … --audit-db …` with a clean, known environment.
    pub fn command(&self) -> Command {
        let mut command = Command::new(quickcmd_bin());
        command
            .arg("--config")
            .arg(&self.config)
            .arg("--audit-db")
            .arg(&self.history)
            .env_remove("QUICKCMD_HMAC_SECRET")
            .env_remove("QUICKCMD_CONTROLLER_ID")
            .env_remove("QUICKCMD_CONFIG")
            .env_remove("RUST_LOG")
            .env("USER", "e2e-tester")
            .env("NO_COLOR", "1")
            .env("XDG_CONFIG_HOME", self.root.join("xdg-config"))
            .env("XDG_DATA_HOME", self.root.join("xdg-data"))
            .stdin(Stdio::null());
        command
    }

    /// Runs `quickcmd ARGS` to the end, bounded.
    pub fn run(&self, args: &[&str]) -> Output {
        let mut command = self.command();
        command.args(args);
        run_bounded(command, Duration::from_secs(120))
    }
}

pub fn write_secret(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).expect("write secret");
    // Secret files are owner-only, as the agent demands of its own.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod secret");
    path
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

fn drain(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        bytes
    })
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Describes an output for assertion messages.
pub fn show(output: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        output.status.code(),
        text(&output.stdout),
        text(&output.stderr)
    )
}

/// Parses each non-empty stdout line as JSON.
pub fn json_lines(output: &Output) -> Vec<serde_json::Value> {
    text(&output.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not JSON ({e}): {line}\n{}", show(output)))
        })
        .collect()
}

/// A loopback TCP proxy to `target` whose live connections can be cut at will; it keeps
/// accepting new ones.
pub struct CutProxy {
    pub port: u16,
    live: Arc<Mutex<Vec<TcpStream>>>,
    pub accepted: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl CutProxy {
    pub fn start(target_port: u16) -> CutProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let live: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (task_live, task_accepted, task_stop) = (live.clone(), accepted.clone(), stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if task_stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(upstream) = TcpStream::connect(("127.0.0.1", target_port)) else {
                    continue;
                };
                task_accepted.fetch_add(1, Ordering::SeqCst);
                {
                    let mut live = task_live.lock().expect("lock");
                    if let (Ok(a), Ok(b)) = (client.try_clone(), upstream.try_clone()) {
                        live.push(a);
                        live.push(b);
                    }
                }
                pipe(&client, &upstream);
                pipe(&upstream, &client);
            }
        });
        CutProxy {
            port,
            live,
            accepted,
            stop,
        }
    }

    /// Cuts every connection open now; returns how many sockets were cut.
    pub fn cut(&self) -> usize {
        let mut live = self.live.lock().expect("lock");
        for stream in live.iter() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let count = live.len();
        live.clear();
        count
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        // Wake the accept loop so it sees `stop`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn pipe(from: &TcpStream, to: &TcpStream) {
    let (Ok(mut from), Ok(mut to)) = (from.try_clone(), to.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
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
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
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
