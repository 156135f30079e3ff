//! A job that got a slot: its audited start, the sandbox spec, the sandbox run with its
//! output pumped into the job's stream, then [`JobEnd::from_sandbox`] and the end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use quickcmd_protocol::{reason, JobStatus, StreamName};
use quickcmd_sandbox::{
    BindMount, OutputChunk, Removal, SandboxError, SandboxOutcome, SandboxSpec,
};
use tokio::sync::{mpsc, oneshot};

use super::coalesce::Coalescer;
use super::ending::{self, JobEnd};
use crate::admission::with_requested_by;
use crate::audit::{AuditEvent, AuditKind};
use crate::clock;
use crate::config::AgentConfig;
use crate::queue::{LiveJob, QueuedJob};
use crate::state::Agent;

/// How often stored head frames are flushed to the database while a job runs.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Output chunks in flight between the sandbox reader and this task.
const OUTPUT_CHANNEL: usize = 64;

pub(super) async fn execute(agent: &Arc<Agent>, job: &QueuedJob, live: &Arc<LiveJob>) {
    let config = agent.config();
    let started_ms = clock::now_ms();
    let started = Instant::now();
    let start_audit = AuditEvent {
        job_id: Some(job.job_id.clone()),
        controller_id: Some(job.controller_id.clone()),
        status: Some(JobStatus::Running.as_str().to_string()),
        details: with_requested_by(serde_json::Value::Null, job.requested_by.as_deref()),
        ..AuditEvent::new(AuditKind::StateChange)
    };
    if let Err(error) = agent.audit.append(start_audit).await {
        tracing::error!(job_id = %job.job_id, %error, "audit write failed; the job will not run");
        let end = JobEnd::not_run(
            reason::AUDIT_UNAVAILABLE,
            "the audit log could not be written, so the job did not run",
        );
        ending::finish(agent, job, live, end).await;
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

    let spec = sandbox_spec(&config, job);
    let (result, removal, container_id) = run_sandbox(agent, job, live, spec).await;
    agent.metrics.job_stopped();
    if let Ok(SandboxOutcome {
        start_latency: Some(latency),
        ..
    }) = &result
    {
        agent.metrics.sandbox_started(*latency);
    }
    let end = JobEnd::from_sandbox(job, live, &result, container_id, started);
    ending::finish(agent, job, live, end).await;
    // The result is stored and sent; the stopped container goes now, before the slot is
    // given back, so no more containers exist than `max_concurrent_jobs`.
    if let Some(removal) = removal {
        let container_id = removal.container_id().to_owned();
        if let Err(error) = removal.remove().await {
            agent.metrics.container_remove_failed();
            tracing::error!(job_id = %job.job_id, %container_id, %error, "the job's stopped container could not be removed; retrying in the background");
            ending::keep_removing_job_containers(agent, &job.job_id);
        }
    }
}

/// The container this job gets: its resolved sandbox plus the agent-wide limits.
pub(crate) fn sandbox_spec(config: &AgentConfig, job: &QueuedJob) -> SandboxSpec {
    let sandbox = &job.sandbox;
    let limits = &config.limits;
    SandboxSpec {
        job_id: job.job_id.clone(),
        agent_id: config.agent_id.clone(),
        image: sandbox.image.clone(),
        command: job.command.clone(),
        user: limits.sandbox_user.clone(),
        network: sandbox.network,
        cpu_limit: sandbox.cpu_limit,
        memory_limit_bytes: sandbox.memory_limit,
        pids_limit: limits.pids_limit,
        timeout: Duration::from_secs(sandbox.timeout_seconds),
        env: sandbox.env.clone(),
        workdir: sandbox.workdir.clone(),
        tmp_size_bytes: limits.tmp_bytes,
        workdir_size_bytes: limits.workdir_bytes,
        mounts: sandbox
            .mounts
            .iter()
            .filter_map(|name| limits.mounts.iter().find(|m| &m.name == name))
            .map(|m| BindMount {
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
            })
            .collect(),
        stdin: job.stdin.clone(),
    }
}

/// Sleeps until `deadline`; forever when there is none (the branch is disabled then).
async fn sleep_until_some(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Runs the sandbox on its own task and pumps its output into the job's stream (flushing
/// stored frames every [`FLUSH_EVERY`]) until the output ends. Returns the sandbox's result,
/// the stopped container still to remove (if the sandbox left that to us) and the
/// container id, if the container was started.
async fn run_sandbox(
    agent: &Agent,
    job: &QueuedJob,
    live: &LiveJob,
    spec: SandboxSpec,
) -> (
    Result<SandboxOutcome, SandboxError>,
    Option<Removal>,
    Option<String>,
) {
    let (output_tx, mut output_rx) = mpsc::channel(OUTPUT_CHANNEL);
    let (started_tx, started_rx) = oneshot::channel();
    let runner = {
        let docker = agent.sandbox.clone();
        let cancel = live.cancel.clone();
        tokio::spawn(async move {
            docker
                .run_keeping(spec, output_tx, cancel, started_tx)
                .await
        })
    };

    let mut flush_timer = tokio::time::interval(FLUSH_EVERY);
    let mut coalescer = Coalescer::default();
    loop {
        let deadline = coalescer.deadline();
        tokio::select! {
            chunk = output_rx.recv() => match chunk {
                Some(OutputChunk::Stdout(bytes)) => coalescer.add(&live.stream, StreamName::Stdout, &bytes),
                Some(OutputChunk::Stderr(bytes)) => coalescer.add(&live.stream, StreamName::Stderr, &bytes),
                None => break,
            },
            () = sleep_until_some(deadline), if deadline.is_some() => coalescer.flush(&live.stream),
            _ = flush_timer.tick() => ending::flush(agent, &job.job_id, live).await,
        }
    }
    coalescer.flush(&live.stream);
    let container_id = started_rx.await.ok();
    let (result, removal) = match runner.await {
        Ok(ran) => ran,
        Err(join_error) => (
            Err(SandboxError::Engine {
                action: "run",
                job_id: job.job_id.clone(),
                message: format!("sandbox task ended abnormally: {join_error}"),
            }),
            None,
        ),
    };
    (result, removal, container_id)
}
