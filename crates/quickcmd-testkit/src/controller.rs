//! The controller's world for end-to-end tests: agents described by an [`AgentSpec`] and
//! serving a certificate made by `quickcmd agent gen-cert`, a [`Controller`] config with its
//! inventory, and helpers to read what the `quickcmd` CLI printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use serde_json::json;

use crate::config::Config;
use crate::process::{quickcmd_bin, run_bounded, TestAgent};
use crate::tls::TlsFiles;
use crate::IMAGE;

/// The controller id end-to-end tests sign as (the agents' `allowed_controllers`).
pub const CONTROLLER: &str = "controller-1";

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

/// A certificate for 127.0.0.1 and localhost from `quickcmd agent gen-cert --out dir`.
pub fn gen_cert(dir: &Path) -> TlsFiles {
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
        .arg(dir)
        .stdout(Stdio::null())
        .status()
        .expect("run gen-cert");
    assert!(status.success(), "gen-cert failed");
    TlsFiles {
        cert: dir.join("agent-cert.pem"),
        key: dir.join("agent-key.pem"),
    }
}

/// One controller an agent knows with a secret of its own.
#[derive(Clone, Debug)]
pub struct Grant {
    pub id: String,
    pub secret: String,
    pub scopes: Vec<String>,
}

/// What an agent of an end-to-end test is started with.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// The inventory name (the agent's `agent_id` is this name made unique).
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

    /// The agent config this spec describes, serving `tls`.
    pub fn config(&self, tls: TlsFiles) -> Config {
        let mut config = Config::empty()
            .tls(tls)
            .set("default_image", json!(IMAGE))
            .set("max_concurrent_jobs", json!(self.max_concurrent_jobs))
            .set("default_timeout_seconds", json!(300));
        if let Some(secret) = &self.secret {
            config = config.shared_secret(secret).shared(&[CONTROLLER]);
        }
        for grant in &self.controllers {
            let scopes: Vec<&str> = grant.scopes.iter().map(String::as_str).collect();
            config = config.controller_with_secret(&grant.id, &grant.secret, &scopes);
        }
        config
    }

    /// Starts the agent on a fresh `gen-cert` certificate under `root/<name>/tls`.
    pub fn start(&self, root: &Path) -> TestAgent {
        let tls = gen_cert(&root.join(&self.agent_id).join("tls"));
        TestAgent::start(&self.agent_id, self.config(tls))
    }
}

/// One inventory entry of a controller config.
pub struct Entry<'a> {
    pub name: &'a str,
    pub url: &'a str,
    pub cert: PathBuf,
    pub secret_file: Option<&'a Path>,
    pub controller_id: Option<&'a str>,
    pub groups: &'a [&'a str],
}

impl<'a> Entry<'a> {
    pub fn of(agent: &'a TestAgent) -> Entry<'a> {
        Entry {
            name: &agent.name,
            url: &agent.base,
            cert: agent.cert_path(),
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

/// Writes `secret` and a newline to `dir/name`.
pub fn write_secret(dir: &Path, name: &str, secret: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{secret}\n")).expect("write secret");
    // Secret files are owner-only, as the agent demands of its own.
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod secret");
    path
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
