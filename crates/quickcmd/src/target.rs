//! Which agents a command talks to: `--agent URL|NAME`, `--group`, `--label key=value` and
//! `--all` against the inventory, and for each agent the controller id, secret and trust
//! that apply (the agent's own first, then the command line, then the config's defaults).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::client::{AgentEndpoint, Client, ClientError, ClientOptions};
use crate::config::{parse_agent_url, ConfigError, ControllerConfig, InventoryAgent};
use crate::secret::{read_secret_file, secret_from_env, Secret, SecretError, SECRET_ENV};
use crate::tls::{self, TlsError, Trust};

/// The target options of a command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TargetSelection {
    /// Inventory names or `https://` URLs.
    pub agents: Vec<String>,
    /// Agents in any of these groups.
    pub groups: Vec<String>,
    /// `key=value`; an agent must carry all of them.
    pub labels: Vec<String>,
    /// Every inventory agent (still narrowed by `groups` and `labels`).
    pub all: bool,
}

impl TargetSelection {
    pub fn is_empty(&self) -> bool {
        self.agents.is_empty() && self.groups.is_empty() && self.labels.is_empty() && !self.all
    }
}

/// Command-line settings that stand in for the config's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub controller_id: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub insecure: bool,
}

/// Why targets could not be resolved; all are usage or config errors.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("no target: give --agent URL|NAME, --group, --label or --all")]
    NoTargets,
    #[error("unknown agent `{name}`: it is not a URL and not in the inventory ({source_desc})")]
    UnknownAgent { name: String, source_desc: String },
    #[error("label `{0}` must look like key=value")]
    BadLabel(String),
    #[error("no inventory agent matches {what} ({source_desc})")]
    NoMatch { what: String, source_desc: String },
    #[error("no controller_id for agent `{agent}`: set controller_id in the config or pass --controller-id")]
    NoControllerId { agent: String },
    #[error("no HMAC secret for agent `{agent}`: set hmac_secret_file in the config (globally or for the agent), {SECRET_ENV}, or pass --hmac-secret-file")]
    NoSecret { agent: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The inventory agents (or ad-hoc URLs) that `selection` names, in order, without
/// duplicates. Does not read secrets.
pub fn select_agents(
    config: &ControllerConfig,
    selection: &TargetSelection,
) -> Result<Vec<InventoryAgent>, TargetError> {
    if selection.is_empty() {
        return Err(TargetError::NoTargets);
    }
    let mut chosen: Vec<InventoryAgent> = Vec::new();
    let mut push = |agent: InventoryAgent| {
        if !chosen
            .iter()
            .any(|c| c.name == agent.name || c.url == agent.url)
        {
            chosen.push(agent);
        }
    };
    for given in &selection.agents {
        if let Some(agent) = config.agent(given) {
            push(agent.clone());
        } else if given.contains("://") {
            let url = parse_agent_url(given).map_err(|message| ConfigError::ParseNoLocation {
                path: PathBuf::from("--agent"),
                message,
            })?;
            match config.agents.iter().find(|a| a.url == url) {
                Some(agent) => push(agent.clone()),
                None => push(InventoryAgent {
                    name: url_name(&url),
                    url,
                    labels: Default::default(),
                    groups: Vec::new(),
                    hmac_secret_file: None,
                    ca_cert: None,
                    controller_id: None,
                }),
            }
        } else {
            return Err(TargetError::UnknownAgent {
                name: given.clone(),
                source_desc: config.describe_source(),
            });
        }
    }
    if selection.all || !selection.groups.is_empty() || !selection.labels.is_empty() {
        let labels = selection
            .labels
            .iter()
            .map(|label| match label.split_once('=') {
                Some((key, value)) if !key.is_empty() => Ok((key, value)),
                _ => Err(TargetError::BadLabel(label.clone())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let matching: Vec<&InventoryAgent> = config
            .agents
            .iter()
            .filter(|agent| {
                selection.groups.is_empty()
                    || agent.groups.iter().any(|g| selection.groups.contains(g))
            })
            .filter(|agent| {
                labels
                    .iter()
                    .all(|(key, value)| agent.labels.get(*key).map(String::as_str) == Some(*value))
            })
            .collect();
        if matching.is_empty() {
            let mut what = Vec::new();
            if selection.all {
                what.push("--all".to_string());
            }
            what.extend(selection.groups.iter().map(|g| format!("--group {g}")));
            what.extend(selection.labels.iter().map(|l| format!("--label {l}")));
            return Err(TargetError::NoMatch {
                what: what.join(" "),
                source_desc: config.describe_source(),
            });
        }
        for agent in matching {
            push(agent.clone());
        }
    }
    Ok(chosen)
}

/// `host:port` (or `host`) as the name of an agent given by URL.
pub fn url_name(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("agent");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Resolves each selected agent's identity, secret and trust (blocking file reads; call
/// before the runtime or on the blocking pool). Files are read once each.
pub fn resolve_endpoints(
    config: &ControllerConfig,
    agents: &[InventoryAgent],
    overrides: &Overrides,
) -> Result<Vec<AgentEndpoint>, TargetError> {
    let mut secrets: HashMap<PathBuf, Secret> = HashMap::new();
    let mut pins: HashMap<PathBuf, Trust> = HashMap::new();
    let env_secret = secret_from_env()?;
    let mut endpoints = Vec::with_capacity(agents.len());
    for agent in agents {
        let index = config.agents.iter().position(|a| a.name == agent.name);
        let key = |field: &str| match index {
            Some(i) => format!("agents[{i}].{field}"),
            None => field.to_string(),
        };

        let controller_id = agent
            .controller_id
            .clone()
            .or_else(|| overrides.controller_id.clone())
            .or_else(|| config.controller_id.clone())
            .ok_or_else(|| TargetError::NoControllerId {
                agent: agent.name.clone(),
            })?;

        let secret = if let Some(path) = &agent.hmac_secret_file {
            load_secret(config, &key("hmac_secret_file"), path, &mut secrets)?
        } else if let Some(path) = &overrides.secret_file {
            load_secret_flag(path, &mut secrets)?
        } else if let Some(secret) = &env_secret {
            secret.clone()
        } else if let Some(path) = &config.hmac_secret_file {
            load_secret(config, "hmac_secret_file", path, &mut secrets)?
        } else {
            return Err(TargetError::NoSecret {
                agent: agent.name.clone(),
            });
        };

        let trust = if overrides.insecure {
            Trust::Insecure
        } else if let Some(path) = &agent.ca_cert {
            load_pin(config, Some(&key("ca_cert")), path, &mut pins)?
        } else if let Some(path) = &overrides.ca_cert {
            load_pin(config, None, path, &mut pins)?
        } else if let Some(path) = &config.ca_cert {
            load_pin(config, Some("ca_cert"), path, &mut pins)?
        } else {
            Trust::PublicRoots
        };

        endpoints.push(AgentEndpoint {
            name: agent.name.clone(),
            url: agent.url.clone(),
            controller_id,
            secret,
            trust,
        });
    }
    Ok(endpoints)
}

fn load_secret(
    config: &ControllerConfig,
    key: &str,
    path: &Path,
    cache: &mut HashMap<PathBuf, Secret>,
) -> Result<Secret, TargetError> {
    if let Some(secret) = cache.get(path) {
        return Ok(secret.clone());
    }
    let secret = read_secret_file(path).map_err(|error| config.invalid(key, error.to_string()))?;
    cache.insert(path.to_path_buf(), secret.clone());
    Ok(secret)
}

fn load_secret_flag(
    path: &Path,
    cache: &mut HashMap<PathBuf, Secret>,
) -> Result<Secret, TargetError> {
    if let Some(secret) = cache.get(path) {
        return Ok(secret.clone());
    }
    let secret = read_secret_file(path)?;
    cache.insert(path.to_path_buf(), secret.clone());
    Ok(secret)
}

fn load_pin(
    config: &ControllerConfig,
    key: Option<&str>,
    path: &Path,
    cache: &mut HashMap<PathBuf, Trust>,
) -> Result<Trust, TargetError> {
    if let Some(trust) = cache.get(path) {
        return Ok(trust.clone());
    }
    let trust = Trust::pinned_from_file(path).map_err(|error| match key {
        Some(key) => TargetError::Config(config.invalid(key, error.to_string())),
        None => TargetError::Tls(error),
    })?;
    cache.insert(path.to_path_buf(), trust.clone());
    Ok(trust)
}

/// Clients for `endpoints`, sharing one TLS config per distinct trust.
pub fn build_clients(
    endpoints: Vec<AgentEndpoint>,
    options: &ClientOptions,
) -> Result<Vec<Client>, TargetError> {
    let mut configs: HashMap<String, Arc<rustls::ClientConfig>> = HashMap::new();
    let mut clients = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        let key = match &endpoint.trust {
            Trust::PublicRoots => "public".to_string(),
            Trust::Insecure => "insecure".to_string(),
            Trust::Pinned { source, .. } => format!("pin:{}", source.display()),
        };
        let config = match configs.get(&key) {
            Some(config) => config.clone(),
            None => {
                let config = Arc::new(tls::client_config(&endpoint.trust)?);
                configs.insert(key, config.clone());
                config
            }
        };
        clients.push(Client::with_tls_config(endpoint, config, options.clone())?);
    }
    Ok(clients)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ControllerConfig {
        ControllerConfig::parse(
            Path::new("/nonexistent/controller.yaml"),
            "controller_id: ctl\n\
             agents:\n\
             \x20 - {name: web-1, url: 'https://10.0.0.1:8443', groups: [web], labels: {env: prod}}\n\
             \x20 - {name: web-2, url: 'https://10.0.0.2:8443', groups: [web], labels: {env: dev}}\n\
             \x20 - {name: db-1, url: 'https://10.0.0.3:8443', groups: [db], labels: {env: prod}, controller_id: ctl-db}\n",
        )
        .expect("config")
    }

    /// Selects and returns the chosen names.
    fn check(selection: TargetSelection, expected: &[&str]) {
        let names: Vec<String> = select_agents(&config(), &selection)
            .unwrap_or_else(|e| panic!("{selection:?}: {e}"))
            .into_iter()
            .map(|a| a.name)
            .collect();
        assert_eq!(names, expected, "{selection:?}");
    }

    #[test]
    fn selections() {
        let sel = |agents: &[&str], groups: &[&str], labels: &[&str], all: bool| TargetSelection {
            agents: agents.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            all,
        };
        check(sel(&["db-1"], &[], &[], false), &["db-1"]);
        check(sel(&[], &["web"], &[], false), &["web-1", "web-2"]);
        check(sel(&[], &[], &["env=prod"], false), &["web-1", "db-1"]);
        check(sel(&[], &["web"], &["env=prod"], false), &["web-1"]);
        check(sel(&[], &[], &[], true), &["web-1", "web-2", "db-1"]);
        check(sel(&["db-1"], &[], &[], true), &["db-1", "web-1", "web-2"]);
        check(
            sel(
                &["https://10.0.0.2:8443", "https://127.0.0.1:9"],
                &[],
                &[],
                false,
            ),
            &["web-2", "127.0.0.1:9"],
        );
        check(sel(&["web-1", "web-1"], &[], &[], false), &["web-1"]);
    }

    #[test]
    fn selection_errors() {
        let config = config();
        assert!(matches!(
            select_agents(&config, &TargetSelection::default()),
            Err(TargetError::NoTargets)
        ));
        let unknown = TargetSelection {
            agents: vec!["nope".into()],
            ..TargetSelection::default()
        };
        assert!(matches!(
            select_agents(&config, &unknown),
            Err(TargetError::UnknownAgent { .. })
        ));
        let bad_label = TargetSelection {
            labels: vec!["novalue".into()],
            ..TargetSelection::default()
        };
        assert!(matches!(
            select_agents(&config, &bad_label),
            Err(TargetError::BadLabel(_))
        ));
        let no_match = TargetSelection {
            groups: vec!["cache".into()],
            ..TargetSelection::default()
        };
        assert!(matches!(
            select_agents(&config, &no_match),
            Err(TargetError::NoMatch { .. })
        ));
    }

    #[test]
    fn per_agent_settings_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        let global = dir.path().join("global.secret");
        let own = dir.path().join("own.secret");
        std::fs::write(&global, "global-secret\n").expect("write");
        std::fs::write(&own, "own-secret\n").expect("write");
        let text = format!(
            "controller_id: ctl\nhmac_secret_file: {}\nagents:\n  - name: a\n    url: https://a:1\n  - name: b\n    url: https://b:1\n    hmac_secret_file: {}\n    controller_id: other\n",
            global.display(),
            own.display()
        );
        let config =
            ControllerConfig::parse(&dir.path().join("controller.yaml"), &text).expect("config");
        let agents = select_agents(
            &config,
            &TargetSelection {
                all: true,
                ..TargetSelection::default()
            },
        )
        .expect("select");
        let endpoints =
            resolve_endpoints(&config, &agents, &Overrides::default()).expect("resolve");
        assert_eq!(endpoints[0].secret.as_bytes(), b"global-secret");
        assert_eq!(endpoints[0].controller_id, "ctl");
        assert_eq!(endpoints[1].secret.as_bytes(), b"own-secret");
        assert_eq!(endpoints[1].controller_id, "other");
        assert!(matches!(endpoints[0].trust, Trust::PublicRoots));

        let overrides = Overrides {
            controller_id: Some("flag".into()),
            insecure: true,
            ..Overrides::default()
        };
        let endpoints = resolve_endpoints(&config, &agents, &overrides).expect("resolve");
        assert_eq!(endpoints[0].controller_id, "flag");
        assert_eq!(endpoints[1].controller_id, "other");
        assert!(matches!(endpoints[1].trust, Trust::Insecure));
    }

    #[test]
    fn missing_secret_file_names_key_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("controller.yaml");
        let text = "controller_id: ctl\nagents:\n  - name: a\n    url: https://a:1\n    hmac_secret_file: gone.secret\n";
        std::fs::write(&path, text).expect("write");
        let config = ControllerConfig::load(&path).expect("config");
        let agents = select_agents(
            &config,
            &TargetSelection {
                all: true,
                ..TargetSelection::default()
            },
        )
        .expect("select");
        let message = resolve_endpoints(&config, &agents, &Overrides::default())
            .expect_err("missing file")
            .to_string();
        assert!(message.contains("controller.yaml:5:"), "{message}");
        assert!(message.contains("agents[0].hmac_secret_file"), "{message}");
        assert!(message.contains("gone.secret"), "{message}");
    }

    #[test]
    fn error_lines_come_from_the_first_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("controller.yaml");
        let text = "controller_id: ctl\nca_cert: gone-ca.pem\nagents:\n  - name: a\n    url: https://a:1\n  - name: b\n    url: https://b:1\n    hmac_secret_file: gone.secret\n";
        std::fs::write(&path, text).expect("write");
        let config = ControllerConfig::load(&path).expect("config");
        // Gone after the read: the line numbers must not need the file again.
        std::fs::remove_file(&path).expect("remove");
        let agents = select_agents(
            &config,
            &TargetSelection {
                agents: vec!["b".into()],
                ..TargetSelection::default()
            },
        )
        .expect("select");
        let overrides = Overrides {
            secret_file: None,
            ..Overrides::default()
        };
        let message = resolve_endpoints(&config, &agents, &overrides)
            .expect_err("missing file")
            .to_string();
        assert!(message.contains("controller.yaml:8:"), "{message}");
        assert!(message.contains("agents[1].hmac_secret_file"), "{message}");
        assert_eq!(config.key_lines.get("ca_cert"), Some(&2));
    }
}
