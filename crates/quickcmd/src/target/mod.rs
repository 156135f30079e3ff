//! Which agents a command talks to: `--agent URL|NAME`, `--group`, `--label key=value` and
//! `--all` against the inventory, and for each agent the controller id, secret and trust
//! that apply (the agent's own first, then the command line, then the config's defaults).

use std::path::PathBuf;

use crate::client::ClientError;
use crate::config::{parse_agent_url, ConfigError, ControllerConfig, InventoryAgent};
use crate::secret::{SecretError, SECRET_ENV};
use crate::tls::TlsError;

mod pattern;
mod resolve;

pub use pattern::{did_you_mean, is_pattern, HostPattern, LabelSelector};

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
    /// Names or patterns taken out of the selection (`--exclude`, or `-a '!PATTERN'`).
    pub exclude: Vec<String>,
}

impl TargetSelection {
    pub fn is_empty(&self) -> bool {
        self.agents.iter().all(|a| a.starts_with('!'))
            && self.groups.is_empty()
            && self.labels.is_empty()
            && !self.all
    }

    /// Whether exactly one host is named, by name or URL: the only selection that gives
    /// bare, ssh-like output.
    pub fn names_one_host(&self) -> bool {
        matches!(self.agents.as_slice(), [one] if !one.starts_with('!') && !is_pattern(one))
            && self.groups.is_empty()
            && self.labels.is_empty()
            && !self.all
            && self.exclude.is_empty()
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
    #[error("no target: give --agent URL|NAME|PATTERN, --group, --label or --all (an exclusion alone selects nothing)")]
    NoTargets,
    #[error(
        "unknown agent `{name}`: it is not a URL and not in the inventory ({source_desc}){hint}"
    )]
    UnknownAgent {
        name: String,
        source_desc: String,
        /// `; did you mean …?`, or empty.
        hint: String,
    },
    #[error("unknown group `{name}` ({source_desc}){hint}")]
    UnknownGroup {
        name: String,
        source_desc: String,
        hint: String,
    },
    #[error("{0}")]
    BadLabel(String),
    #[error("{0}")]
    BadPattern(String),
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

/// `; did you mean `a` or `b`?` for `given` among `known`, or empty.
fn hint<'a>(given: &str, known: impl IntoIterator<Item = &'a str>) -> String {
    let close = did_you_mean(given, known);
    if close.is_empty() {
        return String::new();
    }
    let quoted: Vec<String> = close.iter().map(|n| format!("`{n}`")).collect();
    format!("; did you mean {}?", quoted.join(" or "))
}

/// The inventory agents (or ad-hoc URLs) that `selection` names, in order, without
/// duplicates, less the exclusions. Does not read secrets.
pub fn select_agents(
    config: &ControllerConfig,
    selection: &TargetSelection,
) -> Result<Vec<InventoryAgent>, TargetError> {
    if selection.is_empty() {
        return Err(TargetError::NoTargets);
    }
    let mut excluded = Vec::new();
    for text in selection
        .exclude
        .iter()
        .map(String::as_str)
        .chain(selection.agents.iter().filter_map(|a| a.strip_prefix('!')))
    {
        excluded.push(HostPattern::parse(text).map_err(TargetError::BadPattern)?);
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
    let names = || config.agents.iter().map(|a| a.name.as_str());
    for given in selection.agents.iter().filter(|a| !a.starts_with('!')) {
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
        } else if is_pattern(given) {
            let pattern = HostPattern::parse(given).map_err(TargetError::BadPattern)?;
            let matching: Vec<&InventoryAgent> = config
                .agents
                .iter()
                .filter(|a| pattern.matches(&a.name))
                .collect();
            if matching.is_empty() {
                return Err(TargetError::NoMatch {
                    what: format!("--agent {given}"),
                    source_desc: config.describe_source(),
                });
            }
            matching.into_iter().cloned().for_each(&mut push);
        } else {
            return Err(TargetError::UnknownAgent {
                name: given.clone(),
                source_desc: config.describe_source(),
                hint: hint(given, names()),
            });
        }
    }
    for group in &selection.groups {
        if !config.agents.iter().any(|a| a.groups.contains(group)) {
            let groups: std::collections::BTreeSet<&str> = config
                .agents
                .iter()
                .flat_map(|a| a.groups.iter().map(String::as_str))
                .collect();
            return Err(TargetError::UnknownGroup {
                name: group.clone(),
                source_desc: config.describe_source(),
                hint: hint(group, groups),
            });
        }
    }
    if selection.all || !selection.groups.is_empty() || !selection.labels.is_empty() {
        let selectors = selection
            .labels
            .iter()
            .map(|label| LabelSelector::parse(label).map_err(TargetError::BadLabel))
            .collect::<Result<Vec<_>, _>>()?;
        let matching: Vec<&InventoryAgent> = config
            .agents
            .iter()
            .filter(|agent| {
                selection.groups.is_empty()
                    || agent.groups.iter().any(|g| selection.groups.contains(g))
            })
            .filter(|agent| selectors.iter().all(|s| s.matches(&agent.labels)))
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
    chosen.retain(|agent| !excluded.iter().any(|p| p.matches(&agent.name)));
    if chosen.is_empty() {
        return Err(TargetError::NoMatch {
            what: "the selection once the exclusions are taken out".into(),
            source_desc: config.describe_source(),
        });
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
            exclude: Vec::new(),
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
        check(sel(&["web-*"], &[], &[], false), &["web-1", "web-2"]);
        check(
            sel(&["web-[2-3]", "db-1"], &[], &[], false),
            &["web-2", "db-1"],
        );
        check(sel(&["!web-2"], &[], &[], true), &["web-1", "db-1"]);
        check(
            sel(&[], &[], &["env=prod,role!=db"], false),
            &["web-1", "db-1"],
        );
        check(sel(&[], &[], &["env!=prod"], false), &["web-2"]);
        check(
            TargetSelection {
                exclude: vec!["*-1".into()],
                ..sel(&[], &["web", "db"], &[], false)
            },
            &["web-2"],
        );
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
        let unknown = select_agents(
            &config,
            &TargetSelection {
                agents: vec!["web1".into()],
                ..TargetSelection::default()
            },
        )
        .expect_err("unknown");
        assert!(
            unknown
                .to_string()
                .contains("did you mean `web-1` or `web-2`?"),
            "{unknown}"
        );
        let group = select_agents(
            &config,
            &TargetSelection {
                groups: vec!["wbe".into()],
                ..TargetSelection::default()
            },
        )
        .expect_err("unknown group");
        assert!(group.to_string().contains("`web`?"), "{group}");
        for only_exclusions in [vec!["!web-1".to_string()], vec![]] {
            assert!(matches!(
                select_agents(
                    &config,
                    &TargetSelection {
                        agents: only_exclusions,
                        exclude: vec!["db-1".into()],
                        ..TargetSelection::default()
                    }
                ),
                Err(TargetError::NoTargets)
            ));
        }
        let bad_label = TargetSelection {
            labels: vec!["=novalue".into()],
            ..TargetSelection::default()
        };
        assert!(matches!(
            select_agents(&config, &bad_label),
            Err(TargetError::BadLabel(_))
        ));
        let no_match = TargetSelection {
            agents: vec!["cache-*".into()],
            ..TargetSelection::default()
        };
        assert!(matches!(
            select_agents(&config, &no_match),
            Err(TargetError::NoMatch { .. })
        ));
    }
}
