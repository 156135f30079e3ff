//! `DockerSandbox::run`: one job, one container, composed from the verbs
//! (image → create → attach → start → wait | timeout | cancel → inspect → remove).
//!
//! The container is created and attached before anything is started, so a later warm pool of
//! pre-created single-use containers can hand `supervise` a container at the attach step.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attach::{attach_output, forward_output, write_stdin, ForwardSummary};
use crate::client::DockerSandbox;
use crate::create::create_container;
use crate::error::SandboxError;
use crate::image::ensure_image;
use crate::inspect::was_oom_killed;
use crate::kill::kill_container;
use crate::remove::{remove_container, ContainerGuard};
use crate::spec::{
    EndReason, OutputChunk, SandboxOutcome, SandboxSpec, CANCELLED_EXIT_CODE, NOT_RUN_EXIT_CODE,
    TIMEOUT_EXIT_CODE,
};
use crate::start::start_container;
use crate::wait::wait_for_exit;

/// After a kill, how long the engine gets to report the container stopped.
const KILL_WAIT_CAP: Duration = Duration::from_secs(10);
/// After the container stopped, how long the last output may take to reach the channel
/// (including a slow reader) before the rest is dropped.
const OUTPUT_DRAIN_CAP: Duration = Duration::from_secs(5);

impl DockerSandbox {
    /// Runs `spec` in a fresh container and returns how it ended.
    ///
    /// Output is forwarded into `output` as it arrives; the container id is sent on `started`
    /// once the container runs (if the job never starts, `started` is dropped instead).
    /// `spec.timeout` counts from start. Cancelling `cancel` kills the container. The
    /// container is removed before this returns, on every path; if this future is dropped
    /// early, the removal happens in a spawned task.
    pub async fn run(
        &self,
        spec: SandboxSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        started: oneshot::Sender<String>,
    ) -> Result<SandboxOutcome, SandboxError> {
        spec.validate()?;
        tokio::select! {
            biased;
            () = cancel.cancelled() => return Ok(cancelled_before_start(String::new())),
            ready = ensure_image(&self.docker, &spec.image, &spec.job_id) => ready?,
        }

        let create_requested = Instant::now();
        let container_id = create_container(&self.docker, &spec).await?;
        let mut guard = ContainerGuard::new(&self.docker, &container_id, &spec.job_id);
        tracing::debug!(job_id = %spec.job_id, %container_id, "container created");

        let supervised = self
            .supervise(
                &spec,
                &container_id,
                create_requested,
                output,
                cancel,
                started,
            )
            .await;

        guard.disarm();
        let removed = remove_container(&self.docker, &container_id, &spec.job_id).await;
        match (supervised, removed) {
            (Ok(outcome), Ok(())) => Ok(outcome),
            // A container that could not be removed may still be running: say so rather
            // than report a clean end.
            (Ok(outcome), Err(err)) => {
                tracing::error!(job_id = %spec.job_id, %container_id, exit_code = outcome.exit_code, error = %err, "job ended but its container could not be removed");
                Err(err)
            }
            (Err(err), removed) => {
                if let Err(remove_err) = removed {
                    tracing::error!(job_id = %spec.job_id, %container_id, error = %remove_err, "container could not be removed after a failed job");
                }
                Err(err)
            }
        }
    }

    /// Everything between create and remove, for a container that exists but has not been
    /// started: attach, start, wait for exit, timeout or cancel, then drain the output.
    async fn supervise(
        &self,
        spec: &SandboxSpec,
        container_id: &str,
        create_requested: Instant,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        started: oneshot::Sender<String>,
    ) -> Result<SandboxOutcome, SandboxError> {
        let job_id = spec.job_id.as_str();
        let (attached, input) =
            attach_output(&self.docker, container_id, job_id, spec.stdin.is_some()).await?;
        let mut forwarder = Forwarder(tokio::spawn(forward_output(
            attached,
            output,
            job_id.to_owned(),
        )));

        if cancel.is_cancelled() {
            return Ok(cancelled_before_start(container_id.to_owned()));
        }
        start_container(&self.docker, container_id, job_id).await?;
        let started_at = Instant::now();
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let start_latency = started_at.duration_since(create_requested);
        tracing::debug!(job_id, container_id, ?start_latency, "container started");
        // The caller may have stopped listening; the job runs regardless.
        let _ = started.send(container_id.to_owned());
        // Written on its own task, while the output is read: a command that writes as it
        // reads would otherwise block on a full pipe.
        if let (Some(input), Some(bytes)) = (input, spec.stdin.clone()) {
            tokio::spawn(write_stdin(input, bytes, job_id.to_owned()));
        }

        let waiting = wait_for_exit(&self.docker, container_id, job_id);
        tokio::pin!(waiting);
        // A timeout too large to represent as an instant never fires.
        let deadline = started_at.checked_add(spec.timeout);
        let timed_out = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let (exit_code, reason) = tokio::select! {
            biased;
            exited = &mut waiting => (exited?, EndReason::Exited),
            () = timed_out => {
                self.kill_and_wait(container_id, job_id, waiting).await;
                (TIMEOUT_EXIT_CODE, EndReason::Timeout)
            }
            () = cancel.cancelled() => {
                let exit_code = self.kill_and_wait(container_id, job_id, waiting).await;
                (exit_code.unwrap_or(CANCELLED_EXIT_CODE), EndReason::Cancelled)
            }
        };

        let reason = if reason == EndReason::Exited {
            match was_oom_killed(&self.docker, container_id, job_id, exit_code, started_unix).await
            {
                Ok(true) => EndReason::Oom,
                Ok(false) => EndReason::Exited,
                Err(err) => {
                    tracing::warn!(job_id, error = %err, "could not tell whether the job was OOM-killed");
                    EndReason::Exited
                }
            }
        } else {
            reason
        };

        let summary = forwarder.drain(OUTPUT_DRAIN_CAP, job_id).await;
        tracing::debug!(job_id, exit_code, ?reason, ?summary, "job ended");
        Ok(SandboxOutcome {
            exit_code,
            reason,
            container_id: container_id.to_owned(),
            start_latency: Some(start_latency),
        })
    }

    /// Kills the container and waits (bounded) for the engine to report its exit code. A
    /// failed kill is only logged: the forced removal that follows kills it as well.
    async fn kill_and_wait(
        &self,
        container_id: &str,
        job_id: &str,
        waiting: impl std::future::Future<Output = Result<i64, SandboxError>>,
    ) -> Option<i64> {
        if let Err(err) = kill_container(&self.docker, container_id, job_id).await {
            tracing::warn!(job_id, error = %err, "kill failed; removal will force it");
        }
        match tokio::time::timeout(KILL_WAIT_CAP, waiting).await {
            Ok(Ok(exit_code)) => Some(exit_code),
            Ok(Err(err)) => {
                tracing::warn!(job_id, error = %err, "no exit code after kill");
                None
            }
            Err(_) => {
                tracing::warn!(
                    job_id,
                    "container did not stop within {KILL_WAIT_CAP:?} of the kill"
                );
                None
            }
        }
    }
}

fn cancelled_before_start(container_id: String) -> SandboxOutcome {
    SandboxOutcome {
        exit_code: NOT_RUN_EXIT_CODE,
        reason: EndReason::Cancelled,
        container_id,
        start_latency: None,
    }
}

/// The output-forwarding task; aborted if dropped, so it never outlives its job.
struct Forwarder(JoinHandle<ForwardSummary>);

impl Forwarder {
    /// Waits for the attach stream to end (the engine closes it once the container's output
    /// is flushed), at most `cap`, so the last bytes reach the channel before `run` returns.
    async fn drain(&mut self, cap: Duration, job_id: &str) -> Option<ForwardSummary> {
        match tokio::time::timeout(cap, &mut self.0).await {
            Ok(Ok(summary)) => Some(summary),
            Ok(Err(err)) => {
                tracing::warn!(job_id, error = %err, "output forwarder failed");
                None
            }
            Err(_) => {
                tracing::warn!(
                    job_id,
                    "output not drained within {cap:?}; the rest is dropped"
                );
                None
            }
        }
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.0.abort();
    }
}
