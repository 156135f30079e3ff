//! Wait for a started container to stop and read its exit code.

use bollard::errors::Error as BollardError;
use bollard::query_parameters::WaitContainerOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use crate::error::SandboxError;

/// Resolves with the exit code once the container is not running. Call after start: a
/// container that already exited answers at once.
pub(crate) async fn wait_for_exit(
    docker: &Docker,
    container_id: &str,
    job_id: &str,
) -> Result<i64, SandboxError> {
    let options = WaitContainerOptionsBuilder::new()
        .condition("not-running")
        .build();
    let mut waiting = docker.wait_container(container_id, Some(options));
    match waiting.next().await {
        Some(Ok(response)) => Ok(response.status_code),
        // bollard turns every non-zero exit into this error; for us it is an ordinary result.
        Some(Err(BollardError::DockerContainerWaitError { code, error })) => {
            if !error.is_empty() {
                tracing::debug!(job_id, %error, code, "engine reported a wait error");
            }
            Ok(code)
        }
        Some(Err(err)) => Err(SandboxError::engine("wait for container", job_id, &err)),
        None => Err(SandboxError::Engine {
            action: "wait for container",
            job_id: job_id.to_owned(),
            message: "the wait stream ended without an exit code".to_owned(),
        }),
    }
}
