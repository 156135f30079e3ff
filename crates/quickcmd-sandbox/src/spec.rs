//! What one job asks of the sandbox (`SandboxSpec`), what it gets back (`SandboxOutcome`,
//! `OutputChunk`), and the checks that keep a spec from quietly weakening the sandbox.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;

use crate::error::SandboxError;

/// The workdir used when the caller has no opinion.
pub const DEFAULT_WORKDIR: &str = "/work";

/// Docker refuses fewer than 0.01 CPUs; below that `nano_cpus` would also round to 0, which
/// the engine reads as "unlimited".
const MIN_CPU_LIMIT: f64 = 0.01;
/// Far above any real host; keeps the nano-CPU conversion away from `i64` saturation.
const MAX_CPU_LIMIT: f64 = 1_000_000.0;

/// Everything needed to run one job in one container.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxSpec {
    pub job_id: String,
    /// Labels the container `quickcmd.agent=<agent_id>` so a restarted agent can clean up.
    pub agent_id: String,
    pub image: String,
    /// Run as `["sh", "-c", command]`.
    pub command: String,
    /// `uid[:gid]` or a name known to the image, e.g. `"65534:65534"`.
    pub user: String,
    /// `false` gives the container no network at all (`network_mode: none`).
    pub network: bool,
    /// CPU cores, converted to `nano_cpus`.
    pub cpu_limit: f64,
    /// Memory limit; swap is capped at the same value, so no swap beyond it.
    pub memory_limit_bytes: i64,
    pub pids_limit: i64,
    /// Measured from the moment the container started.
    pub timeout: Duration,
    pub env: BTreeMap<String, String>,
    /// A writable, size-limited tmpfs mounted here; also the working directory.
    pub workdir: String,
    pub tmp_size_bytes: i64,
    pub workdir_size_bytes: i64,
    pub mounts: Vec<BindMount>,
    /// Bytes given to the command's standard input, followed by end of file. `None`: the
    /// command reads end of file at once (stdin is not even opened).
    pub stdin: Option<Vec<u8>>,
}

/// A host path bind-mounted into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

/// One chunk of output as the engine delivered it; never re-split into lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputChunk {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// Why the job's container stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndReason {
    /// The command exited by itself.
    Exited,
    /// `SandboxSpec::timeout` passed; the container was killed.
    Timeout,
    /// The engine reports the container was OOM-killed.
    Oom,
    /// The cancellation token fired; the container was killed.
    Cancelled,
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxOutcome {
    /// The engine's exit code; 124 on timeout; -1 when cancelled before the container
    /// started (no command ran).
    pub exit_code: i64,
    pub reason: EndReason,
    /// Empty only when the job was cancelled before a container was created.
    pub container_id: String,
    /// From the create request to the start request returning; `None` if never started.
    pub start_latency: Option<Duration>,
}

/// Exit code reported for a timeout, as coreutils `timeout` does.
pub const TIMEOUT_EXIT_CODE: i64 = 124;
/// Exit code reported for a cancelled job whose container was killed but whose own exit
/// code the engine did not report within the kill wait (128 + SIGKILL). A job cancelled
/// before its container started reports [`NOT_RUN_EXIT_CODE`] instead.
pub const CANCELLED_EXIT_CODE: i64 = 137;

/// Exit code reported when no command ran.
pub const NOT_RUN_EXIT_CODE: i64 = -1;

impl SandboxSpec {
    /// Rejects a spec the engine would read as "no limit" (zero memory, pids or tmpfs size),
    /// paths that could escape their mount syntax, and environment entries that cannot be
    /// expressed as `KEY=VALUE`.
    pub fn validate(&self) -> Result<(), SandboxError> {
        self.check().map_err(|message| SandboxError::InvalidSpec {
            job_id: self.job_id.clone(),
            message,
        })
    }

    fn check(&self) -> Result<(), String> {
        non_empty("job_id", &self.job_id)?;
        non_empty("agent_id", &self.agent_id)?;
        non_empty("image", &self.image)?;
        if self
            .image
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!("image {:?} contains whitespace", self.image));
        }
        no_nul("command", &self.command)?;
        // An empty user silently means the image's default, which is root.
        non_empty("user", &self.user)?;
        if !(self.cpu_limit.is_finite()
            && (MIN_CPU_LIMIT..=MAX_CPU_LIMIT).contains(&self.cpu_limit))
        {
            return Err(format!(
                "cpu_limit {} is outside {MIN_CPU_LIMIT}..={MAX_CPU_LIMIT} cores",
                self.cpu_limit
            ));
        }
        positive("memory_limit_bytes", self.memory_limit_bytes)?;
        positive("pids_limit", self.pids_limit)?;
        positive("tmp_size_bytes", self.tmp_size_bytes)?;
        positive("workdir_size_bytes", self.workdir_size_bytes)?;
        if self.timeout.is_zero() {
            return Err("timeout must be greater than zero".to_owned());
        }
        for (key, value) in &self.env {
            if key.is_empty() || key.contains('=') || key.contains('\0') {
                return Err(format!("env key {key:?} is empty or contains '=' or NUL"));
            }
            no_nul(&format!("env value of {key}"), value)?;
        }

        container_path("workdir", &self.workdir)?;
        if self.workdir == "/tmp" {
            return Err("workdir must not be /tmp, which has its own tmpfs".to_owned());
        }
        let mut targets = BTreeSet::from(["/tmp", self.workdir.as_str()]);
        for mount in &self.mounts {
            container_path("mount target", &mount.target)?;
            if !targets.insert(mount.target.as_str()) {
                return Err(format!(
                    "mount target {} is used twice (or is /tmp or the workdir)",
                    mount.target
                ));
            }
            let source = mount
                .source
                .to_str()
                .ok_or_else(|| format!("mount source {} is not UTF-8", mount.source.display()))?;
            if !mount.source.is_absolute() || source.contains('\0') {
                return Err(format!("mount source {source:?} is not an absolute path"));
            }
            // Whoever holds the engine socket is root on the host; no config should hand it
            // to a job, so refuse it even if asked.
            if source.ends_with("docker.sock") || source.ends_with("containerd.sock") {
                return Err(format!(
                    "mount source {source} is a container engine socket"
                ));
            }
        }
        Ok(())
    }
}

fn non_empty(field: &str, value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err(format!("{field} is empty"));
    }
    no_nul(field, value)
}

fn no_nul(field: &str, value: &str) -> Result<(), String> {
    if value.contains('\0') {
        return Err(format!("{field} contains a NUL byte"));
    }
    Ok(())
}

fn positive(field: &str, value: i64) -> Result<(), String> {
    if value <= 0 {
        // The engine reads 0 (and for pids, -1) as "unlimited".
        return Err(format!("{field} must be greater than zero, got {value}"));
    }
    Ok(())
}

/// An absolute, normalised path inside the container that is safe to put in a tmpfs or mount
/// specification: no `.`/`..`, no empty segments, no `,` or `:` that the engine would parse as
/// option separators, and not inside the kernel filesystems.
fn container_path(field: &str, path: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{field} {path:?} {why}"));
    if !path.starts_with('/') {
        return bad("is not absolute");
    }
    if path == "/" {
        return bad("is the root directory");
    }
    if path.contains([',', ':', '\0']) || path.chars().any(char::is_control) {
        return bad("contains ',', ':' or a control character");
    }
    if path[1..]
        .split('/')
        .any(|segment| segment.is_empty() || segment == "." || segment == "..")
    {
        return bad("is not normalised");
    }
    for kernel_dir in ["/proc", "/sys", "/dev"] {
        if path == kernel_dir || path.starts_with(&format!("{kernel_dir}/")) {
            return bad("is inside /proc, /sys or /dev");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> SandboxSpec {
        SandboxSpec {
            job_id: "job-1".to_owned(),
            agent_id: "agent-1".to_owned(),
            image: "quickcmd-sandbox:latest".to_owned(),
            command: "echo hi".to_owned(),
            user: "65534:65534".to_owned(),
            network: false,
            cpu_limit: 0.5,
            memory_limit_bytes: 64 << 20,
            pids_limit: 64,
            timeout: Duration::from_secs(10),
            env: BTreeMap::new(),
            workdir: DEFAULT_WORKDIR.to_owned(),
            tmp_size_bytes: 16 << 20,
            workdir_size_bytes: 16 << 20,
            mounts: Vec::new(),
            stdin: None,
        }
    }

    fn check(change: impl FnOnce(&mut SandboxSpec), expected_error: Option<&str>) {
        let mut spec = good();
        change(&mut spec);
        match (spec.validate(), expected_error) {
            (Ok(()), None) => {}
            (Err(SandboxError::InvalidSpec { message, .. }), Some(expected)) => assert!(
                message.contains(expected),
                "error {message:?} does not contain {expected:?}"
            ),
            (result, expected) => panic!("got {result:?}, expected {expected:?}"),
        }
    }

    fn mount(source: &str, target: &str) -> BindMount {
        BindMount {
            source: PathBuf::from(source),
            target: target.to_owned(),
            read_only: true,
        }
    }

    #[test]
    fn validate_table() {
        check(|_| {}, None);
        check(|s| s.job_id.clear(), Some("job_id is empty"));
        check(|s| s.agent_id = " ".to_owned(), Some("agent_id is empty"));
        check(|s| s.user.clear(), Some("user is empty"));
        check(|s| s.image = "a b".to_owned(), Some("whitespace"));
        check(|s| s.command = "a\0b".to_owned(), Some("NUL"));
        check(|s| s.cpu_limit = 0.0, Some("cpu_limit"));
        check(|s| s.cpu_limit = 0.001, Some("cpu_limit"));
        check(|s| s.cpu_limit = f64::NAN, Some("cpu_limit"));
        check(|s| s.cpu_limit = f64::INFINITY, Some("cpu_limit"));
        check(|s| s.memory_limit_bytes = 0, Some("memory_limit_bytes"));
        check(|s| s.pids_limit = -1, Some("pids_limit"));
        check(|s| s.tmp_size_bytes = 0, Some("tmp_size_bytes"));
        check(|s| s.workdir_size_bytes = 0, Some("workdir_size_bytes"));
        check(|s| s.timeout = Duration::ZERO, Some("timeout"));
        check(
            |s| drop(s.env.insert("A=B".to_owned(), "x".to_owned())),
            Some("env key"),
        );
        check(
            |s| drop(s.env.insert(String::new(), "x".to_owned())),
            Some("env key"),
        );
        check(
            |s| drop(s.env.insert("A".to_owned(), "x\0".to_owned())),
            Some("NUL"),
        );
        check(
            |s| drop(s.env.insert("A".to_owned(), "b=c d".to_owned())),
            None,
        );
        check(|s| s.workdir = "work".to_owned(), Some("not absolute"));
        check(|s| s.workdir = "/".to_owned(), Some("root directory"));
        check(|s| s.workdir = "/tmp".to_owned(), Some("/tmp"));
        check(|s| s.workdir = "/w/../etc".to_owned(), Some("normalised"));
        check(|s| s.workdir = "/w//x".to_owned(), Some("normalised"));
        check(|s| s.workdir = "/w/".to_owned(), Some("normalised"));
        check(|s| s.workdir = "/w,size=0".to_owned(), Some("','"));
        check(|s| s.workdir = "/proc/self".to_owned(), Some("/proc"));
        check(|s| s.workdir = "/devices".to_owned(), None);
        check(|s| s.mounts.push(mount("/srv/data", "/data")), None);
        check(
            |s| s.mounts.push(mount("relative", "/data")),
            Some("absolute"),
        );
        check(
            |s| s.mounts.push(mount("/var/run/docker.sock", "/data")),
            Some("engine socket"),
        );
        check(|s| s.mounts.push(mount("/srv", "/work")), Some("twice"));
        check(
            |s| {
                s.mounts.push(mount("/a", "/data"));
                s.mounts.push(mount("/b", "/data"));
            },
            Some("twice"),
        );
        check(|s| s.mounts.push(mount("/srv", "/sys/x")), Some("/sys"));
    }
}
