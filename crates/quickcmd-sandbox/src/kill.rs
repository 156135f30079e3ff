//! Kill a running container with SIGKILL, on timeout or cancellation.
//!
//! Killing PID 1 of the container's PID namespace takes every other process in it down too,
//! so no process a job forked outlives this.

use bollard::query_parameters::KillContainerOptionsBuilder;
use bollard::Docker;

use crate::error::{engine_status, SandboxError};

pub(crate) async fn kill_container(
    docker: &Docker,
    container_id: &str,
    job_id: &str,
) -> Result<(), SandboxError> {
    let options = KillContainerOptionsBuilder::new().signal("SIGKILL").build();
    match docker.kill_container(container_id, Some(options)).await {
        Ok(()) => Ok(()),
        // 409: it stopped on its own in the meantime, which is what we wanted.
        Err(err) if engine_status(&err) == Some(409) => Ok(()),
        Err(err) => Err(SandboxError::engine("kill container", job_id, &err)),
    }
}
