//! Harness for the agent's integration tests: each test starts the real `quickcmd-agent`
//! binary on 127.0.0.1 (port 0) with a fresh self-signed certificate, its own data dir and
//! agent id, against the real Docker engine, and talks to it as a controller would: signed
//! submits (reqwest over rustls, trusting only that certificate), signed reads, WebSocket
//! log streams (tokio-tungstenite over rustls). Dropping the handle stops the process (SIGTERM,
//! then SIGKILL) and removes any sandbox left with its agent id.
//!
//! Nothing here waits for a fixed time to pass before asserting: waits poll for a state and
//! only give up after a generous safety limit, with the agent's log in the panic message.
//! Tests run on a multi-threaded runtime so that dropping an [`Agent`] (a blocking graceful
//! stop) never starves the client's connection tasks.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own part of the harness

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use quickcmd_protocol::{sign, JobPayload, JobStatus, JobView, LogFrame, ReadAuth};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub const IMAGE: &str = "quickcmd-sandbox:latest";
/// The secret of controllers listed in `allowed_controllers` (the top-level `hmac_secret`).
pub const SHARED_SECRET: &str = "shared-secret-0123456789abcdef0123456789abcdef";
/// Longest any single wait may take before the test gives up (a hang guard, not a timing
/// assertion: every wait returns as soon as its condition holds).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// The per-controller secret the harness gives `id` when it is configured with its own.
pub fn own_secret(id: &str) -> String {
    format!("{id}-own-secret-0123456789abcdef0123456789abcdef")
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

/// A name no other test, run or engineer on this Docker engine uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

// ---------------------------------------------------------------------------------------
// Docker and the sandbox image

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

// ---------------------------------------------------------------------------------------
// TLS

struct TestCert {
    cert_pem: String,
    key_pem: String,
    cert_der: Vec<u8>,
}

/// One self-signed leaf certificate (not a CA) for 127.0.0.1 and localhost per test process.
fn test_cert() -> &'static TestCert {
    static CERT: OnceLock<TestCert> = OnceLock::new();
    CERT.get_or_init(|| {
        let certified =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".into()])
                .expect("rcgen makes a self-signed certificate");
        TestCert {
            cert_pem: certified.cert.pem(),
            key_pem: certified.signing_key.serialize_pem(),
            cert_der: certified.cert.der().to_vec(),
        }
    })
}

/// A rustls client config whose only trust anchor is the test certificate.
fn rustls_client() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            test_cert().cert_der.clone(),
        ))
        .expect("the test certificate is a valid trust anchor");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    Arc::new(config)
}

fn http_client() -> reqwest::Client {
    let cert = reqwest::Certificate::from_pem(test_cert().cert_pem.as_bytes())
        .expect("reqwest reads the test certificate");
    reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(cert)
        .no_proxy()
        .build()
        .expect("reqwest client builds")
}

// ---------------------------------------------------------------------------------------
// Config

/// The agent's YAML config, as values the test can change before (re)writing the file.
#[derive(Clone, Debug)]
pub struct Config {
    /// Controllers using the top-level `hmac_secret` ([`SHARED_SECRET`]).
    pub allowed_controllers: Vec<String>,
    /// Controllers with their own secret ([`own_secret`]) and scopes.
    pub controllers: Vec<(String, Vec<String>)>,
    /// Scopes of controllers that use the shared secret (listed under `controllers`
    /// without a secret of their own).
    pub shared_scopes: Vec<(String, Vec<String>)>,
    /// The top-level `hmac_secret`; [`SHARED_SECRET`] unless a test needs another.
    pub shared_secret: String,
    /// Any other key, as YAML/JSON values.
    pub extra: BTreeMap<String, Value>,
}

impl Default for Config {
    /// `ctl-a` and `ctl-b` with their own secrets and no scopes; the sandbox image is the
    /// local one; no warm pool.
    fn default() -> Config {
        Config {
            allowed_controllers: Vec::new(),
            controllers: vec![("ctl-a".into(), Vec::new()), ("ctl-b".into(), Vec::new())],
            shared_scopes: Vec::new(),
            shared_secret: SHARED_SECRET.to_string(),
            // These tests find a job's container by its `quickcmd.job` label and count an
            // agent's containers, which only cold containers allow; pool containers are
            // made before their job exists. `.set("warm_pool_size", …)` turns the pool on.
            extra: BTreeMap::from([("warm_pool_size".to_string(), Value::from(0))]),
        }
    }
}

impl Config {
    pub fn set(mut self, key: &str, value: Value) -> Config {
        self.extra.insert(key.to_string(), value);
        self
    }

    /// Adds (or replaces) a controller with its own secret and these scopes.
    pub fn controller(mut self, id: &str, scopes: &[&str]) -> Config {
        self.controllers.retain(|(c, _)| c != id);
        self.controllers.push((
            id.to_string(),
            scopes.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// Controllers that use the shared secret.
    pub fn shared(mut self, ids: &[&str]) -> Config {
        self.allowed_controllers = ids.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Grants scopes to a controller that uses the shared secret.
    pub fn shared_scopes(mut self, id: &str, scopes: &[&str]) -> Config {
        self.shared_scopes.retain(|(c, _)| c != id);
        self.shared_scopes.push((
            id.to_string(),
            scopes.iter().map(|s| s.to_string()).collect(),
        ));
        self
    }

    /// The secret a controller signs with under this config.
    pub fn secret_of(&self, id: &str) -> String {
        if self.controllers.iter().any(|(c, _)| c == id) {
            own_secret(id)
        } else {
            self.shared_secret.clone()
        }
    }

    fn render(&self, agent_id: &str, dir: &Path) -> String {
        let mut map = serde_json::Map::new();
        map.insert("agent_id".into(), json!(agent_id));
        map.insert("port".into(), json!(0));
        map.insert("bind_address".into(), json!("127.0.0.1"));
        map.insert(
            "tls_cert_file".into(),
            json!(dir.join("cert.pem").display().to_string()),
        );
        map.insert(
            "tls_key_file".into(),
            json!(dir.join("key.pem").display().to_string()),
        );
        map.insert(
            "data_dir".into(),
            json!(dir.join("data").display().to_string()),
        );
        map.insert("allowed_images".into(), json!([IMAGE]));
        map.insert("default_timeout_seconds".into(), json!(60));
        map.insert("shutdown_grace_seconds".into(), json!(2));
        if !self.allowed_controllers.is_empty() {
            map.insert("hmac_secret".into(), json!(self.shared_secret));
            map.insert(
                "allowed_controllers".into(),
                json!(self.allowed_controllers),
            );
        }
        let mut list: Vec<Value> = self
            .controllers
            .iter()
            .map(|(id, scopes)| json!({"id": id, "hmac_secret": own_secret(id), "scopes": scopes}))
            .collect();
        list.extend(
            self.shared_scopes
                .iter()
                .map(|(id, scopes)| json!({"id": id, "scopes": scopes})),
        );
        if !list.is_empty() {
            map.insert("controllers".into(), Value::Array(list));
        }
        for (key, value) in &self.extra {
            map.insert(key.clone(), value.clone());
        }
        serde_yaml::to_string(&Value::Object(map)).expect("a JSON map renders as YAML")
    }
}

// ---------------------------------------------------------------------------------------
// Payloads and bodies

/// A payload signed now, valid for ten minutes.
pub fn payload(controller_id: &str, job_id: &str, command: &str) -> JobPayload {
    let now = now();
    JobPayload {
        job_id: job_id.to_string(),
        prompt: "integration test".to_string(),
        command: command.to_string(),
        candidate_metadata: None,
        plugin_metadata: None,
        required_scopes: None,
        snapshot_metadata: String::new(),
        ttl: now + 600,
        timestamp: now,
        controller_id: controller_id.to_string(),
        sandbox: None,
    }
}

/// A JSON object literal as the protocol crate's value type (for the metadata fields).
pub fn object(text: &str) -> quickcmd_protocol::json::Value {
    quickcmd_protocol::json::parse(text.as_bytes())
        .expect("test metadata is JSON")
        .value
}

/// `{"payload": <payload_json>, "signature": {...}}` exactly as given.
pub fn body_from(payload_json: &str, signature: &str, algorithm: &str) -> String {
    format!(
        r#"{{"payload":{payload_json},"signature":{{"signature":"{signature}","algorithm":"{algorithm}"}}}}"#
    )
}

/// The body a controller sends: the payload's signed JSON and its HMAC under `secret`.
pub fn signed_body(payload: &JobPayload, secret: &str) -> String {
    let json = payload.to_signed_json().expect("test payloads serialize");
    let signature = sign::sign(secret.as_bytes(), json.as_bytes());
    body_from(&json, &signature, "HMAC-SHA256")
}

/// `body` with `needle` (which must occur exactly once) replaced by `replacement`.
pub fn replace_once(body: &str, needle: &str, replacement: &str) -> String {
    assert_eq!(
        body.matches(needle).count(),
        1,
        "{needle:?} must occur exactly once in {body}"
    );
    body.replacen(needle, replacement, 1)
}

// ---------------------------------------------------------------------------------------
// Answers

/// An HTTP answer, its body kept as text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text))
    }

    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }

    /// Asserts an error answer: this status, this code, a sentence in `error`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "expected {status} {code}, got {} {}",
            self.status,
            self.text
        );
        let body = self.json();
        assert!(
            body["error"].as_str().is_some_and(|s| !s.is_empty()),
            "error body lacks a sentence: {}",
            self.text
        );
    }

    /// Asserts `202 {"job_id", "status"}` and returns the status.
    #[track_caller]
    pub fn assert_accepted(&self, job_id: &str) -> String {
        assert_eq!(
            self.status, 202,
            "expected 202, got {} {}",
            self.status, self.text
        );
        let body = self.json();
        assert_eq!(body["job_id"], json!(job_id), "{}", self.text);
        body["status"]
            .as_str()
            .unwrap_or_else(|| panic!("202 without a status: {}", self.text))
            .to_string()
    }
}

// ---------------------------------------------------------------------------------------
// WebSocket

pub type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What a subscriber saw from connect to close.
#[derive(Debug)]
pub struct Transcript {
    pub frames: Vec<LogFrame>,
    /// The close frame, if the agent sent one.
    pub close: Option<CloseFrame>,
}

impl Transcript {
    /// The data of the non-final frames, concatenated in order.
    pub fn text(&self, stream: &str) -> String {
        self.frames
            .iter()
            .filter(|f| !f.is_final && f.stream.as_str() == stream)
            .map(|f| f.data.as_str())
            .collect()
    }

    /// Asserts the shape of a complete transcript: seq increasing by one from `first`, one
    /// final frame at the end (status, exit code), then a normal close.
    #[track_caller]
    pub fn assert_complete(&self, first: u64, status: JobStatus, exit_code: i64) {
        let seqs: Vec<u64> = self.frames.iter().map(|f| f.seq).collect();
        let expected: Vec<u64> = (first..first + self.frames.len() as u64).collect();
        assert_eq!(seqs, expected, "frames out of order: {:#?}", self.frames);
        let last = self.frames.last().expect("at least the final frame");
        assert!(last.is_final, "last frame is not final: {last:?}");
        assert_eq!(last.status, Some(status), "{last:?}");
        assert_eq!(last.exit_code, Some(exit_code), "{last:?}");
        assert_eq!(last.data, "", "{last:?}");
        assert_eq!(last.stream.as_str(), "stdout", "{last:?}");
        assert_eq!(
            self.frames.iter().filter(|f| f.is_final).count(),
            1,
            "more than one final frame"
        );
        let close = self.close.as_ref().expect("the agent closes the socket");
        assert_eq!(u16::from(close.code), 1000, "not a normal close: {close:?}");
    }
}

/// Reads the next log frame; `None` once the socket closed (the close frame is returned in
/// `close`).
pub async fn next_frame(ws: &mut Ws, close: &mut Option<CloseFrame>) -> Option<LogFrame> {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("the log stream went silent for too long");
        match message {
            Some(Ok(Message::Text(text))) => {
                return Some(
                    serde_json::from_str(text.as_str())
                        .unwrap_or_else(|e| panic!("frame is not a LogFrame ({e}): {text}")),
                );
            }
            Some(Ok(Message::Close(frame))) => {
                *close = frame;
                // Drain to the end so the closing handshake completes.
                while let Ok(Some(Ok(_))) =
                    tokio::time::timeout(Duration::from_secs(5), ws.next()).await
                {}
                return None;
            }
            Some(Ok(Message::Binary(_))) => panic!("the agent sent a binary message"),
            Some(Ok(_)) => continue,
            Some(Err(error)) => panic!("WebSocket error: {error}"),
            None => return None,
        }
    }
}

/// Reads frames until the agent closes the socket.
pub async fn read_to_close(mut ws: Ws) -> Transcript {
    let mut frames = Vec::new();
    let mut close = None;
    while let Some(frame) = next_frame(&mut ws, &mut close).await {
        frames.push(frame);
    }
    Transcript { frames, close }
}

// ---------------------------------------------------------------------------------------
// The agent process

/// A running `quickcmd-agent` process with its temp dir; killed on drop.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub config: Config,
    pub config_path: PathBuf,
    pub agent_id: String,
    /// `https://127.0.0.1:<port>` of the current process.
    pub base: String,
    log_path: PathBuf,
    /// Send the process's stderr through a pipe (copied into the log file) rather than
    /// straight into the log file. Either way it is not a terminal.
    pub stderr_through_pipe: bool,
    child: Option<Child>,
    http: reqwest::Client,
    tls: Arc<rustls::ClientConfig>,
}

impl Agent {
    /// Writes the config and starts the agent; returns once it listens.
    pub fn start(name: &str, config: Config) -> Agent {
        let mut agent = Agent::prepare(name, config);
        agent.spawn();
        agent
    }

    /// Writes the config (temp dir, certificate, agent id) without starting the process,
    /// for tests that set up the data dir first; [`Agent::spawn`] starts it.
    pub fn prepare(name: &str, config: Config) -> Agent {
        ensure_docker();
        let dir = tempfile::Builder::new()
            .prefix(&format!("quickcmd-it-{name}-"))
            .tempdir()
            .expect("temp dir");
        let cert = test_cert();
        std::fs::write(dir.path().join("cert.pem"), &cert.cert_pem).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), &cert.key_pem).expect("write key");
        let mut agent = Agent {
            config_path: dir.path().join("agent-config.yaml"),
            log_path: dir.path().join("agent.log"),
            agent_id: unique(&format!("it-{name}")),
            dir,
            config: config.clone(),
            base: String::new(),
            stderr_through_pipe: false,
            child: None,
            http: http_client(),
            tls: rustls_client(),
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

    pub fn audit_db(&self) -> PathBuf {
        self.data_dir().join("agent-audit.db")
    }

    /// Starts a (new) process on the same config and data dir.
    pub fn spawn(&mut self) {
        assert!(self.child.is_none(), "the agent is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open agent log");
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

    /// The serving command line (no subcommand), stdin closed; stdout and stderr are the
    /// caller's to set.
    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quickcmd-agent"));
        command
            .arg(format!("--config={}", self.config_path.display()))
            .env_remove("QUICKCMD_HMAC_SECRET")
            .env("QUICKCMD_LOG", "info,quickcmd_agent=debug")
            .stdin(Stdio::null());
        command
    }

    /// Starts a process that is expected to refuse to serve: waits (up to `within`) for it
    /// to exit and returns its status; its stderr is in [`Agent::log`]. Panics if it starts
    /// listening or outlives `within` (it is killed first).
    pub fn spawn_expecting_exit(&mut self, within: Duration) -> ExitStatus {
        assert!(self.child.is_none(), "the agent is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("open agent log");
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn quickcmd-agent");
        let stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut BufReader::new(stdout), &mut text);
            text
        });
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
        let stdout = reader.join().unwrap_or_default();
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

    /// SIGKILL, as a crash would; waits for the process to be gone.
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

    pub fn secret_of(&self, controller_id: &str) -> String {
        self.config.secret_of(controller_id)
    }

    /// The body `payload.controller_id` would send.
    pub fn body(&self, payload: &JobPayload) -> String {
        signed_body(payload, &self.secret_of(&payload.controller_id))
    }

    // ---- HTTP

    async fn reply(&self, response: reqwest::Result<reqwest::Response>) -> Reply {
        let response = response.unwrap_or_else(|e| {
            panic!(
                "request to the agent failed: {e:?}; its log:\n{}",
                self.log()
            )
        });
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("read answer body");
        Reply {
            status,
            headers,
            text,
        }
    }

    /// `POST /api/v1/jobs` with exactly these bytes.
    pub async fn post(&self, body: impl Into<Vec<u8>>) -> Reply {
        let response = self
            .http
            .post(format!("{}/api/v1/jobs", self.base))
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await;
        self.reply(response).await
    }

    /// Like `post`, but hands back transport errors (for racing a shutdown).
    pub async fn try_post(&self, body: String) -> Result<Reply, reqwest::Error> {
        let response = self
            .http
            .post(format!("{}/api/v1/jobs", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await?;
        Ok(Reply {
            status,
            headers,
            text,
        })
    }

    /// Submits `command` as `controller_id` under `job_id`; asserts 202.
    pub async fn submit(&self, controller_id: &str, job_id: &str, command: &str) -> String {
        let reply = self
            .post(self.body(&payload(controller_id, job_id, command)))
            .await;
        reply.assert_accepted(job_id)
    }

    /// A read request signed by `controller_id` with its configured secret.
    pub async fn read(&self, method: reqwest::Method, controller_id: &str, path: &str) -> Reply {
        let auth = ReadAuth::sign(
            controller_id,
            self.secret_of(controller_id).as_bytes(),
            method.as_str(),
            path.split('?').next().unwrap_or(path),
            now(),
        );
        self.request(method, path, Some(auth.header_value())).await
    }

    /// A request with this `Authorization` value (or none).
    pub async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        authorization: Option<String>,
    ) -> Reply {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        self.reply(request.send().await).await
    }

    pub async fn get_job(&self, controller_id: &str, job_id: &str) -> Reply {
        self.read(
            reqwest::Method::GET,
            controller_id,
            &format!("/api/v1/jobs/{job_id}"),
        )
        .await
    }

    pub async fn cancel(&self, controller_id: &str, job_id: &str) -> Reply {
        self.read(
            reqwest::Method::DELETE,
            controller_id,
            &format!("/api/v1/jobs/{job_id}"),
        )
        .await
    }

    /// `GET /api/v1/jobs/:id` as the job's own controller; asserts 200.
    pub async fn view(&self, controller_id: &str, job_id: &str) -> JobView {
        let reply = self.get_job(controller_id, job_id).await;
        assert_eq!(reply.status, 200, "GET {job_id}: {}", reply.text);
        serde_json::from_str(&reply.text)
            .unwrap_or_else(|e| panic!("GET {job_id} is not a JobView ({e}): {}", reply.text))
    }

    /// Polls the job until `done` holds for it.
    pub async fn wait_for(
        &self,
        controller_id: &str,
        job_id: &str,
        what: &str,
        done: impl Fn(&JobView) -> bool,
    ) -> JobView {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let view = self.view(controller_id, job_id).await;
            if done(&view) {
                return view;
            }
            assert!(
                Instant::now() < deadline,
                "job {job_id} never became {what} (last: {view:?}); agent log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_running(&self, controller_id: &str, job_id: &str) -> JobView {
        self.wait_for(controller_id, job_id, "running", |v| {
            v.status == JobStatus::Running
        })
        .await
    }

    /// Waits for the job to end; returns its view with the result.
    pub async fn wait_final(&self, controller_id: &str, job_id: &str) -> JobView {
        let view = self
            .wait_for(controller_id, job_id, "final", |v| v.status.is_final())
            .await;
        assert!(
            view.result.is_some(),
            "final job without a result: {view:?}"
        );
        view
    }

    pub async fn metrics(&self) -> String {
        let reply = self.request(reqwest::Method::GET, "/metrics", None).await;
        assert_eq!(reply.status, 200, "{}", reply.text);
        reply.text
    }

    // ---- WebSocket

    /// Opens `/api/v1/stream/<job_id>[?query]` with this `Authorization` value (or none).
    pub async fn ws_connect(
        &self,
        job_id: &str,
        query: &str,
        authorization: Option<String>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let base = self.base.replacen("https://", "wss://", 1);
        let url = if query.is_empty() {
            format!("{base}/api/v1/stream/{job_id}")
        } else {
            format!("{base}/api/v1/stream/{job_id}?{query}")
        };
        let mut request = url.into_client_request()?;
        if let Some(value) = authorization {
            request.headers_mut().insert(
                "authorization",
                value.parse().expect("authorization is a header value"),
            );
        }
        let connector = Connector::Rustls(self.tls.clone());
        let (ws, _) = tokio::time::timeout(
            PATIENCE,
            tokio_tungstenite::connect_async_tls_with_config(request, None, true, Some(connector)),
        )
        .await
        .expect("WebSocket connect hung")?;
        Ok(ws)
    }

    /// Subscribes as `controller_id` with the signed header; `since` resumes.
    pub async fn subscribe(&self, controller_id: &str, job_id: &str, since: Option<u64>) -> Ws {
        let auth = ReadAuth::sign(
            controller_id,
            self.secret_of(controller_id).as_bytes(),
            "GET",
            &format!("/api/v1/stream/{job_id}"),
            now(),
        );
        let query = since.map(|s| format!("since={s}")).unwrap_or_default();
        self.ws_connect(job_id, &query, Some(auth.header_value()))
            .await
            .unwrap_or_else(|e| panic!("subscribe to {job_id}: {e}; agent log:\n{}", self.log()))
    }

    // ---- Audit

    /// Every audit row, oldest first, through `quickcmd-agent audit list --json`.
    pub fn audit_rows(&self) -> Vec<Value> {
        let out = Command::new(env!("CARGO_BIN_EXE_quickcmd-agent"))
            .arg(format!("--config={}", self.config_path.display()))
            .args(["audit", "list", "--json", "--limit", "1000000"])
            .env_remove("QUICKCMD_HMAC_SECRET")
            .output()
            .expect("run quickcmd-agent audit list");
        assert!(
            out.status.success(),
            "audit list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line ({e}): {l}")))
            .collect()
    }

    /// Audit rows about one job, oldest first.
    pub fn audit_for(&self, job_id: &str) -> Vec<Value> {
        self.audit_rows()
            .into_iter()
            .filter(|r| r["job_id"] == json!(job_id))
            .collect()
    }

    /// The newest submission row.
    pub fn last_submission(&self) -> Value {
        self.audit_rows()
            .into_iter()
            .rev()
            .find(|r| r["kind"] == "submission")
            .expect("a submission row")
    }

    /// Asserts that the newest submission row is a refusal with this code, job id and
    /// controller (None: unknown, as for bodies that did not parse).
    #[track_caller]
    pub fn assert_refusal_audited(
        &self,
        code: &str,
        job_id: Option<&str>,
        controller_id: Option<&str>,
    ) -> Value {
        let row = self.last_submission();
        assert_eq!(row["accepted"], json!(false), "{row}");
        assert_eq!(row["code"], json!(code), "{row}");
        assert_eq!(row["job_id"], json!(job_id), "{row}");
        assert_eq!(row["controller_id"], json!(controller_id), "{row}");
        assert!(
            row["remote_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{row}"
        );
        row
    }

    /// Runs `quickcmd-agent audit verify`; returns (exit code, stdout + stderr).
    pub fn audit_verify(&self) -> (i32, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_quickcmd-agent"))
            .arg(format!("--config={}", self.config_path.display()))
            .args(["audit", "verify"])
            .env_remove("QUICKCMD_HMAC_SECRET")
            .output()
            .expect("run quickcmd-agent audit verify");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}

impl Drop for Agent {
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
        // A test that failed half-way may leave sandboxes behind; they carry our agent id.
        // Best effort, and never a panic inside drop.
        let listed = Command::new("docker")
            .args(["ps", "-aq", "--filter"])
            .arg(format!("label=quickcmd.agent={}", self.agent_id))
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
        if std::thread::panicking() {
            eprintln!("---- log of agent {} ----\n{}", self.agent_id, self.log());
        }
    }
}

/// Copies a child's stderr pipe into the log file as it arrives, until the pipe closes.
fn copy_into_log(mut from: std::process::ChildStderr, mut to: std::fs::File) {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
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

/// The value of a sample line `name value` (name may carry labels) in Prometheus text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let (key, value) = line.rsplit_once(' ')?;
        (key == name).then(|| value.parse().expect("metric value is a number"))
    })
}

/// SHA-256 hex, for comparing output hashes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
