//! Inspect a stopped container for what its exit code alone does not tell: an OOM kill.

use bollard::Docker;

use crate::error::SandboxError;

/// `State.OOMKilled` as the engine recorded it.
pub(crate) async fn was_oom_killed(
    docker: &Docker,
    container_id: &str,
    job_id: &str,
) -> Result<bool, SandboxError> {
    let inspected = docker
        .inspect_container(container_id, None)
        .await
        .map_err(|err| SandboxError::engine("inspect container", job_id, &err))?;
    Ok(inspected
        .state
        .and_then(|state| state.oom_killed)
        .unwrap_or(false))
}
