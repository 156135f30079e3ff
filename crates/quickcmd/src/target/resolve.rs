//! For each selected agent, the controller id, secret and trust that apply — the agent's
//! own first, then the command line, then the config's defaults — and the clients built
//! from them. Each file is read once.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Overrides, TargetError};
use crate::client::{AgentEndpoint, Client, ClientOptions};
use crate::config::{ControllerConfig, InventoryAgent};
use crate::secret::{read_secret_file, secret_from_env, Secret};
use crate::tls::{self, Trust};

/// Where an agent's HMAC secret comes from, in order of precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// The agent's own `hmac_secret_file` in the inventory.
    AgentFile(PathBuf),
    /// `--hmac-secret-file`.
    FlagFile(PathBuf),
    /// `QUICKCMD_HMAC_SECRET`.
    Environment,
    /// The config's top-level `hmac_secret_file`.
    ConfigFile(PathBuf),
}

/// Whom we trust for an agent's certificate, in order of precedence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustSource {
    /// `--insecure`.
    Insecure,
    /// The agent's own `ca_cert` in the inventory.
    AgentCa(PathBuf),
    /// `--ca-cert`.
    FlagCa(PathBuf),
    /// The config's top-level `ca_cert`.
    ConfigCa(PathBuf),
    /// The public web PKI.
    PublicRoots,
}

/// The controller id `agent` is signed for: its own, the flag's, the config's.
pub fn controller_id_for(
    config: &ControllerConfig,
    agent: &InventoryAgent,
    overrides: &Overrides,
) -> Option<String> {
    agent
        .controller_id
        .clone()
        .or_else(|| overrides.controller_id.clone())
        .or_else(|| config.controller_id.clone())
}

/// Where `agent`'s secret comes from (reads nothing). `env_set`: whether
/// `QUICKCMD_HMAC_SECRET` is set.
pub fn secret_source(
    config: &ControllerConfig,
    agent: &InventoryAgent,
    overrides: &Overrides,
    env_set: bool,
) -> Option<SecretSource> {
    if let Some(path) = &agent.hmac_secret_file {
        Some(SecretSource::AgentFile(path.clone()))
    } else if let Some(path) = &overrides.secret_file {
        Some(SecretSource::FlagFile(path.clone()))
    } else if env_set {
        Some(SecretSource::Environment)
    } else {
        config
            .hmac_secret_file
            .clone()
            .map(SecretSource::ConfigFile)
    }
}

/// Whom we trust for `agent`'s certificate (reads nothing).
pub fn trust_source(
    config: &ControllerConfig,
    agent: &InventoryAgent,
    overrides: &Overrides,
) -> TrustSource {
    if overrides.insecure {
        TrustSource::Insecure
    } else if let Some(path) = &agent.ca_cert {
        TrustSource::AgentCa(path.clone())
    } else if let Some(path) = &overrides.ca_cert {
        TrustSource::FlagCa(path.clone())
    } else if let Some(path) = &config.ca_cert {
        TrustSource::ConfigCa(path.clone())
    } else {
        TrustSource::PublicRoots
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
        let controller_id = controller_id_for(config, agent, overrides).ok_or_else(|| {
            TargetError::NoControllerId {
                agent: agent.name.clone(),
            }
        })?;
        let secret = match secret_source(config, agent, overrides, env_secret.is_some()) {
            Some(SecretSource::AgentFile(path)) => {
                load_secret(config, &key("hmac_secret_file"), &path, &mut secrets)?
            }
            Some(SecretSource::FlagFile(path)) => load_secret_flag(&path, &mut secrets)?,
            Some(SecretSource::ConfigFile(path)) => {
                load_secret(config, "hmac_secret_file", &path, &mut secrets)?
            }
            Some(SecretSource::Environment) => match &env_secret {
                Some(secret) => secret.clone(),
                None => {
                    return Err(TargetError::NoSecret {
                        agent: agent.name.clone(),
                    })
                }
            },
            None => {
                return Err(TargetError::NoSecret {
                    agent: agent.name.clone(),
                })
            }
        };
        let trust = load_trust(config, agent, overrides, &mut pins)?;
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

/// Whom we trust for `agent`'s certificate, reading its pinned file if it has one.
pub fn trust_for(
    config: &ControllerConfig,
    agent: &InventoryAgent,
    overrides: &Overrides,
) -> Result<Trust, TargetError> {
    load_trust(config, agent, overrides, &mut HashMap::new())
}

fn load_trust(
    config: &ControllerConfig,
    agent: &InventoryAgent,
    overrides: &Overrides,
    pins: &mut HashMap<PathBuf, Trust>,
) -> Result<Trust, TargetError> {
    let key = |field: &str| match config.agents.iter().position(|a| a.name == agent.name) {
        Some(i) => format!("agents[{i}].{field}"),
        None => field.to_string(),
    };
    Ok(match trust_source(config, agent, overrides) {
        TrustSource::Insecure => Trust::Insecure,
        TrustSource::AgentCa(path) => load_pin(config, Some(&key("ca_cert")), &path, pins)?,
        TrustSource::FlagCa(path) => load_pin(config, None, &path, pins)?,
        TrustSource::ConfigCa(path) => load_pin(config, Some("ca_cert"), &path, pins)?,
        TrustSource::PublicRoots => Trust::PublicRoots,
    })
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
    use crate::target::{select_agents, TargetSelection};

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
        let message = resolve_endpoints(&config, &agents, &Overrides::default())
            .expect_err("missing file")
            .to_string();
        assert!(message.contains("controller.yaml:8:"), "{message}");
        assert!(message.contains("agents[1].hmac_secret_file"), "{message}");
        assert_eq!(config.key_lines.get("ca_cert"), Some(&2));
    }
}
