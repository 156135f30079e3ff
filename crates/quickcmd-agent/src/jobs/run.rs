//! One job from slot to final frame: expiry check, audited start, the sandbox, live output,
//! the stored result, the audited end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quickcmd_protocol::types::reason;
use quickcmd_protocol::{JobStatus, StreamName};
use quickcmd_sandbox::{BindMount, EndReason, OutputChunk, SandboxError, SandboxSpec};
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::{LiveJob, QueuedJob};
use crate::audit::{AuditEvent, AuditKind};
use crate::clock;
use crate::state::Agent;
use crate::store::{JobOutcome, StoredFrame};
use crate::stream::StreamSummary;

/// How often stored head frames are flushed to the database while a job runs.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Output chunks in flight between the sandbox reader and this task.
const OUTPUT_CHANNEL: usize = 64;

pub(super) async fn run_job(agent: Arc<Agent>, job: QueuedJob, live: Arc<LiveJob>) {
    let job_id = job.job_id.clone();
    if live.cancel.is_cancelled() {
        let why = live.cancel_reason();
        end_without_running(
            &agent,
            &job,
            &live,
            JobStatus::Failed,
            why,
            "job was cancelled before it started",
        )
        .await;
    } else if job.ttl <= clock::now_unix() {
        end_without_running(
            &agent,
            &job,
            &live,
            JobStatus::Failed,
            reason::EXPIRED,
            "job ttl passed while it waited in the queue",
        )
        .await;
    } else {
        execute(&agent, &job, &live).await;
    }
    agent.job_done(&job_id, true);
}

fn to_stored(frames: Vec<quickcmd_protocol::LogFrame>) -> Vec<StoredFrame> {
    frames
        .into_iter()
        .map(|f| StoredFrame {
            seq: f.seq as i64,
            stream: f.stream.as_str().to_string(),
            // The time the frame was sent, so a replay shows the same frame.
            timestamp_ms: clock::parse_rfc3339_ms(&f.timestamp).unwrap_or_else(clock::now_ms),
            data: f.data,
        })
        .collect()
}

async fn flush(agent: &Agent, job_id: &str, live: &LiveJob) {
    let frames = live.stream.take_unsaved();
    if frames.is_empty() {
        return;
    }
    if let Err(error) = agent.store.append_frames(job_id, &to_stored(frames)).await {
        tracing::error!(job_id, %error, "could not store log frames");
    }
}

async fn execute(agent: &Arc<Agent>, job: &QueuedJob, live: &Arc<LiveJob>) {
    let config = agent.config();
    let started_ms = clock::now_ms();
    let started = Instant::now();
    let start_audit = AuditEvent {
        job_id: Some(job.job_id.clone()),
        controller_id: Some(job.controller_id.clone()),
        status: Some(JobStatus::Running.as_str().to_string()),
        ..AuditEvent::new(AuditKind::StateChange)
    };
    if let Err(error) = agent.audit.append(start_audit).await {
        tracing::error!(job_id = %job.job_id, %error, "audit write failed; the job will not run");
        end_without_running(
            agent,
            job,
            live,
            JobStatus::Failed,
            "audit_unavailable",
            "the audit log could not be written, so the job did not run",
        )
        .await;
        return;
    }
    if let Err(error) = agent
        .store
        .mark_running(&job.job_id, started_ms, None)
        .await
    {
        tracing::error!(job_id = %job.job_id, %error, "could not mark job running");
    }
    agent.metrics.job_started();

    let sandbox = &job.sandbox;
    let spec = SandboxSpec {
        job_id: job.job_id.clone(),
        agent_id: config.agent_id.clone(),
        image: sandbox.image.clone(),
        command: job.command.clone(),
        user: config.limits.sandbox_user.clone(),
        network: sandbox.network,
        cpu_limit: sandbox.cpu_limit,
        memory_limit_bytes: sandbox.memory_limit,
        pids_limit: config.limits.pids_limit,
        timeout: Duration::from_secs(sandbox.timeout_seconds),
        env: sandbox.env.clone(),
        workdir: sandbox.workdir.clone(),
        tmp_size_bytes: config.limits.tmp_bytes,
        workdir_size_bytes: config.limits.workdir_bytes,
        mounts: sandbox
            .mounts
            .iter()
            .filter_map(|name| config.limits.mounts.iter().find(|m| &m.name == name))
            .map(|m| BindMount {
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
            })
            .collect(),
        stdin: None,
    };
    let (output_tx, mut output_rx) = mpsc::channel(OUTPUT_CHANNEL);
    let (started_tx, started_rx) = oneshot::channel();
    let runner = {
        let docker = agent.sandbox.clone();
        let cancel = live.cancel.clone();
        tokio::spawn(async move { docker.run(spec, output_tx, cancel, started_tx).await })
    };

    let mut flush_timer = tokio::time::interval(FLUSH_EVERY);
    loop {
        tokio::select! {
            chunk = output_rx.recv() => match chunk {
                Some(OutputChunk::Stdout(bytes)) => live.stream.push(StreamName::Stdout, &bytes),
                Some(OutputChunk::Stderr(bytes)) => live.stream.push(StreamName::Stderr, &bytes),
                None => break,
            },
            _ = flush_timer.tick() => flush(agent, &job.job_id, live).await,
        }
    }
    let container_id = started_rx.await.ok();
    let result = match runner.await {
        Ok(result) => result,
        Err(join_error) => Err(SandboxError::Engine {
            action: "run",
            job_id: job.job_id.clone(),
            message: format!("sandbox task ended abnormally: {join_error}"),
        }),
    };
    agent.metrics.job_stopped();

    let (status, exit_code, why, error) = match &result {
        Ok(outcome) => {
            if let Some(latency) = outcome.start_latency {
                agent.metrics.sandbox_started(latency);
            }
            match outcome.reason {
                EndReason::Exited => (JobStatus::Completed, outcome.exit_code, None, None),
                EndReason::Timeout => (
                    JobStatus::Failed,
                    124,
                    Some(reason::TIMEOUT),
                    Some(format!(
                        "command timed out after {} s and was killed",
                        sandbox.timeout_seconds
                    )),
                ),
                EndReason::Oom => (
                    JobStatus::Failed,
                    outcome.exit_code,
                    Some(reason::OOM),
                    Some(format!(
                        "command ran out of memory (limit {} bytes) and was killed",
                        sandbox.memory_limit
                    )),
                ),
                EndReason::Cancelled => {
                    let why = live.cancel_reason();
                    (
                        JobStatus::Failed,
                        outcome.exit_code,
                        Some(why),
                        Some(format!("command was killed: {why}")),
                    )
                }
            }
        }
        Err(SandboxError::ImageUnavailable { image, message }) => {
            tracing::warn!(job_id = %job.job_id, image, engine_message = %message, "sandbox image unavailable");
            (
                JobStatus::Failed,
                -1,
                Some(reason::IMAGE_UNAVAILABLE),
                Some(format!("sandbox image `{image}` is not available on this agent and could not be pulled")),
            )
        }
        Err(error) => {
            tracing::error!(job_id = %job.job_id, %error, "sandbox error");
            (
                JobStatus::Failed,
                -1,
                Some(reason::SANDBOX_ERROR),
                Some("the sandbox could not run the command; see the agent log".to_string()),
            )
        }
    };
    let sandbox_id = result
        .as_ref()
        .ok()
        .map(|o| o.container_id.clone())
        .or(container_id)
        .unwrap_or_default();
    finish(
        agent,
        job,
        live,
        Finish {
            status,
            exit_code,
            reason: why,
            error,
            sandbox_id,
            started: Some(started),
        },
    )
    .await;
}

struct Finish {
    status: JobStatus,
    exit_code: i64,
    reason: Option<&'static str>,
    error: Option<String>,
    sandbox_id: String,
    started: Option<Instant>,
}

/// Ends a job that never reached a sandbox (cancelled or expired in the queue, shutdown).
pub(super) async fn end_without_running(
    agent: &Arc<Agent>,
    job: &QueuedJob,
    live: &Arc<LiveJob>,
    status: JobStatus,
    why: &'static str,
    error: &str,
) {
    finish(
        agent,
        job,
        live,
        Finish {
            status,
            exit_code: -1,
            reason: Some(why),
            error: Some(error.to_string()),
            sandbox_id: String::new(),
            started: None,
        },
    )
    .await;
}

async fn finish(agent: &Arc<Agent>, job: &QueuedJob, live: &Arc<LiveJob>, end: Finish) {
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
        sandbox_id: (!end.sandbox_id.is_empty()).then(|| end.sandbox_id.clone()),
        stdout_bytes: stdout.bytes as i64,
        stderr_bytes: stderr.bytes as i64,
        stdout_sha256: stdout.sha256.clone(),
        stderr_sha256: stderr.sha256.clone(),
        stdout_truncated: stdout.truncated,
        stderr_truncated: stderr.truncated,
    };
    match agent.store.finish_job(&job.job_id, outcome).await {
        Ok(true) => {}
        Ok(false) => {
            tracing::warn!(job_id = %job.job_id, "job was already final; result not overwritten")
        }
        Err(error) => tracing::error!(job_id = %job.job_id, %error, "could not store job result"),
    }
    let event = AuditEvent {
        job_id: Some(job.job_id.clone()),
        controller_id: Some(job.controller_id.clone()),
        status: Some(end.status.as_str().to_string()),
        reason: end.reason.map(str::to_string),
        exit_code: Some(end.exit_code),
        command: Some(job.command.clone()),
        details: output_details(&stdout, &stderr, &end.sandbox_id),
        ..AuditEvent::new(AuditKind::Result)
    };
    if let Err(error) = agent.audit.append(event).await {
        tracing::error!(job_id = %job.job_id, %error, "could not write the result to the audit log");
    }
    live.stream.finish(end.status, end.exit_code, ended_ms);
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

fn output_details(
    stdout: &StreamSummary,
    stderr: &StreamSummary,
    sandbox_id: &str,
) -> serde_json::Value {
    json!({
        "sandbox_id": sandbox_id,
        "stdout_bytes": stdout.bytes,
        "stdout_sha256": stdout.sha256,
        "stdout_truncated": stdout.truncated,
        "stderr_bytes": stderr.bytes,
        "stderr_sha256": stderr.sha256,
        "stderr_truncated": stderr.truncated,
    })
}
