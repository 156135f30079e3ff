//! Remove containers: the one a job ran in (always, whatever happened), the one left behind
//! when a `run` future is dropped mid-way, and every leftover of an agent at its start.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;

use crate::client::DockerSandbox;
use crate::create::{LABEL_AGENT, LABEL_JOB, LABEL_MANAGED, LABEL_POOL_INSTANCE};
use crate::error::{engine_message, engine_status, SandboxError};
use crate::pool::WarmPool;

/// A failed removal is retried this many times in all before `run` reports it.
const REMOVE_ATTEMPTS: u32 = 3;
const REMOVE_RETRY_DELAY: Duration = Duration::from_millis(200);

/// Force-removes `container_id` (killing it if it still runs) with its anonymous volumes.
/// A container that is already gone, or already being removed, counts as removed.
pub(crate) async fn remove_container(
    docker: &Docker,
    container_id: &str,
    job_id: &str,
) -> Result<(), SandboxError> {
    let mut attempt = 1;
    loop {
        match remove_once(docker, container_id).await {
            Ok(()) => return Ok(()),
            Err(err) if attempt >= REMOVE_ATTEMPTS => {
                return Err(SandboxError::engine("remove container", job_id, &err))
            }
            Err(err) => {
                tracing::warn!(job_id, container_id, attempt, error = %engine_message(&err), "container removal failed, retrying");
                attempt += 1;
                tokio::time::sleep(REMOVE_RETRY_DELAY).await;
            }
        }
    }
}

async fn remove_once(docker: &Docker, container_id: &str) -> Result<(), bollard::errors::Error> {
    let options = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    match docker.remove_container(container_id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(err) if engine_status(&err) == Some(404) => Ok(()),
        Err(err)
            if engine_status(&err) == Some(409)
                && engine_message(&err).contains("already in progress") =>
        {
            Ok(())
        }
        Err(err) => Err(err),
    }
}

/// Removes the container when dropped while armed: if the future driving a job is dropped
/// (its task aborted, the agent shutting down), the container must still not outlive it.
pub(crate) struct ContainerGuard {
    docker: Docker,
    container_id: String,
    job_id: String,
    armed: bool,
}

impl ContainerGuard {
    pub(crate) fn new(docker: &Docker, container_id: &str, job_id: &str) -> Self {
        Self {
            docker: docker.clone(),
            container_id: container_id.to_owned(),
            job_id: job_id.to_owned(),
            armed: true,
        }
    }

    /// The caller removes the container itself from here on.
    pub(crate) fn disarm(&mut self) {
        self.armed = false;
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!(job_id = %self.job_id, container_id = %self.container_id, "no runtime to remove an abandoned container; remove_agent_containers will");
            return;
        };
        let docker = self.docker.clone();
        let container_id = std::mem::take(&mut self.container_id);
        let job_id = std::mem::take(&mut self.job_id);
        runtime.spawn(async move {
            if let Err(err) = remove_container(&docker, &container_id, &job_id).await {
                tracing::error!(%job_id, %container_id, error = %err, "could not remove an abandoned container");
            }
        });
    }
}

/// A stopped job's container that still exists. [`DockerSandbox::run_keeping`] hands it
/// back so the caller can record and send the job's result first and pay for the removal
/// after; dropped without [`Removal::remove`], it is removed in a spawned task, so it never
/// outlives its job either way.
#[must_use = "the container stays until `remove` is awaited or this is dropped"]
pub struct Removal {
    guard: ContainerGuard,
    /// The warm pool the container came from: it retries a failed removal before its next
    /// refill (pool containers carry no job label for the agent's own sweep to find).
    pool: Option<Arc<WarmPool>>,
}

impl std::fmt::Debug for Removal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Removal")
            .field("container_id", &self.guard.container_id)
            .field("job_id", &self.guard.job_id)
            .finish_non_exhaustive()
    }
}

impl Removal {
    pub(crate) fn new(
        docker: &Docker,
        container_id: &str,
        job_id: &str,
        pool: Option<Arc<WarmPool>>,
    ) -> Self {
        Self {
            guard: ContainerGuard::new(docker, container_id, job_id),
            pool,
        }
    }

    /// The container still to be removed.
    pub fn container_id(&self) -> &str {
        &self.guard.container_id
    }

    /// Force-removes the container (retrying a few times); a container already gone counts
    /// as removed.
    pub async fn remove(mut self) -> Result<(), SandboxError> {
        self.guard.disarm();
        let guard = &self.guard;
        let removed = remove_container(&guard.docker, &guard.container_id, &guard.job_id).await;
        if removed.is_err() {
            if let Some(pool) = &self.pool {
                pool.remove_later(&guard.container_id);
            }
        }
        removed
    }
}

impl DockerSandbox {
    /// Force-removes every container of one job of this agent (labels `quickcmd.agent`
    /// and `quickcmd.job`), running or not, created or started. For what the engine kept
    /// of a job that ended in a sandbox error while it was unreachable, once it answers
    /// again.
    pub async fn remove_job_containers(
        &self,
        agent_id: &str,
        job_id: &str,
    ) -> Result<usize, SandboxError> {
        self.remove_labelled(agent_id, Some(job_id)).await
    }

    /// Force-removes every container labelled `quickcmd.agent=<agent_id>` (running or not)
    /// and returns how many were removed. Meant for agent start, when nothing of that agent
    /// can still be running legitimately — except this sandbox's own warm pools (the current
    /// one, which may already be filling, and any a reload replaced, whose containers may
    /// still run a job) are spared; a previous process's pool containers are removed.
    pub async fn remove_agent_containers(&self, agent_id: &str) -> Result<usize, SandboxError> {
        self.remove_labelled(agent_id, None).await
    }

    /// Removes the managed containers of `agent_id` (of one job only, if given).
    async fn remove_labelled(
        &self,
        agent_id: &str,
        job_id: Option<&str>,
    ) -> Result<usize, SandboxError> {
        let cleanup_error = |message: String| SandboxError::Cleanup {
            agent_id: agent_id.to_owned(),
            message,
        };
        let mut labels = vec![
            format!("{LABEL_AGENT}={agent_id}"),
            format!("{LABEL_MANAGED}=true"),
        ];
        if let Some(job_id) = job_id {
            labels.push(format!("{LABEL_JOB}={job_id}"));
        }
        let filters = HashMap::from([("label", labels)]);
        let options = ListContainersOptionsBuilder::new()
            .all(true)
            .filters(&filters)
            .build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(|err| cleanup_error(engine_message(&err)))?;

        let mut removed = 0;
        let mut failures = Vec::new();
        for container in containers {
            let Some(container_id) = container.id else {
                continue;
            };
            let instance = container
                .labels
                .as_ref()
                .and_then(|labels| labels.get(LABEL_POOL_INSTANCE));
            if instance.is_some_and(|instance| self.is_own_pool_instance(instance)) {
                continue;
            }
            match remove_once(&self.docker, &container_id).await {
                Ok(()) => removed += 1,
                Err(err) => failures.push(format!("{container_id}: {}", engine_message(&err))),
            }
        }
        if failures.is_empty() {
            if removed > 0 {
                tracing::info!(agent_id, job_id, removed, "removed leftover containers");
            }
            Ok(removed)
        } else {
            Err(cleanup_error(format!(
                "removed {removed}, failed {}: {}",
                failures.len(),
                failures.join("; ")
            )))
        }
    }
}
