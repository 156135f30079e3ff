//! Create a job's container: the whole security posture of the sandbox is decided here, in
//! `container_config`, and nowhere else.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, HostConfig, HostConfigCgroupnsModeEnum, HostConfigLogConfig, Mount,
    MountType,
};
use bollard::query_parameters::CreateContainerOptionsBuilder;
use bollard::Docker;
use rand::Rng;

use crate::error::SandboxError;
use crate::script::BOOTSTRAP;
use crate::spec::SandboxSpec;

/// Label naming the agent that owns a container; `remove_agent_containers` filters on it.
pub const LABEL_AGENT: &str = "quickcmd.agent";
/// Label naming the job a container runs.
pub const LABEL_JOB: &str = "quickcmd.job";
/// Label set to `"true"` on every container this crate creates.
pub const LABEL_MANAGED: &str = "quickcmd.managed";
/// Label on warm pool containers, naming the agent whose pool made them. They carry
/// `quickcmd.agent` and `quickcmd.managed` too, so the start-up sweep removes them.
pub const LABEL_POOL: &str = "quickcmd.pool";
/// Label naming the one `DockerSandbox` pool (a random id per process) that made a pool
/// container, so the start-up sweep spares the pool that is already filling.
pub const LABEL_POOL_INSTANCE: &str = "quickcmd.pool.instance";

/// Longest part of a job id kept in a container name; the id itself is in the labels.
const NAME_JOB_ID_MAX: usize = 48;

/// Creates the container for `spec` (not started) and returns its id.
pub(crate) async fn create_container(
    docker: &Docker,
    spec: &SandboxSpec,
) -> Result<String, SandboxError> {
    create_named(
        docker,
        &container_name(&spec.job_id),
        container_config(spec),
        &spec.job_id,
    )
    .await
}

/// Creates a warm pool container: `spec`'s fixed settings (the pool profile), running
/// [`BOOTSTRAP`] with stdin open for exactly one attach, labelled as the pool's.
pub(crate) async fn create_pool_container(
    docker: &Docker,
    spec: &SandboxSpec,
    instance: &str,
) -> Result<String, SandboxError> {
    let mut config = container_config(spec);
    config.cmd = Some(vec!["sh".to_owned(), "-c".to_owned(), BOOTSTRAP.to_owned()]);
    // The job's env is exported by the script; the profile carries none.
    config.env = Some(Vec::new());
    config.open_stdin = Some(true);
    config.stdin_once = Some(true);
    config.attach_stdin = Some(true);
    let mut labels = HashMap::from([
        (LABEL_AGENT.to_owned(), spec.agent_id.clone()),
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
        (LABEL_POOL.to_owned(), spec.agent_id.clone()),
        (LABEL_POOL_INSTANCE.to_owned(), instance.to_owned()),
    ]);
    labels.retain(|_, value| !value.is_empty());
    config.labels = Some(labels);
    create_named(docker, &container_name("pool"), config, &spec.job_id).await
}

async fn create_named(
    docker: &Docker,
    name: &str,
    config: ContainerCreateBody,
    job_id: &str,
) -> Result<String, SandboxError> {
    let options = CreateContainerOptionsBuilder::new().name(name).build();
    let created = docker
        .create_container(Some(options), config)
        .await
        .map_err(|err| SandboxError::engine("create container", job_id, &err))?;
    for warning in &created.warnings {
        // e.g. "Your kernel does not support swap limit capabilities": the engine then drops
        // memory_swap, and operators need to know the limit is weaker than configured.
        tracing::warn!(job_id, container = %name, %warning, "docker warned on create");
    }
    Ok(created.id)
}

/// Who owns the workdir tmpfs: the sandbox user, mode 0700. The engine ignores `mode` for
/// a working directory the image lacks (it comes out root 0755), but honours `uid`/`gid`.
/// A user that is not numeric `uid:gid` (the agent's config refuses those) gets 1777.
fn workdir_owner(user: &str) -> String {
    let numeric = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    match user.split_once(':') {
        Some((uid, gid)) if numeric(uid) && numeric(gid) => {
            format!("uid={uid},gid={gid},mode=0700")
        }
        _ => "mode=1777".to_owned(),
    }
}

/// The full create request for `spec`. Every field that loosens isolation is set explicitly,
/// so an engine default changing cannot silently widen the sandbox.
pub(crate) fn container_config(spec: &SandboxSpec) -> ContainerCreateBody {
    let tmpfs = HashMap::from([
        (
            "/tmp".to_owned(),
            format!(
                "rw,noexec,nosuid,nodev,size={},mode=1777",
                spec.tmp_size_bytes
            ),
        ),
        // The workdir may hold programs the job runs, so it is exec. The engine starts every
        // tmpfs from `noexec,nosuid,nodev` and only an explicit `exec` lifts that.
        (
            spec.workdir.clone(),
            format!(
                "rw,exec,nosuid,nodev,size={},{}",
                spec.workdir_size_bytes,
                workdir_owner(&spec.user)
            ),
        ),
    ]);
    let mounts: Vec<Mount> = spec
        .mounts
        .iter()
        .map(|mount| Mount {
            target: Some(mount.target.clone()),
            source: Some(mount.source.to_string_lossy().into_owned()),
            typ: Some(MountType::BIND),
            read_only: Some(mount.read_only),
            ..Default::default()
        })
        .collect();
    let host_config = HostConfig {
        network_mode: Some(if spec.network { "bridge" } else { "none" }.to_owned()),
        cap_drop: Some(vec!["ALL".to_owned()]),
        cap_add: None,
        // The default seccomp and AppArmor profiles stay in force: nothing here unconfines.
        security_opt: Some(vec!["no-new-privileges:true".to_owned()]),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        mounts: (!mounts.is_empty()).then_some(mounts),
        memory: Some(spec.memory_limit_bytes),
        memory_swap: Some(spec.memory_limit_bytes),
        nano_cpus: Some(nano_cpus(spec.cpu_limit)),
        pids_limit: Some(spec.pids_limit),
        auto_remove: Some(false),
        privileged: Some(false),
        init: Some(false),
        devices: Some(Vec::new()),
        device_cgroup_rules: Some(Vec::new()),
        publish_all_ports: Some(false),
        // Hides the host's cgroup paths from the job.
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        // Output is taken from the attach stream; the engine keeps no copy on disk, so a job
        // cannot fill the host's disk with logs nor leave its output behind.
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_owned()),
            config: None,
        }),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        cmd: Some(vec!["sh".to_owned(), "-c".to_owned(), spec.command.clone()]),
        entrypoint: Some(Vec::new()),
        user: Some(spec.user.clone()),
        env: Some(
            spec.env
                .iter()
                .map(|(key, value)| format!("{key}={value}"))
                .collect(),
        ),
        working_dir: Some(spec.workdir.clone()),
        labels: Some(labels(&spec.agent_id, &spec.job_id)),
        // With stdin to give, it is opened for the one attach that writes it; closing that
        // attach's write half is the command's end of file.
        attach_stdin: Some(spec.stdin.is_some()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        open_stdin: Some(spec.stdin.is_some()),
        stdin_once: Some(spec.stdin.is_some()),
        host_config: Some(host_config),
        ..Default::default()
    }
}

pub(crate) fn labels(agent_id: &str, job_id: &str) -> HashMap<String, String> {
    HashMap::from([
        (LABEL_AGENT.to_owned(), agent_id.to_owned()),
        (LABEL_JOB.to_owned(), job_id.to_owned()),
        (LABEL_MANAGED.to_owned(), "true".to_owned()),
    ])
}

pub(crate) fn nano_cpus(cores: f64) -> i64 {
    // `validate` bounds `cores` to 0.01..=1e6, so this neither rounds to 0 nor saturates.
    (cores * 1e9).round() as i64
}

/// `quickcmd-<job id, sanitised>-<8 random hex>`: readable in `docker ps`, unique even when a
/// job id is reused, and always within the engine's name grammar.
pub(crate) fn container_name(job_id: &str) -> String {
    let sanitised: String = job_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(NAME_JOB_ID_MAX)
        .collect();
    let suffix: u32 = rand::thread_rng().gen();
    format!("quickcmd-{sanitised}-{suffix:08x}")
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::spec::BindMount;

    fn spec() -> SandboxSpec {
        SandboxSpec {
            job_id: "job/1 x".to_owned(),
            agent_id: "agent-7".to_owned(),
            image: "quickcmd-sandbox:latest".to_owned(),
            command: "echo hi".to_owned(),
            user: "65534:65534".to_owned(),
            network: false,
            cpu_limit: 0.5,
            memory_limit_bytes: 64 << 20,
            pids_limit: 32,
            timeout: Duration::from_secs(5),
            env: BTreeMap::from([("A".to_owned(), "b=c".to_owned())]),
            workdir: "/work".to_owned(),
            tmp_size_bytes: 1 << 20,
            workdir_size_bytes: 2 << 20,
            mounts: vec![BindMount {
                source: PathBuf::from("/srv/in"),
                target: "/in".to_owned(),
                read_only: true,
            }],
            stdin: None,
        }
    }

    #[test]
    fn config_locks_the_container_down() {
        let config = container_config(&spec());
        assert_eq!(
            config.cmd,
            Some(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
        assert_eq!(config.user.as_deref(), Some("65534:65534"));
        assert_eq!(config.env, Some(vec!["A=b=c".to_owned()]));
        assert_eq!(config.working_dir.as_deref(), Some("/work"));
        assert_eq!(config.tty, Some(false));
        assert_eq!(config.open_stdin, Some(false));
        assert_eq!(config.attach_stdout, Some(true));
        assert_eq!(config.attach_stderr, Some(true));
        let labels = config.labels.clone().unwrap_or_default();
        assert_eq!(labels.get(LABEL_AGENT).map(String::as_str), Some("agent-7"));
        assert_eq!(labels.get(LABEL_JOB).map(String::as_str), Some("job/1 x"));
        assert_eq!(labels.get(LABEL_MANAGED).map(String::as_str), Some("true"));

        let host = config.host_config.unwrap_or_default();
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(host.cap_add, None);
        assert_eq!(
            host.security_opt,
            Some(vec!["no-new-privileges:true".to_owned()])
        );
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.memory_swap, Some(64 << 20));
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.pids_limit, Some(32));
        assert_eq!(host.auto_remove, Some(false));
        assert_eq!(host.privileged, Some(false));
        assert_eq!(host.init, Some(false));
        assert_eq!(host.devices, Some(Vec::new()));
        let tmpfs = host.tmpfs.unwrap_or_default();
        assert_eq!(
            tmpfs.get("/tmp").map(String::as_str),
            Some("rw,noexec,nosuid,nodev,size=1048576,mode=1777")
        );
        assert_eq!(
            tmpfs.get("/work").map(String::as_str),
            Some("rw,exec,nosuid,nodev,size=2097152,uid=65534,gid=65534,mode=0700")
        );
        let mounts = host.mounts.unwrap_or_default();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].typ, Some(MountType::BIND));
        assert_eq!(mounts[0].read_only, Some(true));
        assert_eq!(mounts[0].target.as_deref(), Some("/in"));
    }

    #[test]
    fn stdin_is_opened_only_when_the_job_has_some() {
        let mut spec = spec();
        spec.stdin = Some(b"input".to_vec());
        let config = container_config(&spec);
        assert_eq!(config.open_stdin, Some(true));
        assert_eq!(config.stdin_once, Some(true));
        assert_eq!(config.attach_stdin, Some(true));
    }

    #[test]
    fn network_true_uses_the_default_bridge() {
        let mut spec = spec();
        spec.network = true;
        let host = container_config(&spec).host_config.unwrap_or_default();
        assert_eq!(host.network_mode.as_deref(), Some("bridge"));
    }

    #[test]
    fn container_names_are_sanitised_and_unique() {
        let name = container_name("job/1 x");
        assert!(name.starts_with("quickcmd-job-1-x-"), "{name}");
        assert_eq!(name.len(), "quickcmd-job-1-x-".len() + 8);
        assert_ne!(container_name("j"), container_name("j"));
        let long = container_name(&"é".repeat(200));
        assert!(long.len() <= "quickcmd--".len() + NAME_JOB_ID_MAX + 8);
        assert!(long
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)));
    }
}
