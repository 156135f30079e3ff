//! `DockerSandbox::run`: one job, one container, composed from the verbs
//! (image → create → attach → start → wait | timeout | cancel → inspect → remove).
//!
//! The container is created and attached before anything is started, so no first byte is
//! lost. A job that fits the warm pool's profile skips image, create, attach and start: it
//! gets a container that already runs (`pooled.rs`) and joins this path at `watch`.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attach::{attach, forward_output, write_stdin, ForwardSummary};
use crate::client::DockerSandbox;
use crate::create::create_container;
use crate::error::SandboxError;
use crate::inspect::was_oom_killed;
use crate::kill::kill_container;
use crate::remove::Removal;
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
    /// Runs `spec` in a fresh container, or in a warm pool container when the pool has one
    /// and `spec` fits its profile, and returns how it ended.
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
        let job_id = spec.job_id.clone();
        let (result, removal) = self.run_keeping(spec, output, cancel, started).await;
        match removal {
            Some(removal) => {
                let container_id = removal.container_id().to_owned();
                combine(&job_id, &container_id, result, removal.remove().await)
            }
            None => result,
        }
    }

    /// [`run`](Self::run), except that a container the engine reported stopped by itself
    /// (the job exited or was OOM-killed) is handed back as a [`Removal`] instead of being
    /// removed first, so the caller can send the result before the removal's round trip.
    /// Every other end (timeout, cancel, engine error) is removed here as in `run`: only a
    /// container the engine saw stop is sure to be inert until removed.
    pub async fn run_keeping(
        &self,
        spec: SandboxSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        started: oneshot::Sender<String>,
    ) -> (Result<SandboxOutcome, SandboxError>, Option<Removal>) {
        if let Err(err) = spec.validate() {
            return (Err(err), None);
        }
        if cancel.is_cancelled() {
            return (Ok(cancelled_before_start(String::new())), None);
        }
        let job_id = spec.job_id.clone();
        let claimed = self
            .warm_pool()
            .and_then(|pool| pool.claim_for(&spec).map(|claim| (pool, claim)));
        let (result, removal) = match claimed {
            Some((pool, (warm, script))) => {
                self.run_pooled(spec, pool, warm, script, output, cancel, started)
                    .await
            }
            None => self.run_cold(spec, output, cancel, started).await,
        };
        let stopped_by_itself = matches!(
            &result,
            Ok(outcome) if matches!(outcome.reason, EndReason::Exited | EndReason::Oom)
        );
        match removal {
            Some(removal) if !stopped_by_itself => {
                let container_id = removal.container_id().to_owned();
                let removed = removal.remove().await;
                (combine(&job_id, &container_id, result, removed), None)
            }
            removal => (result, removal),
        }
    }

    /// The cold path: image → create → attach → start → wait; the container comes back for
    /// removal.
    async fn run_cold(
        &self,
        spec: SandboxSpec,
        output: mpsc::Sender<OutputChunk>,
        cancel: CancellationToken,
        started: oneshot::Sender<String>,
    ) -> (Result<SandboxOutcome, SandboxError>, Option<Removal>) {
        tokio::select! {
            biased;
            () = cancel.cancelled() => return (Ok(cancelled_before_start(String::new())), None),
            ready = self.ensure_image(&spec.image, &spec.job_id) => if let Err(err) = ready {
                return (Err(err), None);
            },
        }

        let create_requested = Instant::now();
        let container_id = match create_container(&self.docker, &spec).await {
            Ok(container_id) => container_id,
            Err(err) => {
                // The image may have gone since it was last seen: look again next time.
                self.forget_image(&spec.image);
                return (Err(err), None);
            }
        };
        // Armed from here: if this future is dropped, the container is removed anyway.
        let removal = Removal::new(&self.docker, &container_id, &spec.job_id, None);
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
        (supervised, Some(removal))
    }

    /// Everything between create and remove, for a container that exists but has not been
    /// started: attach, start, write stdin, then watch it to its end.
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
        let (input, attached) =
            attach(&self.docker, container_id, job_id, spec.stdin.is_some()).await?;
        let forwarder = Forwarder(tokio::spawn(forward_output(
            attached,
            output,
            job_id.to_owned(),
        )));

        if cancel.is_cancelled() {
            return Ok(cancelled_before_start(container_id.to_owned()));
        }
        start_container(&self.docker, container_id, job_id).await?;
        let started_at = Instant::now();
        let start_latency = started_at.duration_since(create_requested);
        // Written after start, in its own task: a job that never reads must not block this.
        let _stdin_writer = input.map(|input| {
            AbortOnDrop(tokio::spawn(write_stdin(
                input,
                spec.stdin.clone().unwrap_or_default(),
                job_id.to_owned(),
            )))
        });
        // The caller may have stopped listening; the job runs regardless.
        let _ = started.send(container_id.to_owned());
        let waiting = wait_for_exit(&self.docker, container_id, job_id);
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

    /// From start to the end: wait for exit, timeout or cancel, tell an OOM kill from an
    /// ordinary exit, then drain the output. The same for cold and pooled containers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn watch(
        &self,
        spec: &SandboxSpec,
        container_id: &str,
        started_at: Instant,
        start_latency: Duration,
        waiting: impl std::future::Future<Output = Result<i64, SandboxError>>,
        mut forwarder: Forwarder,
        cancel: CancellationToken,
    ) -> Result<SandboxOutcome, SandboxError> {
        let job_id = spec.job_id.as_str();
        let started_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        tracing::debug!(job_id, container_id, ?start_latency, "job started");
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

/// The job's result combined with its container's removal: a container that could not be
/// removed may still be running, so a clean end is not reported then.
pub(crate) fn combine(
    job_id: &str,
    container_id: &str,
    supervised: Result<SandboxOutcome, SandboxError>,
    removed: Result<(), SandboxError>,
) -> Result<SandboxOutcome, SandboxError> {
    match (supervised, removed) {
        (Ok(outcome), Ok(())) => Ok(outcome),
        (Ok(outcome), Err(err)) => {
            tracing::error!(job_id, container_id, exit_code = outcome.exit_code, error = %err, "job ended but its container could not be removed");
            Err(err)
        }
        (Err(err), removed) => {
            if let Err(remove_err) = removed {
                tracing::error!(job_id, container_id, error = %remove_err, "container could not be removed after a failed job");
            }
            Err(err)
        }
    }
}

pub(crate) fn cancelled_before_start(container_id: String) -> SandboxOutcome {
    SandboxOutcome {
        exit_code: NOT_RUN_EXIT_CODE,
        reason: EndReason::Cancelled,
        container_id,
        start_latency: None,
    }
}

/// The output-forwarding task; aborted if dropped, so it never outlives its job.
pub(crate) struct Forwarder(pub(crate) JoinHandle<ForwardSummary>);

/// A helper task (a stdin writer, a wait) that must not outlive its job.
pub(crate) struct AbortOnDrop<T>(pub(crate) JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

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
