//! Agent configuration: a raw serde struct mirroring the YAML (unknown keys refused), then
//! validation into typed values. Defaults live in `raw.rs`; every error names the file,
//! the key and, where the YAML parser knows it, the line.

mod checks;
mod raw;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Each warm container is a started container on the host; a pool larger than this is a typo.
const MAX_WARM_POOL_SIZE: usize = 64;

pub use checks::ConnectionLimits;
pub use raw::RawConfig;

pub use quickcmd_protocol::Secret;

/// Why a config file was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path}{line}: {message}")]
    Parse {
        path: PathBuf,
        line: String,
        message: String,
    },
    #[error("config file {path}: key `{key}`{line}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        line: String,
        message: String,
    },
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// A controller allowed to submit jobs, with its secret and granted scopes.
#[derive(Debug, Clone, PartialEq)]
pub struct ControllerGrant {
    pub id: String,
    pub secret: Secret,
    pub scopes: Vec<String>,
}

/// A host path that jobs may ask for by name.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedMount {
    pub name: String,
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// Sandbox defaults and caps.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxLimits {
    pub allowed_images: Vec<String>,
    pub default_image: String,
    pub default_cpu_limit: f64,
    pub max_cpu_limit: f64,
    pub default_memory_limit: i64,
    pub max_memory_limit: i64,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub pids_limit: i64,
    pub sandbox_user: String,
    pub tmp_bytes: i64,
    pub workdir_bytes: i64,
    pub mounts: Vec<NamedMount>,
}

/// A validated agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub path: PathBuf,
    pub agent_id: String,
    pub listen: SocketAddr,
    /// `None` only when `insecure_plain_http` is set on a loopback address.
    pub tls: Option<TlsFiles>,
    pub controllers: BTreeMap<String, ControllerGrant>,
    pub max_concurrent_jobs: usize,
    pub max_queued_jobs: usize,
    /// Jobs one controller may run at once (≤ `max_concurrent_jobs`).
    pub max_running_jobs_per_controller: usize,
    /// Jobs one controller may have waiting (≤ `max_queued_jobs`).
    pub max_queued_jobs_per_controller: usize,
    pub limits: SandboxLimits,
    pub max_output_bytes: usize,
    pub clock_skew_seconds: i64,
    pub max_job_lifetime_seconds: i64,
    pub data_dir: PathBuf,
    pub audit_db_path: PathBuf,
    pub job_retention_days: u32,
    pub legacy_open_reads: bool,
    pub docker_host: Option<String>,
    pub log_format: LogFormat,
    pub run_as_user: Option<String>,
    pub run_as_group: Option<String>,
    pub shutdown_grace: Duration,
    pub stream_buffer_frames: usize,
    /// Stored frames per stream of one job (head half, tail half).
    pub max_output_frames: usize,
    /// Refusal rows per source address per minute before they are only counted.
    pub audit_refusals_per_source_per_minute: u32,
    /// Connection cap and timeouts; the cap takes effect only at start.
    pub connections: ConnectionLimits,
    /// Containers of the default sandbox profile kept started ahead of time; 0: none.
    pub warm_pool_size: usize,
    /// Problems worth a log line that do not stop the agent (e.g. a world-readable secret).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl AgentConfig {
    /// Reads and validates `path`. `env_secret` is `QUICKCMD_HMAC_SECRET` when set.
    pub fn load(path: &Path, env_secret: Option<String>) -> Result<AgentConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut config = AgentConfig::from_text(path, &text, env_secret)?;
        if let Some(warning) = world_readable_warning(path, &text) {
            config.warnings.push(warning);
        }
        Ok(config)
    }

    /// Parses and validates the text of the config file at `path` (named in messages).
    pub(crate) fn from_text(
        path: &Path,
        text: &str,
        env_secret: Option<String>,
    ) -> Result<AgentConfig, ConfigError> {
        let raw: RawConfig = if text.trim().is_empty() {
            RawConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                line: e
                    .location()
                    .map(|l| format!(" line {}", l.line()))
                    .unwrap_or_default(),
                message: e.to_string(),
            })?
        };
        Validator { path, text }.validate(raw, env_secret)
    }

    /// The scopes granted to `controller_id`, or `None` when it is not allowed at all.
    pub fn controller(&self, controller_id: &str) -> Option<&ControllerGrant> {
        self.controllers.get(controller_id)
    }
}

fn world_readable_warning(path: &Path, text: &str) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    let holds_secret = text.lines().any(|l| {
        let l = l.trim_start();
        l.starts_with("hmac_secret:") || l.starts_with("- id:") && text.contains("hmac_secret:")
    });
    (holds_secret && mode & 0o077 != 0).then(|| {
        format!(
            "config file {} holds a secret and is readable by other users (mode {:o}); run: chmod 600 {}",
            path.display(),
            mode & 0o777,
            path.display()
        )
    })
}

struct Validator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Validator<'_> {
    /// The 1-based line where `key:` first appears, for messages.
    fn line_of(&self, key: &str) -> String {
        let top = key.split(['.', '[']).next().unwrap_or(key);
        self.text
            .lines()
            .position(|l| {
                let t = l.trim_start().trim_start_matches("- ");
                t.starts_with(&format!("{top}:"))
            })
            .map(|i| format!(" (line {})", i + 1))
            .unwrap_or_default()
    }

    fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            line: self.line_of(key),
            message: message.into(),
        }
    }

    fn secret(
        &self,
        key: &str,
        inline: Option<String>,
        file: Option<PathBuf>,
    ) -> Result<Option<Secret>, ConfigError> {
        let value = match (inline, file) {
            (Some(_), Some(_)) => {
                return Err(self.invalid(key, "give the secret inline or as a file, not both"))
            }
            (Some(value), None) => value,
            (None, Some(file)) => {
                let file_key = format!("{key}_file");
                checks::secret_file_mode(&file)
                    .map_err(|message| self.invalid(&file_key, message))?;
                std::fs::read_to_string(&file)
                    .map_err(|e| {
                        self.invalid(&file_key, format!("cannot read {}: {e}", file.display()))
                    })?
                    .trim()
                    .to_string()
            }
            (None, None) => return Ok(None),
        };
        self.check_secret(key, value).map(Some)
    }

    fn check_secret(&self, key: &str, value: String) -> Result<Secret, ConfigError> {
        if value.trim().starts_with("CHANGE_ME") {
            return Err(self.invalid(
                key,
                "is still the placeholder CHANGE_ME; generate one with `quickcmd agent gen-key` or `openssl rand -hex 32`",
            ));
        }
        if value.len() < 32 {
            return Err(self.invalid(
                key,
                format!(
                    "is {} bytes; a secret must be at least 32 bytes (generate one with `quickcmd agent gen-key`)",
                    value.len()
                ),
            ));
        }
        Secret::from_text(&value).ok_or_else(|| self.invalid(key, "is empty"))
    }

    fn validate(
        &self,
        raw: RawConfig,
        env_secret: Option<String>,
    ) -> Result<AgentConfig, ConfigError> {
        let shared_secret = match env_secret.filter(|s| !s.is_empty()) {
            Some(value) if raw.hmac_secret.is_none() && raw.hmac_secret_file.is_none() => {
                Some(self.check_secret("QUICKCMD_HMAC_SECRET", value)?)
            }
            _ => self.secret(
                "hmac_secret",
                raw.hmac_secret.clone(),
                raw.hmac_secret_file.clone(),
            )?,
        };

        let mut controllers = BTreeMap::new();
        for (index, entry) in raw.controllers.iter().enumerate() {
            let key = format!("controllers[{index}]");
            if entry.id.is_empty() {
                return Err(self.invalid(&key, "`id` must not be empty"));
            }
            // An empty scope grants nothing and is most likely a slip (`scopes: [""]`, a
            // stray `-`): say so rather than start with a grant that cannot match.
            if entry.scopes.iter().any(|scope| scope.trim().is_empty()) {
                return Err(self.invalid(
                    &format!("{key}.scopes"),
                    format!("controller `{}` lists an empty scope; remove it or name the scope (e.g. sandbox:network, mount:NAME)", entry.id),
                ));
            }
            let secret = match self.secret(
                &format!("{key}.hmac_secret"),
                entry.hmac_secret.clone(),
                entry.hmac_secret_file.clone(),
            )? {
                Some(secret) => secret,
                None => shared_secret.clone().ok_or_else(|| {
                    self.invalid(&key, format!("controller `{}` has no hmac_secret and there is no top-level hmac_secret", entry.id))
                })?,
            };
            if controllers
                .insert(
                    entry.id.clone(),
                    ControllerGrant {
                        id: entry.id.clone(),
                        secret,
                        scopes: entry.scopes.clone(),
                    },
                )
                .is_some()
            {
                return Err(
                    self.invalid(&key, format!("controller `{}` is listed twice", entry.id))
                );
            }
        }
        for id in &raw.allowed_controllers {
            if controllers.contains_key(id) {
                continue;
            }
            let secret = shared_secret.clone().ok_or_else(|| {
                self.invalid(
                    "hmac_secret",
                    format!("controller `{id}` in allowed_controllers needs the top-level hmac_secret (or hmac_secret_file, or env QUICKCMD_HMAC_SECRET)"),
                )
            })?;
            controllers.insert(
                id.clone(),
                ControllerGrant {
                    id: id.clone(),
                    secret,
                    scopes: Vec::new(),
                },
            );
        }
        if controllers.is_empty() {
            return Err(self.invalid(
                "allowed_controllers",
                "no controller may submit jobs; list at least one in allowed_controllers or controllers",
            ));
        }

        let ip: IpAddr = raw.bind_address.parse().map_err(|_| {
            self.invalid(
                "bind_address",
                format!("`{}` is not an IP address", raw.bind_address),
            )
        })?;
        let listen = SocketAddr::new(ip, raw.port);

        let tls = match (raw.tls_cert_file.clone(), raw.tls_key_file.clone()) {
            (Some(cert_file), Some(key_file)) => {
                for (key, file) in [("tls_cert_file", &cert_file), ("tls_key_file", &key_file)] {
                    if !file.exists() {
                        return Err(self.invalid(key, format!("{} does not exist", file.display())));
                    }
                }
                Some(TlsFiles { cert_file, key_file })
            }
            (None, None) if raw.insecure_plain_http => {
                if !ip.is_loopback() {
                    return Err(self.invalid(
                        "insecure_plain_http",
                        format!("plain HTTP is allowed only on a loopback bind_address, not {ip}"),
                    ));
                }
                None
            }
            (None, None) => {
                return Err(self.invalid(
                    "tls_cert_file",
                    "TLS files are required (tls_cert_file and tls_key_file); for local development only, set insecure_plain_http: true with bind_address 127.0.0.1",
                ))
            }
            (Some(_), None) => return Err(self.invalid("tls_key_file", "is missing while tls_cert_file is set")),
            (None, Some(_)) => return Err(self.invalid("tls_cert_file", "is missing while tls_key_file is set")),
        };

        if raw.max_concurrent_jobs == 0 {
            return Err(self.invalid("max_concurrent_jobs", "must be at least 1"));
        }
        let max_running_jobs_per_controller = raw
            .max_running_jobs_per_controller
            .unwrap_or(raw.max_concurrent_jobs);
        if !(1..=raw.max_concurrent_jobs).contains(&max_running_jobs_per_controller) {
            return Err(self.invalid(
                "max_running_jobs_per_controller",
                format!(
                    "must be from 1 to max_concurrent_jobs ({})",
                    raw.max_concurrent_jobs
                ),
            ));
        }
        let max_queued_jobs_per_controller = raw
            .max_queued_jobs_per_controller
            .unwrap_or(raw.max_queued_jobs);
        if max_queued_jobs_per_controller > raw.max_queued_jobs {
            return Err(self.invalid(
                "max_queued_jobs_per_controller",
                format!("must be at most max_queued_jobs ({})", raw.max_queued_jobs),
            ));
        }
        if raw.allowed_images.is_empty() {
            return Err(self.invalid("allowed_images", "must list at least one image"));
        }
        let default_image = raw
            .default_image
            .clone()
            .unwrap_or_else(|| raw.allowed_images[0].clone());
        if !raw.allowed_images.contains(&default_image) {
            return Err(self.invalid(
                "default_image",
                format!("`{default_image}` is not in allowed_images"),
            ));
        }
        let positive = |key: &str, value: f64| {
            if value.is_finite() && value > 0.0 {
                Ok(())
            } else {
                Err(self.invalid(key, "must be greater than 0"))
            }
        };
        positive("default_cpu_limit", raw.default_cpu_limit)?;
        positive("max_cpu_limit", raw.max_cpu_limit)?;
        if raw.default_cpu_limit > raw.max_cpu_limit {
            return Err(self.invalid("default_cpu_limit", "is above max_cpu_limit"));
        }
        const MIN_MEMORY: i64 = 6 * 1024 * 1024;
        if raw.default_memory_limit < MIN_MEMORY || raw.max_memory_limit < MIN_MEMORY {
            return Err(self.invalid(
                "default_memory_limit",
                "memory limits must be at least 6291456 bytes (Docker's minimum)",
            ));
        }
        if raw.default_memory_limit > raw.max_memory_limit {
            return Err(self.invalid("default_memory_limit", "is above max_memory_limit"));
        }
        if raw.default_timeout_seconds == 0 || raw.max_timeout_seconds == 0 {
            return Err(self.invalid(
                "default_timeout_seconds",
                "timeouts must be at least 1 second",
            ));
        }
        if raw.default_timeout_seconds > raw.max_timeout_seconds {
            return Err(self.invalid("default_timeout_seconds", "is above max_timeout_seconds"));
        }
        if raw.pids_limit < 1 {
            return Err(self.invalid("pids_limit", "must be at least 1"));
        }
        if raw.max_output_bytes < 1024 {
            return Err(self.invalid("max_output_bytes", "must be at least 1024"));
        }
        checks::sandbox_user(&raw.sandbox_user)
            .map_err(|message| self.invalid("sandbox_user", message))?;
        let connections =
            checks::connection_limits(&raw).map_err(|(key, message)| self.invalid(key, message))?;
        let mut mounts = Vec::new();
        for (index, mount) in raw.mounts.iter().enumerate() {
            let key = format!("mounts[{index}]");
            if mount.name.is_empty() || mounts.iter().any(|m: &NamedMount| m.name == mount.name) {
                return Err(self.invalid(&key, "every mount needs a unique, non-empty name"));
            }
            if !mount.source.is_absolute() || !mount.target.starts_with('/') {
                return Err(self.invalid(&key, "source and target must be absolute paths"));
            }
            mounts.push(NamedMount {
                name: mount.name.clone(),
                source: mount.source.clone(),
                target: mount.target.clone(),
                read_only: mount.read_only,
            });
        }
        if raw.clock_skew_seconds < 1 {
            return Err(self.invalid("clock_skew_seconds", "must be at least 1"));
        }
        if raw.max_job_lifetime_seconds < 1 {
            return Err(self.invalid("max_job_lifetime_seconds", "must be at least 1"));
        }
        let log_format = match raw.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(self.invalid("log_format", format!("`{other}` is not text or json")))
            }
        };
        if raw.audit_refusals_per_source_per_minute == 0 {
            return Err(self.invalid("audit_refusals_per_source_per_minute", "must be at least 1"));
        }
        if raw.max_output_frames < 2 {
            return Err(self.invalid("max_output_frames", "must be at least 2"));
        }
        if raw.stream_buffer_frames < 16 {
            return Err(self.invalid("stream_buffer_frames", "must be at least 16"));
        }
        if raw.warm_pool_size > MAX_WARM_POOL_SIZE {
            return Err(self.invalid(
                "warm_pool_size",
                format!("must be at most {MAX_WARM_POOL_SIZE} (0 disables the pool)"),
            ));
        }
        let agent_id = match raw.agent_id.clone() {
            Some(id) if !id.is_empty() => id,
            Some(_) => return Err(self.invalid("agent_id", "must not be empty")),
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .unwrap_or_else(|| "quickcmd-agent".to_string()),
        };
        let audit_db_path = raw
            .audit_db_path
            .clone()
            .unwrap_or_else(|| raw.data_dir.join("agent-audit.db"));

        Ok(AgentConfig {
            path: self.path.to_path_buf(),
            agent_id,
            listen,
            tls,
            controllers,
            max_concurrent_jobs: raw.max_concurrent_jobs,
            max_queued_jobs: raw.max_queued_jobs,
            max_running_jobs_per_controller,
            max_queued_jobs_per_controller,
            limits: SandboxLimits {
                allowed_images: raw.allowed_images.clone(),
                default_image,
                default_cpu_limit: raw.default_cpu_limit,
                max_cpu_limit: raw.max_cpu_limit,
                default_memory_limit: raw.default_memory_limit,
                max_memory_limit: raw.max_memory_limit,
                default_timeout: Duration::from_secs(raw.default_timeout_seconds),
                max_timeout: Duration::from_secs(raw.max_timeout_seconds),
                pids_limit: raw.pids_limit,
                sandbox_user: raw.sandbox_user.clone(),
                tmp_bytes: raw.sandbox_tmp_bytes,
                workdir_bytes: raw.sandbox_workdir_bytes,
                mounts,
            },
            max_output_bytes: raw.max_output_bytes,
            clock_skew_seconds: raw.clock_skew_seconds,
            max_job_lifetime_seconds: raw.max_job_lifetime_seconds,
            data_dir: raw.data_dir.clone(),
            audit_db_path,
            job_retention_days: raw.job_retention_days,
            legacy_open_reads: raw.legacy_open_reads,
            docker_host: raw.docker_host.clone(),
            log_format,
            run_as_user: raw.run_as_user.clone(),
            run_as_group: raw.run_as_group.clone(),
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_seconds),
            stream_buffer_frames: raw.stream_buffer_frames,
            max_output_frames: raw.max_output_frames,
            audit_refusals_per_source_per_minute: raw.audit_refusals_per_source_per_minute,
            connections,
            warm_pool_size: raw.warm_pool_size,
            warnings: Vec::new(),
        })
    }
}

#[cfg(test)]
mod tests;
