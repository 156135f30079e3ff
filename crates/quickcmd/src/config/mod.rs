//! The controller's config file and agent inventory (`controller.yaml`): parsed strictly
//! into a raw serde shape, then checked into typed values. Every error names the file, the
//! key and, where one exists, the line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use reqwest::Url;
use serde::{Deserialize, Deserializer};

mod lines;

use lines::{
    line_of_key_from, line_with_key_and_value, nth_line_containing, nth_line_with_key_and_value,
    strip_location, top_level_line,
};

/// Why the config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "config file {} does not exist: create it with `quickcmd config init --config {}`, \
         or leave out --config and QUICKCMD_CONFIG",
        path.display(),
        path.display()
    )]
    Missing { path: PathBuf },
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{path}: {message}")]
    ParseNoLocation { path: PathBuf, message: String },
    #[error("{path}:{line}: `{key}`: {message}", line = line.map(|l| l.to_string()).unwrap_or_else(|| "?".into()))]
    Invalid {
        path: PathBuf,
        key: String,
        line: Option<usize>,
        message: String,
    },
}

/// `controller.yaml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    /// Our identity towards agents; each agent must allow it.
    #[serde(default, deserialize_with = "non_empty_controller_id")]
    controller_id: Option<String>,
    /// File holding the default HMAC secret (one line); `QUICKCMD_HMAC_SECRET` overrides it.
    #[serde(default)]
    hmac_secret_file: Option<PathBuf>,
    /// PEM file of certificates to pin for every agent without its own `ca_cert`.
    #[serde(default)]
    ca_cert: Option<PathBuf>,
    /// The controller's history database (SQLite).
    #[serde(default)]
    audit_db_path: Option<PathBuf>,
    /// Who jobs are signed for (`requested_by`, protocol v1.1); default `<login>@<hostname>`.
    #[serde(default)]
    requested_by: Option<String>,
    /// The inventory.
    #[serde(default)]
    agents: Vec<RawAgent>,
}

/// One inventory entry as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    /// Short name used on the command line and in output.
    name: String,
    /// `https://host:port` of the agent.
    url: String,
    /// Free-form `key: value` labels for `--label`.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Groups for `--group`.
    #[serde(default)]
    groups: Vec<String>,
    /// This agent's own secret file (the seed advises a secret per agent).
    #[serde(default)]
    hmac_secret_file: Option<PathBuf>,
    /// PEM certificates to pin for this agent.
    #[serde(default)]
    ca_cert: Option<PathBuf>,
    /// Controller id to present to this agent, when it differs from the global one.
    #[serde(default, deserialize_with = "non_empty_controller_id")]
    controller_id: Option<String>,
}

fn non_empty_controller_id<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(deserializer)?;
    match value {
        Some(text) if text.trim().is_empty() => Err(serde::de::Error::custom(
            "`controller_id` must not be empty",
        )),
        other => Ok(other),
    }
}

/// Whether `name` is usable as an agent name: 1–64 of `[A-Za-z0-9._-]`, not a URL.
pub fn is_valid_agent_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses an agent base URL: `https://host[:port][/]`, nothing after the path root.
pub fn parse_agent_url(text: &str) -> Result<Url, String> {
    let url = Url::parse(text).map_err(|e| format!("`{text}` is not a URL: {e}"))?;
    if url.scheme() != "https" {
        return Err(format!(
            "agent URL `{text}` must use https (agents only speak TLS)"
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("agent URL `{text}` has no host"));
    }
    if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
        return Err(format!(
            "agent URL `{text}` must be just scheme, host and port"
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(format!("agent URL `{text}` must not carry credentials"));
    }
    Ok(url)
}

/// One agent of the inventory, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct InventoryAgent {
    pub name: String,
    pub url: Url,
    pub labels: BTreeMap<String, String>,
    pub groups: Vec<String>,
    /// Absolute, or relative to the working directory.
    pub hmac_secret_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub controller_id: Option<String>,
}

/// The controller config, checked. Relative paths are resolved against the file's folder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControllerConfig {
    /// Where it came from; `None` when no file exists and defaults apply.
    pub path: Option<PathBuf>,
    pub controller_id: Option<String>,
    pub hmac_secret_file: Option<PathBuf>,
    pub ca_cert: Option<PathBuf>,
    pub audit_db_path: Option<PathBuf>,
    /// Who jobs are signed for; `None`: `<login>@<hostname>`.
    pub requested_by: Option<String>,
    pub agents: Vec<InventoryAgent>,
    /// The line of each file-valued key (`hmac_secret_file`, `agents[0].ca_cert`, …), taken
    /// from the one read of the file, for messages about files that fail to load later.
    pub key_lines: BTreeMap<String, usize>,
}

/// `$XDG_CONFIG_HOME/quickcmd/controller.yaml` (or `~/.config/...`).
pub fn default_config_path() -> Option<PathBuf> {
    xdg_dir("XDG_CONFIG_HOME", ".config").map(|dir| dir.join("quickcmd").join("controller.yaml"))
}

/// `$XDG_DATA_HOME/quickcmd/controller-audit.db` (or `~/.local/share/...`).
pub fn default_history_path() -> Option<PathBuf> {
    xdg_dir("XDG_DATA_HOME", ".local/share")
        .map(|dir| dir.join("quickcmd").join("controller-audit.db"))
}

fn xdg_dir(variable: &str, fallback_under_home: &str) -> Option<PathBuf> {
    match std::env::var_os(variable) {
        // The XDG spec says relative values are invalid and must be ignored.
        Some(value) if Path::new(&value).is_absolute() => Some(PathBuf::from(value)),
        _ => std::env::var_os("HOME")
            .filter(|home| !home.is_empty())
            .map(|home| PathBuf::from(home).join(fallback_under_home)),
    }
}

impl ControllerConfig {
    /// Reads and checks a config file (blocking).
    pub fn load(path: &Path) -> Result<ControllerConfig, ConfigError> {
        // A config file is small; refusing huge ones keeps a wrong path from being slurped.
        const MAX_CONFIG_BYTES: u64 = 4 * 1024 * 1024;
        let metadata = std::fs::metadata(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Missing {
                    path: path.to_path_buf(),
                }
            } else {
                ConfigError::Read {
                    path: path.to_path_buf(),
                    source,
                }
            }
        })?;
        if metadata.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::ParseNoLocation {
                path: path.to_path_buf(),
                message: format!("file is {} bytes, over the 4 MiB limit", metadata.len()),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        ControllerConfig::parse(path, &text)
    }

    /// Loads `explicit` if given (it must exist), else the default path if it exists, else
    /// an empty config.
    pub fn load_or_default(explicit: Option<&Path>) -> Result<ControllerConfig, ConfigError> {
        match explicit {
            Some(path) => ControllerConfig::load(path),
            None => match default_config_path() {
                Some(path) if path.exists() => ControllerConfig::load(&path),
                _ => Ok(ControllerConfig::default()),
            },
        }
    }

    /// Parses and checks config text; `path` is for messages and relative paths.
    pub fn parse(path: &Path, text: &str) -> Result<ControllerConfig, ConfigError> {
        let is_blank = text
            .lines()
            .all(|line| line.trim().is_empty() || line.trim_start().starts_with('#'));
        let raw: RawConfig = if is_blank {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|error| match error.location() {
                Some(location) => ConfigError::Parse {
                    path: path.to_path_buf(),
                    line: location.line(),
                    column: location.column(),
                    message: strip_location(&error.to_string()),
                },
                None => ConfigError::ParseNoLocation {
                    path: path.to_path_buf(),
                    message: error.to_string(),
                },
            })?
        };
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        let resolve =
            |p: Option<PathBuf>| p.map(|p| if p.is_absolute() { p } else { base.join(p) });

        let mut key_lines = BTreeMap::new();
        for (key, value) in [
            ("hmac_secret_file", &raw.hmac_secret_file),
            ("ca_cert", &raw.ca_cert),
            ("audit_db_path", &raw.audit_db_path),
        ] {
            if let Some(line) = value.as_ref().and_then(|_| top_level_line(text, key)) {
                key_lines.insert(key.to_string(), line);
            }
        }
        let mut seen_names = BTreeSet::new();
        let mut agents = Vec::with_capacity(raw.agents.len());
        let invalid = |key: String, line: Option<usize>, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            line,
            message,
        };
        for (index, agent) in raw.agents.into_iter().enumerate() {
            if !is_valid_agent_name(&agent.name) {
                return Err(invalid(
                    format!("agents[{index}].name"),
                    line_with_key_and_value(text, "name", &agent.name),
                    format!(
                        "agent name `{}` must be 1-64 characters of A-Z a-z 0-9 . _ -",
                        agent.name
                    ),
                ));
            }
            let url = parse_agent_url(&agent.url).map_err(|message| {
                invalid(
                    format!("agents[{index}].url"),
                    line_with_key_and_value(text, "url", &agent.url),
                    message,
                )
            })?;
            if !seen_names.insert(agent.name.clone()) {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: format!("agents[{index}].name"),
                    line: nth_line_with_key_and_value(text, "name", &agent.name, 2),
                    message: format!("agent name `{}` is used twice", agent.name),
                });
            }
            for (key, value) in &agent.labels {
                if key.is_empty() || key.contains('=') {
                    return Err(ConfigError::Invalid {
                        path: path.to_path_buf(),
                        key: format!("agents[{index}].labels"),
                        line: nth_line_containing(text, &format!("{key}:"), 1),
                        message: format!(
                            "label `{key}: {value}` needs a non-empty key without `=`"
                        ),
                    });
                }
            }
            let name_line = line_with_key_and_value(text, "name", &agent.name);
            for (field, value) in [
                ("hmac_secret_file", &agent.hmac_secret_file),
                ("ca_cert", &agent.ca_cert),
            ] {
                let line = value
                    .as_ref()
                    .and(name_line)
                    .and_then(|from| line_of_key_from(text, field, from));
                if let Some(line) = line {
                    key_lines.insert(format!("agents[{index}].{field}"), line);
                }
            }
            agents.push(InventoryAgent {
                name: agent.name,
                url,
                labels: agent.labels,
                groups: agent.groups,
                hmac_secret_file: resolve(agent.hmac_secret_file),
                ca_cert: resolve(agent.ca_cert),
                controller_id: agent.controller_id,
            });
        }
        if let Some(requested_by) = &raw.requested_by {
            if !quickcmd_protocol::is_valid_requested_by(requested_by) {
                return Err(ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key: "requested_by".into(),
                    line: top_level_line(text, "requested_by"),
                    message: format!(
                        "must be 1-{} printable characters (no control characters), e.g. \"ann@laptop\"",
                        quickcmd_protocol::MAX_REQUESTED_BY_CHARS
                    ),
                });
            }
        }
        Ok(ControllerConfig {
            path: Some(path.to_path_buf()),
            requested_by: raw.requested_by,
            controller_id: raw.controller_id,
            hmac_secret_file: resolve(raw.hmac_secret_file),
            ca_cert: resolve(raw.ca_cert),
            audit_db_path: resolve(raw.audit_db_path),
            agents,
            key_lines,
        })
    }

    /// The inventory entry called `name`.
    pub fn agent(&self, name: &str) -> Option<&InventoryAgent> {
        self.agents.iter().find(|agent| agent.name == name)
    }

    /// For messages: the file's path, or a note that none was read.
    pub fn describe_source(&self) -> String {
        match &self.path {
            Some(path) => path.display().to_string(),
            None => match default_config_path() {
                Some(path) => format!("no config file ({} does not exist)", path.display()),
                None => "no config file".to_string(),
            },
        }
    }

    /// An error about `key` of this config (a file-valued key that serde accepted but
    /// whose file fails later, say), at the line the key was read from.
    pub fn invalid(&self, key: &str, message: String) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.clone().unwrap_or_default(),
            key: key.to_string(),
            line: self.key_lines.get(key).copied(),
            message,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ControllerConfig, ConfigError> {
        ControllerConfig::parse(Path::new("/etc/q/controller.yaml"), text)
    }

    /// Asserts that `text` fails with a message containing each of `expected`.
    fn check_error(text: &str, expected: &[&str]) {
        let message = match parse(text) {
            Ok(config) => panic!("accepted: {config:?}"),
            Err(error) => error.to_string(),
        };
        for part in expected {
            assert!(message.contains(part), "`{message}` lacks `{part}`");
        }
    }

    #[test]
    fn full_config_parses_and_resolves_paths() {
        let config = parse(
            "controller_id: ctl-1\n\
             hmac_secret_file: secret\n\
             ca_cert: /pki/ca.pem\n\
             agents:\n\
             \x20 - name: web-1\n\
             \x20   url: https://10.0.0.1:8443\n\
             \x20   labels: {env: prod, role: web}\n\
             \x20   groups: [web, eu]\n\
             \x20   hmac_secret_file: web-1.secret\n\
             \x20 - name: db-1\n\
             \x20   url: https://db.example:8443/\n\
             \x20   controller_id: ctl-db\n",
        )
        .expect("valid config");
        assert_eq!(config.controller_id.as_deref(), Some("ctl-1"));
        assert_eq!(
            config.hmac_secret_file.as_deref(),
            Some(Path::new("/etc/q/secret"))
        );
        assert_eq!(config.ca_cert.as_deref(), Some(Path::new("/pki/ca.pem")));
        assert_eq!(config.agents.len(), 2);
        let web = config.agent("web-1").expect("web-1");
        assert_eq!(web.labels.get("env").map(String::as_str), Some("prod"));
        assert_eq!(web.groups, vec!["web", "eu"]);
        assert_eq!(
            web.hmac_secret_file.as_deref(),
            Some(Path::new("/etc/q/web-1.secret"))
        );
        assert_eq!(
            config
                .agent("db-1")
                .and_then(|a| a.controller_id.as_deref()),
            Some("ctl-db")
        );
    }

    #[test]
    fn empty_and_comment_only_files_are_empty_configs() {
        assert_eq!(parse("").expect("empty").agents.len(), 0);
        assert_eq!(parse("# nothing\n\n").expect("comments").agents.len(), 0);
    }

    #[test]
    fn errors_name_file_key_and_line() {
        check_error(
            "controller_id: c\nhmac_secret_fle: x\n",
            &["/etc/q/controller.yaml:2:", "hmac_secret_fle"],
        );
        check_error(
            "agents:\n  - name: a\n    url: https://a:1\n    lables: {}\n",
            &["controller.yaml:4:", "lables", "agents[0]"],
        );
        check_error(
            "agents:\n  - name: a\n    url: http://a:1\n",
            &["controller.yaml:3:", "agents[0].url", "must use https"],
        );
        check_error(
            "agents:\n  - name: a\n    url: https://a:1/api\n",
            &["controller.yaml:3:", "scheme, host and port"],
        );
        check_error(
            "agents:\n  - name: 'bad name'\n    url: https://a:1\n",
            &["controller.yaml:2:", "agents[0].name", "bad name"],
        );
        check_error(
            "agents:\n  - name: a\n    url: https://a:1\n  - name: a\n    url: https://b:1\n",
            &["controller.yaml:4:", "agents[1].name", "used twice"],
        );
        check_error(
            "agents:\n  - name: a\n    url: https://a:1\n    labels: {tier: [1]}\n",
            &["controller.yaml:4:", "labels"],
        );
        check_error(
            "controller_id: ''\n",
            &["controller.yaml:1:", "controller_id"],
        );
        check_error(
            "agents:\n  - url: https://a:1\n",
            &["controller.yaml:2:", "name"],
        );
        check_error("agents: [\n", &["controller.yaml:"]);
    }

    #[test]
    fn agent_url_rules() {
        for good in [
            "https://a:8443",
            "https://10.1.2.3:1/",
            "https://[::1]:8443",
        ] {
            assert!(parse_agent_url(good).is_ok(), "{good}");
        }
        for bad in [
            "a:8443",
            "https://",
            "https://u:p@a:1",
            "https://a:1/?x=1",
            "wss://a:1",
        ] {
            assert!(parse_agent_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn agent_names() {
        assert!(is_valid_agent_name("web-1.eu_a"));
        assert!(!is_valid_agent_name(""));
        assert!(!is_valid_agent_name("https://a"));
        assert!(!is_valid_agent_name(&"a".repeat(65)));
    }
}
