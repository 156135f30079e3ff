//! `config init` (a commented starting `controller.yaml`) and `config show` (the config
//! in force, with every agent's resolved identity, secret source and trust). Secrets are
//! never printed; secret files are named, not read.

use std::path::{Path, PathBuf};

use anyhow::anyhow;
use serde_json::{json, Value};

use super::{failed, usage, CliResult, ConfigCommand, Context, GlobalArgs};
use crate::config::{default_config_path, ControllerConfig};
use crate::output::{errln, out, outln, table};
use crate::secret::SECRET_ENV;
use crate::target::{controller_id_for, secret_source, trust_source, SecretSource, TrustSource};

/// The file `config init` writes: every key, commented.
pub(super) const STARTING_CONFIG: &str = "\
# QuickCMD controller config (controller.yaml). Every key: docs/controller.md
# Relative paths are relative to this file's folder. Check it with `quickcmd config show`.

# Our identity towards agents; each agent must allow it (allowed_controllers, or a
# controllers: entry). --controller-id and QUICKCMD_CONTROLLER_ID override it.
controller_id: controller-1

# File holding the default HMAC secret: one line, e.g. `quickcmd agent gen-key > FILE`
# (mode 0600). QUICKCMD_HMAC_SECRET and --hmac-secret-file override it; an agent's own
# hmac_secret_file below wins over all of them.
hmac_secret_file: controller.secret

# PEM certificates to trust for agents without their own ca_cert: an agent's
# self-signed agent-cert.pem (from `quickcmd agent gen-cert`) or the CA that issued the
# agents' certificates. Without it, only publicly trusted certificates are accepted.
# ca_cert: agents-ca.pem

# The controller's history of what it ran (SQLite).
# Default: $XDG_DATA_HOME/quickcmd/controller-audit.db (~/.local/share/quickcmd/...).
# audit_db_path: /var/lib/quickcmd/controller-audit.db

# The inventory, for --agent NAME, --group GROUP, --label KEY=VALUE and --all.
agents: []
#  - name: web-1                     # 1-64 of A-Z a-z 0-9 . _ -
#    url: https://10.0.0.11:8443     # https, host and port only
#    groups: [web, eu]               # --group web matches any of them
#    labels: {env: prod, role: web}  # --label env=prod matches all given
#    hmac_secret_file: web-1.secret  # this agent's own secret (one per agent is best)
#    ca_cert: web-1-cert.pem         # this agent's own certificate, pinned
#    controller_id: ops-controller   # when this agent knows us under another id
";

pub(super) fn config(global: GlobalArgs, command: ConfigCommand) -> CliResult {
    match command {
        ConfigCommand::Init { force, stdout } => init(&global, force, stdout),
        ConfigCommand::Show => show(global),
    }
}

fn init(global: &GlobalArgs, force: bool, stdout: bool) -> CliResult {
    if stdout {
        out!("{STARTING_CONFIG}");
        return Ok(0);
    }
    let path = match global.config.clone().or_else(default_config_path) {
        Some(path) => path,
        None => {
            return Err(usage(anyhow!(
                "no config path: pass --config FILE, or set HOME or XDG_CONFIG_HOME"
            )))
        }
    };
    if path.exists() && !force {
        return Err(usage(anyhow!(
            "{} already exists; pass --force to replace it, or --stdout to print a \
             starting file",
            path.display()
        )));
    }
    write_private(&path, STARTING_CONFIG)
        .map_err(|e| failed(anyhow!("cannot write {}: {e}", path.display())))?;
    errln!(
        "quickcmd: wrote {}; edit it, then check it with `quickcmd config show`",
        path.display()
    );
    Ok(0)
}

/// Writes `text` to `path` (mode 0600, folder 0700 when created).
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

fn show(global: GlobalArgs) -> CliResult {
    let config = ControllerConfig::load_or_default(global.config.as_deref()).map_err(usage)?;
    let context = Context::with_config(global, config)?;
    let overrides = context.overrides();
    let config = &context.config;
    let env_secret = std::env::var_os(SECRET_ENV).is_some();
    let history = context.history_path().ok();

    let agents: Vec<Value> = config
        .agents
        .iter()
        .map(|agent| {
            json!({
                "name": agent.name,
                "url": agent.url.as_str(),
                "groups": agent.groups,
                "labels": agent.labels,
                "controller_id": controller_id_for(config, agent, &overrides),
                "secret": secret_json(secret_source(config, agent, &overrides, env_secret)),
                "trust": trust_json(&trust_source(config, agent, &overrides)),
            })
        })
        .collect();
    let defaults = json!({
        "controller_id": overrides.controller_id.clone().or_else(|| config.controller_id.clone()),
        "hmac_secret_file": config.hmac_secret_file,
        "hmac_secret_flag": overrides.secret_file,
        "hmac_secret_env": env_secret,
        "ca_cert": overrides.ca_cert.clone().or_else(|| config.ca_cert.clone()),
        "insecure": overrides.insecure,
    });
    if context.json() {
        outln!(
            "{}",
            json!({
                "config_file": config.path,
                "config_source": config.describe_source(),
                "history_db": history,
                "connect_timeout_seconds": context.global.connect_timeout.as_secs(),
                "retries": context.global.retries,
                "defaults": defaults,
                "agents": agents,
            })
        );
        return Ok(0);
    }
    let shown = |path: &Option<PathBuf>| {
        path.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "-".into())
    };
    let default_secret = match (&overrides.secret_file, env_secret, &config.hmac_secret_file) {
        (Some(path), _, _) => format!("file {} (--hmac-secret-file)", named(path)),
        (None, true, _) => format!("[redacted] (from {SECRET_ENV})"),
        (None, false, Some(path)) => format!("file {} (hmac_secret_file)", named(path)),
        (None, false, None) => "none".into(),
    };
    let mut lines = vec![
        ("config file", config.describe_source()),
        (
            "controller_id",
            overrides
                .controller_id
                .clone()
                .or_else(|| config.controller_id.clone())
                .unwrap_or_else(|| "none".into()),
        ),
        ("secret", default_secret),
        (
            "ca_cert",
            if overrides.insecure {
                "none: --insecure (any certificate)".into()
            } else {
                overrides
                    .ca_cert
                    .clone()
                    .or_else(|| config.ca_cert.clone())
                    .map(|p| named(&p))
                    .unwrap_or_else(|| "none (public roots)".into())
            },
        ),
        ("history db", shown(&history)),
        (
            "connect",
            format!(
                "timeout {}s, {} retries",
                context.global.connect_timeout.as_secs(),
                context.global.retries
            ),
        ),
    ];
    lines.push(("agents", config.agents.len().to_string()));
    for (label, value) in lines {
        outln!("{:<14} {value}", format!("{label}:"));
    }
    if !config.agents.is_empty() {
        let rows: Vec<Vec<String>> = config
            .agents
            .iter()
            .map(|agent| {
                let labels: Vec<String> = agent
                    .labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                vec![
                    agent.name.clone(),
                    agent.url.to_string(),
                    or_dash(agent.groups.join(",")),
                    or_dash(labels.join(",")),
                    controller_id_for(config, agent, &overrides).unwrap_or_else(|| "NONE".into()),
                    secret_text(secret_source(config, agent, &overrides, env_secret)),
                    trust_text(&trust_source(config, agent, &overrides)),
                ]
            })
            .collect();
        out!(
            "\n{}",
            table(
                &[
                    "NAME",
                    "URL",
                    "GROUPS",
                    "LABELS",
                    "CONTROLLER ID",
                    "SECRET",
                    "TRUST"
                ],
                &rows,
                None
            )
        );
    }
    Ok(0)
}

/// A file's path, marked when it does not exist (checked, never read).
fn named(path: &Path) -> String {
    if path.exists() {
        path.display().to_string()
    } else {
        format!("{} [missing]", path.display())
    }
}

fn or_dash(text: String) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text
    }
}

fn secret_text(source: Option<SecretSource>) -> String {
    match source {
        Some(SecretSource::AgentFile(path)) => format!("{} (own)", named(&path)),
        Some(SecretSource::FlagFile(path)) => format!("{} (--hmac-secret-file)", named(&path)),
        Some(SecretSource::Environment) => format!("[redacted] ({SECRET_ENV})"),
        Some(SecretSource::ConfigFile(path)) => format!("{} (default)", named(&path)),
        None => "NONE".into(),
    }
}

fn secret_json(source: Option<SecretSource>) -> Value {
    match source {
        Some(SecretSource::AgentFile(path)) => json!({"source": "agent", "file": path}),
        Some(SecretSource::FlagFile(path)) => json!({"source": "flag", "file": path}),
        Some(SecretSource::Environment) => json!({"source": "environment", "variable": SECRET_ENV}),
        Some(SecretSource::ConfigFile(path)) => json!({"source": "config", "file": path}),
        None => Value::Null,
    }
}

fn trust_text(source: &TrustSource) -> String {
    match source {
        TrustSource::Insecure => "any (--insecure)".into(),
        TrustSource::AgentCa(path) => format!("{} (own)", named(path)),
        TrustSource::FlagCa(path) => format!("{} (--ca-cert)", named(path)),
        TrustSource::ConfigCa(path) => format!("{} (default)", named(path)),
        TrustSource::PublicRoots => "public roots".into(),
    }
}

fn trust_json(source: &TrustSource) -> Value {
    match source {
        TrustSource::Insecure => json!({"source": "insecure"}),
        TrustSource::AgentCa(path) => json!({"source": "agent", "file": path}),
        TrustSource::FlagCa(path) => json!({"source": "flag", "file": path}),
        TrustSource::ConfigCa(path) => json!({"source": "config", "file": path}),
        TrustSource::PublicRoots => json!({"source": "public_roots"}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starting_file_is_a_valid_config() {
        let config = ControllerConfig::parse(Path::new("/etc/q/controller.yaml"), STARTING_CONFIG)
            .expect("the starting file parses");
        assert_eq!(config.controller_id.as_deref(), Some("controller-1"));
        assert_eq!(
            config.hmac_secret_file.as_deref(),
            Some(Path::new("/etc/q/controller.secret"))
        );
        assert!(config.agents.is_empty());
        // With the example agent uncommented, it still parses.
        let uncommented = STARTING_CONFIG
            .replace("agents: []", "agents:")
            .replace("\n#  - name", "\n  - name")
            .replace("\n#    ", "\n    ");
        let config = ControllerConfig::parse(Path::new("/etc/q/controller.yaml"), &uncommented)
            .expect("the example agent parses");
        assert_eq!(config.agents.len(), 1);
        assert_eq!(config.agents[0].name, "web-1");
    }
}
