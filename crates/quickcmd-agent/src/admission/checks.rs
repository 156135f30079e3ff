//! The rows of the check table that are pure functions of the payload, the config and the
//! time: the clock window, then scopes, image and sandbox caps.

use std::time::Duration;

use quickcmd_protocol::{ErrorCode, JobPayload};
use quickcmd_sandbox::{SandboxError, DEFAULT_WORKDIR};

use super::Refusal;
use crate::config::{AgentConfig, ControllerGrant};
use crate::queue::{QueuedJob, ResolvedSandbox};
use crate::runner;

/// TTL and timestamp against the agent's clock (rows 6–9 of the check table).
pub(crate) fn check_clock(
    payload: &JobPayload,
    now: i64,
    config: &AgentConfig,
) -> Result<(), Refusal> {
    let skew = config.clock_skew_seconds;
    if payload.ttl <= now {
        return Err(Refusal::new(
            ErrorCode::JobExpired,
            format!("job ttl {} has passed (agent time {now})", payload.ttl),
        ));
    }
    if payload.timestamp < now.saturating_sub(skew) {
        return Err(Refusal::new(
            ErrorCode::JobTooOld,
            format!(
                "job timestamp {} is more than {skew} s older than agent time {now}",
                payload.timestamp
            ),
        ));
    }
    if payload.timestamp > now.saturating_add(skew) {
        return Err(Refusal::new(
            ErrorCode::TimestampInFuture,
            format!(
                "job timestamp {} is more than {skew} s ahead of agent time {now}",
                payload.timestamp
            ),
        ));
    }
    let lifetime = payload.ttl.saturating_sub(payload.timestamp);
    if lifetime > config.max_job_lifetime_seconds {
        return Err(Refusal::new(
            ErrorCode::TtlTooLong,
            format!(
                "ttl - timestamp is {lifetime} s, over the agent's {} s",
                config.max_job_lifetime_seconds
            ),
        ));
    }
    Ok(())
}

fn valid_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    matches!(bytes.next(), Some(b'A'..=b'Z' | b'a'..=b'z' | b'_'))
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Scopes, image and caps (rows 11–12). Asking for more than a cap is refused, never
/// clamped.
pub(crate) fn resolve_sandbox(
    payload: &JobPayload,
    grant: &ControllerGrant,
    config: &AgentConfig,
) -> Result<ResolvedSandbox, Refusal> {
    let limits = &config.limits;
    let request = payload.sandbox.clone().unwrap_or_default();
    let has = |scope: &str| grant.scopes.iter().any(|s| s == scope);

    let missing: Vec<&String> = payload
        .required_scopes
        .iter()
        .flatten()
        .filter(|s| !has(s))
        .collect();
    if !missing.is_empty() {
        return Err(Refusal::new(
            ErrorCode::InsufficientScopes,
            format!("controller `{}` is not granted {:?}", grant.id, missing),
        ));
    }
    let network = request.network.unwrap_or(false);
    if network && !has("sandbox:network") {
        return Err(Refusal::new(
            ErrorCode::InsufficientScopes,
            format!(
                "network access needs scope sandbox:network, which controller `{}` lacks",
                grant.id
            ),
        ));
    }
    let mounts = request.mounts.clone().unwrap_or_default();
    for name in &mounts {
        if !limits.mounts.iter().any(|m| &m.name == name) {
            return Err(Refusal::new(
                ErrorCode::InsufficientScopes,
                format!("this agent has no mount named `{name}`"),
            ));
        }
        if !has(&format!("mount:{name}")) {
            return Err(Refusal::new(
                ErrorCode::InsufficientScopes,
                format!(
                    "mount `{name}` needs scope mount:{name}, which controller `{}` lacks",
                    grant.id
                ),
            ));
        }
    }
    let image = request
        .image
        .clone()
        .unwrap_or_else(|| limits.default_image.clone());
    if !limits.allowed_images.contains(&image) {
        return Err(Refusal::new(
            ErrorCode::ImageNotAllowed,
            format!("image `{image}` is not in this agent's allowed_images"),
        ));
    }

    let over = |what: &str, asked: String, cap: String| {
        Refusal::new(
            ErrorCode::SandboxLimitExceeded,
            format!("{what} {asked} is over this agent's cap of {cap}"),
        )
    };
    let timeout_seconds = request
        .timeout_seconds
        .unwrap_or(limits.default_timeout.as_secs());
    if timeout_seconds == 0 {
        return Err(Refusal::new(
            ErrorCode::InvalidPayload,
            "sandbox.timeout_seconds must be at least 1",
        ));
    }
    if Duration::from_secs(timeout_seconds) > limits.max_timeout {
        return Err(over(
            "timeout_seconds",
            timeout_seconds.to_string(),
            limits.max_timeout.as_secs().to_string(),
        ));
    }
    let cpu_limit = request.cpu_limit.unwrap_or(limits.default_cpu_limit);
    if !(cpu_limit.is_finite() && cpu_limit > 0.0) {
        return Err(Refusal::new(
            ErrorCode::InvalidPayload,
            "sandbox.cpu_limit must be greater than 0",
        ));
    }
    if cpu_limit > limits.max_cpu_limit {
        return Err(over(
            "cpu_limit",
            cpu_limit.to_string(),
            limits.max_cpu_limit.to_string(),
        ));
    }
    let memory_limit = request.memory_limit.unwrap_or(limits.default_memory_limit);
    if memory_limit < 6 * 1024 * 1024 {
        return Err(Refusal::new(
            ErrorCode::InvalidPayload,
            "sandbox.memory_limit must be at least 6291456 bytes",
        ));
    }
    if memory_limit > limits.max_memory_limit {
        return Err(over(
            "memory_limit",
            memory_limit.to_string(),
            limits.max_memory_limit.to_string(),
        ));
    }
    let env = request.env.clone().unwrap_or_default();
    if let Some(bad) = env.keys().find(|k| !valid_env_name(k)) {
        return Err(Refusal::new(
            ErrorCode::InvalidPayload,
            format!("sandbox.env name `{bad}` is not a valid variable name"),
        ));
    }
    let workdir = request
        .workdir
        .clone()
        .unwrap_or_else(|| DEFAULT_WORKDIR.to_string());
    let forbidden = ["/", "/proc", "/sys", "/dev", "/tmp"];
    if !workdir.starts_with('/')
        || workdir.contains("..")
        || forbidden
            .iter()
            .any(|f| workdir == *f || (*f != "/" && workdir.starts_with(&format!("{f}/"))))
    {
        return Err(Refusal::new(ErrorCode::InvalidPayload, format!("sandbox.workdir `{workdir}` must be an absolute path outside /proc, /sys, /dev and /tmp")));
    }
    Ok(ResolvedSandbox {
        image,
        timeout_seconds,
        cpu_limit,
        memory_limit,
        network,
        mounts,
        env,
        workdir,
    })
}

/// The sandbox's own checks (`SandboxSpec::validate`) on the very spec the runner will
/// build for this job, so admission never answers 202 for a job the sandbox would refuse.
pub(crate) fn check_spec(config: &AgentConfig, job: &QueuedJob) -> Result<(), Refusal> {
    match runner::sandbox_spec(config, job).validate() {
        Ok(()) => Ok(()),
        Err(SandboxError::InvalidSpec { message, .. }) => Err(Refusal::new(
            ErrorCode::InvalidPayload,
            format!("the sandbox refuses this job: {message}"),
        )),
        Err(other) => Err(Refusal::new(ErrorCode::InvalidPayload, other.to_string())),
    }
}

#[cfg(test)]
mod tests;
