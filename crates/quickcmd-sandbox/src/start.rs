//! Start a created (and already attached) container.

use bollard::Docker;

use crate::error::SandboxError;

pub(crate) async fn start_container(
    docker: &Docker,
    container_id: &str,
    job_id: &str,
) -> Result<(), SandboxError> {
    docker
        .start_container(container_id, None)
        .await
        .map_err(|err| SandboxError::engine("start container", job_id, &err))
}
