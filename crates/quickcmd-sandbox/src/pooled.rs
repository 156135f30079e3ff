//! One job in a warm pool container: update its limits if the job's differ from the profile,
//! write the job's script (and then its stdin) to the container's attached stdin, and watch
//! it exactly as a cold container — the exit code comes from the engine's wait, which was
//! issued when the container started, never from anything the job prints. The container is
//! handed back for removal afterwards, never reused.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attach::{forward_output, write_stdin};
use crate::client::DockerSandbox;
use crate::error::SandboxError;
use crate::pool::{WarmContainer, WarmPool};
use crate::remove::Removal;
use crate::run::{cancelled_before_start, AbortOnDrop, Forwarder};
use crate::spec::{OutputChunk, SandboxOutcome, SandboxSpec};
use crate::update::update_limits;

impl DockerSandbox {
    /// Runs `spec` in `warm`, which `pool` handed out for it, with `script` from
    /// `job_script(&spec)`; the container comes back for removal.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run_pooled(
        &self,
        spec: SandboxSpec,
        pool: Arc<WarmPool>,
        mut warm: WarmContainer,
        script: Vec<u8>,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        started: oneshot::Sender<String>,
    ) -> (Result<SandboxOutcome, SandboxError>, Option<Removal>) {
        let container_id = warm.container_id.clone();
        tracing::debug!(job_id = %spec.job_id, %container_id, "job claimed a warm pool container");
        // The removal takes over from the pool's guard before anything can fail: if it
        // cannot remove the container (the engine away), the pool tries again before its
        // next refill — the container carries no job label for the agent's own sweep.
        warm.guard.disarm();
        let removal = Removal::new(
            &self.docker,
            &container_id,
            &spec.job_id,
            Some(pool.clone()),
        );
        let supervised = self
            .supervise_pooled(&spec, &pool, &mut warm, script, output, cancel, started)
            .await;
        drop(warm);
        (supervised, Some(removal))
    }

    #[allow(clippy::too_many_arguments)]
    async fn supervise_pooled(
        &self,
        spec: &SandboxSpec,
        pool: &WarmPool,
        warm: &mut WarmContainer,
        script: Vec<u8>,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        started: oneshot::Sender<String>,
    ) -> Result<SandboxOutcome, SandboxError> {
        let claimed_at = Instant::now();
        let job_id = spec.job_id.as_str();
        let container_id = warm.container_id.as_str();
        if pool.limits_differ(spec) {
            update_limits(&self.docker, container_id, spec).await?;
        }
        if cancel.is_cancelled() {
            return Ok(cancelled_before_start(container_id.to_owned()));
        }
        // The output stream was attached before the container started; nothing was written
        // to it while idle, so the job's first byte is the first byte forwarded.
        let attached = std::mem::replace(&mut warm.output, Box::pin(futures_util::stream::empty()));
        let forwarder = Forwarder(tokio::spawn(forward_output(
            attached,
            output,
            job_id.to_owned(),
        )));

        let mut input = std::mem::replace(&mut warm.input, Box::pin(tokio::io::sink()));
        let written = async {
            input.write_all(&script).await?;
            input.flush().await
        };
        written.await.map_err(|err| SandboxError::Engine {
            action: "write the job script to the warm container",
            job_id: job_id.to_owned(),
            message: err.to_string(),
        })?;
        let started_at = Instant::now();
        let start_latency = started_at.duration_since(claimed_at);
        // The rest of stdin is the job's: its bytes, then end of file.
        let _stdin_writer = AbortOnDrop(tokio::spawn(write_stdin(
            input,
            spec.stdin.clone().unwrap_or_default(),
            job_id.to_owned(),
        )));
        let _ = started.send(container_id.to_owned());

        let exited = &mut warm.exited;
        let waiting = async {
            match exited.await {
                Ok(Ok(exit_code)) => Ok(exit_code),
                Ok(Err(SandboxError::Engine {
                    action, message, ..
                })) => Err(SandboxError::Engine {
                    action,
                    job_id: job_id.to_owned(),
                    message,
                }),
                Ok(Err(err)) => Err(err),
                Err(join) => Err(SandboxError::Engine {
                    action: "wait for container",
                    job_id: job_id.to_owned(),
                    message: format!("the wait task ended: {join}"),
                }),
            }
        };
        self.watch(
            spec,
            container_id,
            started_at,
            start_latency,
            waiting,
            forwarder,
            cancel,
        )
        .await
    }
}
