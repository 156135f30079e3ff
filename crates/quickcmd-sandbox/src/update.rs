//! Change the limits of a running warm pool container to a job's, before its script is
//! written: memory (with swap at the same value), CPUs and PIDs. Engine 20.10 (API 1.41)
//! updates all three on a running container under cgroup v1; everything else a container
//! is created with (image, user, network, mounts, tmpfs) is fixed, so jobs that differ there
//! take the cold path instead.

use bollard::models::ContainerUpdateBody;
use bollard::Docker;

use crate::create::nano_cpus;
use crate::error::SandboxError;
use crate::spec::SandboxSpec;

/// Sets `spec`'s memory, swap, CPU and PID limits on `container_id`.
pub(crate) async fn update_limits(
    docker: &Docker,
    container_id: &str,
    spec: &SandboxSpec,
) -> Result<(), SandboxError> {
    let body = ContainerUpdateBody {
        memory: Some(spec.memory_limit_bytes),
        memory_swap: Some(spec.memory_limit_bytes),
        nano_cpus: Some(nano_cpus(spec.cpu_limit)),
        pids_limit: Some(spec.pids_limit),
        ..Default::default()
    };
    docker
        .update_container(container_id, body)
        .await
        .map_err(|err| SandboxError::engine("update container limits", &spec.job_id, &err))
}
