//! How a job ended, and writing that end everywhere it goes: the last stored frames, the
//! stored result, the `result` audit row, the final frame, metrics and one log line.

use std::time::Instant;

use quickcmd_protocol::{reason, JobStatus};
use quickcmd_sandbox::{
    EndReason, SandboxError, SandboxOutcome, NOT_RUN_EXIT_CODE, TIMEOUT_EXIT_CODE,
};
use serde_json::json;

use crate::admission::with_requested_by;
use crate::audit::{AuditEvent, AuditKind};
use crate::clock;
use crate::queue::{LiveJob, QueuedJob};
use crate::state::Agent;
use crate::store::{JobOutcome, StoredFrame};
use crate::stream::{Frame, StreamSummary};

/// How a job ended.
pub(super) struct JobEnd {
    pub status: JobStatus,
    pub exit_code: i64,
    /// `result.reason`; `None` for a command that exited on its own.
    pub reason: Option<&'static str>,
    /// A sentence for the client about why it failed.
    pub error: Option<String>,
    /// The container it ran in; `None` if none was started.
    pub sandbox_id: Option<String>,
    /// When it got its slot; `None` if it never ran.
    pub started: Option<Instant>,
}

impl JobEnd {
    /// A job that never reached a sandbox (cancelled or expired in the queue, shutdown,
    /// audit log unavailable).
    pub(super) fn not_run(why: &'static str, error: &str) -> JobEnd {
        JobEnd {
            status: JobStatus::Failed,
            exit_code: NOT_RUN_EXIT_CODE,
            reason: Some(why),
            error: Some(error.to_string()),
            sandbox_id: None,
            started: None,
        }
    }

    /// Maps what the sandbox reported to a status, exit code and reason.
    pub(super) fn from_sandbox(
        job: &QueuedJob,
        live: &LiveJob,
        result: &Result<SandboxOutcome, SandboxError>,
        container_id: Option<String>,
        started: Instant,
    ) -> JobEnd {
        let sandbox = &job.sandbox;
        let failed = |exit_code, why, error| JobEnd {
            status: JobStatus::Failed,
            exit_code,
            reason: Some(why),
            error: Some(error),
            sandbox_id: None,
            started: Some(started),
        };
        let end = match result {
            Ok(outcome) => match outcome.reason {
                EndReason::Exited => JobEnd {
                    status: JobStatus::Completed,
                    exit_code: outcome.exit_code,
                    reason: None,
                    error: None,
                    sandbox_id: None,
                    started: Some(started),
                },
                EndReason::Timeout => failed(
                    TIMEOUT_EXIT_CODE,
                    reason::TIMEOUT,
                    format!(
                        "command timed out after {} s and was killed",
                        sandbox.timeout_seconds
                    ),
                ),
                EndReason::Oom => failed(
                    outcome.exit_code,
                    reason::OOM,
                    format!(
                        "command ran out of memory (limit {} bytes) and was killed",
                        sandbox.memory_limit
                    ),
                ),
                EndReason::Cancelled => {
                    let why = live.cancel_reason();
                    failed(outcome.exit_code, why, format!("command was killed: {why}"))
                }
            },
            Err(SandboxError::ImageUnavailable { image, message }) => {
                tracing::warn!(job_id = %job.job_id, image, engine_message = %message, "sandbox image unavailable");
                failed(
                    NOT_RUN_EXIT_CODE,
                    reason::IMAGE_UNAVAILABLE,
                    format!("sandbox image `{image}` is not available on this agent and could not be pulled"),
                )
            }
            Err(error) => {
                tracing::error!(job_id = %job.job_id, %error, "sandbox error");
                failed(
                    NOT_RUN_EXIT_CODE,
                    reason::SANDBOX_ERROR,
                    "the sandbox could not run the command; see the agent log".to_string(),
                )
            }
        };
        let sandbox_id = result
            .as_ref()
            .ok()
            .map(|o| o.container_id.clone())
            .or(container_id)
            .filter(|id| !id.is_empty());
        JobEnd { sandbox_id, ..end }
    }
}

fn to_stored(frames: Vec<Frame>) -> Vec<StoredFrame> {
    frames
        .into_iter()
        .map(|f| StoredFrame {
            seq: f.log.seq as i64,
            stream: f.log.stream.as_str().to_string(),
            // The time the frame was sent, so a replay shows the same frame.
            timestamp_ms: clock::parse_rfc3339_ms(&f.log.timestamp).unwrap_or_else(clock::now_ms),
            data: f.bytes,
        })
        .collect()
}

/// Stores the head frames not stored yet.
pub(super) async fn flush(agent: &Agent, job_id: &str, live: &LiveJob) {
    let frames = live.stream.take_unsaved();
    if frames.is_empty() {
        return;
    }
    if let Err(error) = agent.store.append_frames(job_id, &to_stored(frames)).await {
        tracing::error!(job_id, %error, "could not store log frames");
    }
}

/// How often, and for how long, the container of a job that ended in a sandbox error is
/// tried again: the engine may have been away, and kept it.
const LEFTOVER_RETRY_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
const LEFTOVER_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// A job that ended in a sandbox error may have left a container (created, or started) in
/// an engine that was unreachable (stopped, restarting) when the sandbox tried to remove
/// it: remove every container labelled with the job once the engine answers again, so
/// nothing of the job outlives it.
fn remove_leftover_containers(agent: &Agent, job_id: &str, end: &JobEnd) {
    if end.reason == Some(reason::SANDBOX_ERROR) {
        keep_removing_job_containers(agent, job_id);
    }
}

/// Removes every container labelled with the job, in the background, until the engine
/// answers (at most [`LEFTOVER_RETRY_FOR`]).
pub(super) fn keep_removing_job_containers(agent: &Agent, job_id: &str) {
    let sandbox = agent.sandbox.clone();
    let agent_id = agent.config().agent_id.clone();
    let job_id = job_id.to_string();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + LEFTOVER_RETRY_FOR;
        while tokio::time::Instant::now() < deadline {
            match sandbox.remove_job_containers(&agent_id, &job_id).await {
                Ok(_) => return,
                Err(error) => {
                    tracing::debug!(%job_id, %error, "leftover containers not removed yet")
                }
            }
            tokio::time::sleep(LEFTOVER_RETRY_EVERY).await;
        }
        tracing::error!(%job_id, "gave up removing the containers of a job that ended in a sandbox error");
    });
}

/// Writes the end: frames, stored result, audit row, final frame, metrics, log line.
pub(super) async fn finish(agent: &Agent, job: &QueuedJob, live: &LiveJob, end: JobEnd) {
    remove_leftover_containers(agent, &job.job_id, &end);
    flush(agent, &job.job_id, live).await;
    let (rest, stdout, stderr) = live.stream.finish_output();
    if !rest.is_empty() {
        if let Err(error) = agent
            .store
            .append_frames(&job.job_id, &to_stored(rest))
            .await
        {
            tracing::error!(job_id = %job.job_id, %error, "could not store log frames");
        }
    }
    let ended_ms = clock::now_ms();
    let outcome = JobOutcome {
        status: end.status,
        reason: end.reason.map(str::to_string),
        error: end.error.clone(),
        exit_code: end.exit_code,
        ended_at_ms: ended_ms,
        sandbox_id: end.sandbox_id.clone(),
        stdout_bytes: stdout.bytes as i64,
        stderr_bytes: stderr.bytes as i64,
        stdout_sha256: stdout.sha256.clone(),
        stderr_sha256: stderr.sha256.clone(),
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
    };
    let event = AuditEvent {
        job_id: Some(job.job_id.clone()),
        controller_id: Some(job.controller_id.clone()),
        status: Some(end.status.as_str().to_string()),
        reason: end.reason.map(str::to_string),
        exit_code: Some(end.exit_code),
        command: Some(job.command.clone()),
        details: with_requested_by(
            output_details(&stdout, &stderr, end.sandbox_id.as_deref()),
            job.requested_by.as_deref(),
        ),
        ..AuditEvent::new(AuditKind::Result)
    };
    // The result row is written before the store marks the job final, so a client that
    // sees the final status can always be given the witness of that row.
    let witness = match agent.audit.append_head(event).await {
        Ok(head) => agent.witness(&job.controller_id, &head),
        Err(error) => {
            tracing::error!(job_id = %job.job_id, %error, "could not write the result to the audit log");
            None
        }
    };
    match agent.store.finish_job(&job.job_id, outcome).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(job_id = %job.job_id, "job was already final; result not overwritten")
        }
        Err(error) => tracing::error!(job_id = %job.job_id, %error, "could not store job result"),
    }
    live.stream
        .finish(end.status, end.exit_code, ended_ms, witness);
    let duration = end.started.map(|s| s.elapsed()).unwrap_or_default();
    agent
        .metrics
        .job_ended(end.status == JobStatus::Completed, duration);
    tracing::info!(
        job_id = %job.job_id,
        controller = %job.controller_id,
        status = end.status.as_str(),
        exit_code = end.exit_code,
        reason = end.reason.unwrap_or(""),
        duration_ms = duration.as_millis() as u64,
        "job finished"
    );
}

/// The `details` of the `result` audit row. `sandbox_id` is `""` when no container ran,
/// as the row has always recorded it.
fn output_details(
    stdout: &StreamSummary,
    stderr: &StreamSummary,
    sandbox_id: Option<&str>,
) -> serde_json::Value {
    json!({
        "sandbox_id": sandbox_id.unwrap_or(""),
        "stdout_bytes": stdout.bytes,
        "stdout_sha256": stdout.sha256,
        "stdout_truncated": stdout.truncated,
        "stderr_bytes": stderr.bytes,
        "stderr_sha256": stderr.sha256,
        "stderr_truncated": stderr.truncated,
    })
}
