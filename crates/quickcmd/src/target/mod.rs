//! Which agents a command talks to: `--agent URL|NAME`, `--group`, `--label key=value` and
//! `--all` against the inventory, and for each agent the controller id, secret and trust
//! that apply (the agent's own first, then the command line, then the config's defaults).

use std::path::PathBuf;

use crate::client::ClientError;
use crate::config::{parse_agent_url, ConfigError, ControllerConfig, InventoryAgent};
use crate::secret::{SecretError, SECRET_ENV};
use crate::tls::TlsError;

mod resolve;

pub use resolve::{
    build_clients, controller_id_for, resolve_endpoints, secret_source, trust_for, trust_source,
    SecretSource, TrustSource,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

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
}
