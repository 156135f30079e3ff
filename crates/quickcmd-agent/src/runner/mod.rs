//! The life cycle of an accepted job: queued → started when a slot is free → run in its
//! sandbox → ended (or cancelled / failed while waiting). The queue's data lives in
//! `queue`; this module drives it.
//!
//! - `execute.rs`: one job from slot to sandbox exit (start audit, spec, output pump);
//! - `coalesce.rs`: small output writes gathered into frames (by size and a few ms);
//! - `ending.rs`: how the job ended, and writing that end everywhere it goes.

mod coalesce;
mod ending;
mod execute;

use std::sync::Arc;

use quickcmd_protocol::reason;

use self::ending::JobEnd;
pub(crate) use self::execute::sandbox_spec;
use crate::clock;
use crate::queue::{LiveJob, QueuedJob, Reservation};
use crate::state::Agent;
use crate::stream::JobStream;

/// Outcome of a cancel request.
pub(crate) enum CancelOutcome {
    Cancelled,
    NotLive,
}

/// Turns a reservation into a queued job and starts what can start.
pub(crate) fn enqueue(agent: &Arc<Agent>, reservation: Reservation, job: QueuedJob) {
    let config = agent.config();
    let stream = JobStream::with_frame_cap(
        &job.job_id,
        config.max_output_bytes,
        config.max_output_frames,
        config.stream_buffer_frames,
    );
    let live = Arc::new(LiveJob::new(stream));
    agent.jobs.enqueue(reservation, job, live);
    start_next(agent);
}

/// Starts waiting jobs while run slots are free.
fn start_next(agent: &Arc<Agent>) {
    let config = agent.config();
    let startable = agent.jobs.take_startable(
        config.max_concurrent_jobs,
        config.max_running_jobs_per_controller,
        &agent.metrics,
    );
    for (job, live) in startable {
        let agent = agent.clone();
        tokio::spawn(async move { run_job(agent, job, live).await });
    }
}

/// Called when a job has ended and its final frame is out: frees its slot.
fn job_done(agent: &Arc<Agent>, job_id: &str, was_running: bool) {
    agent.jobs.release(job_id, was_running);
    start_next(agent);
}

/// One job, from its slot to its final frame.
async fn run_job(agent: Arc<Agent>, job: QueuedJob, live: Arc<LiveJob>) {
    if live.cancel.is_cancelled() {
        let why = live.cancel_reason();
        let end = JobEnd::not_run(why, "job was cancelled before it started");
        ending::finish(&agent, &job, &live, end).await;
    } else if job.ttl <= clock::now_unix() {
        let end = JobEnd::not_run(
            reason::EXPIRED,
            "job ttl passed while it waited in the queue",
        );
        ending::finish(&agent, &job, &live, end).await;
    } else {
        execute::execute(&agent, &job, &live).await;
    }
    job_done(&agent, &job.job_id, true);
}

/// Cancels a pending or running job of this id.
pub(crate) async fn cancel(
    agent: &Arc<Agent>,
    job_id: &str,
    reason: &'static str,
) -> CancelOutcome {
    let Some((live, waiting)) = agent.jobs.withdraw(job_id, &agent.metrics) else {
        return CancelOutcome::NotLive;
    };
    live.cancel_with(reason);
    if let Some(job) = waiting {
        // It never got a slot: end it here.
        let end = JobEnd::not_run(reason, "job was cancelled before it started");
        ending::finish(agent, &job, &live, end).await;
        job_done(agent, job_id, false);
    }
    CancelOutcome::Cancelled
}

/// Cancels every live job (shutdown after the grace period).
pub(crate) async fn cancel_all(agent: &Arc<Agent>, reason: &'static str) {
    for id in agent.jobs.live_ids() {
        cancel(agent, &id, reason).await;
    }
}

/// Fails jobs still waiting for a slot (shutdown: they must not start).
pub(crate) async fn fail_waiting(agent: &Arc<Agent>, reason: &'static str) {
    for job in agent.jobs.drain_waiting(&agent.metrics) {
        if let Some(live) = agent.jobs.live(&job.job_id) {
            let end = JobEnd::not_run(reason, "the agent is shutting down");
            ending::finish(agent, &job, &live, end).await;
        }
        job_done(agent, &job.job_id, false);
    }
}
