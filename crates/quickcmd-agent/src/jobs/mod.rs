//! Accepted jobs: the run queue (`max_concurrent_jobs` running, `max_queued_jobs`
//! waiting), cancellation, and the live streams of jobs that have not ended.

pub mod admit;
mod run;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use quickcmd_protocol::types::reason;
use quickcmd_protocol::JobStatus;
use tokio_util::sync::CancellationToken;

use crate::state::Agent;
use crate::stream::JobStream;
pub use admit::{Refusal, ResolvedSandbox};

/// A job that was accepted and waits for, or holds, a run slot.
#[derive(Debug, Clone)]
pub struct QueuedJob {
    pub job_id: String,
    pub controller_id: String,
    pub command: String,
    pub ttl: i64,
    pub sandbox: ResolvedSandbox,
}

/// A pending or running job: its output and the means to stop it.
pub struct LiveJob {
    pub controller_id: String,
    pub stream: Arc<JobStream>,
    pub cancel: CancellationToken,
    /// Why `cancel` fired: `cancelled` (DELETE) or `agent_shutdown`.
    cancel_reason: Mutex<Option<&'static str>>,
}

impl LiveJob {
    pub fn cancel_with(&self, reason: &'static str) {
        let mut slot = self.cancel_reason.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(reason);
        drop(slot);
        self.cancel.cancel();
    }

    pub fn cancel_reason(&self) -> &'static str {
        self.cancel_reason
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(reason::CANCELLED)
    }
}

#[derive(Default)]
struct QueueState {
    waiting: VecDeque<QueuedJob>,
    running: usize,
    /// Slots promised to submissions that are still being audited and stored.
    reserved: usize,
    live: HashMap<String, Arc<LiveJob>>,
}

/// The run queue. All counters sit under one lock so admission can never over-commit.
#[derive(Default)]
pub struct JobQueue {
    state: Mutex<QueueState>,
}

/// A promised slot; dropping it without `enqueue` gives it back.
pub struct Reservation {
    agent: Arc<Agent>,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            self.agent.jobs.lock().reserved -= 1;
        }
    }
}

/// Outcome of a cancel request.
pub enum CancelOutcome {
    Cancelled,
    NotLive,
}

impl JobQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn live(&self, job_id: &str) -> Option<Arc<LiveJob>> {
        self.lock().live.get(job_id).cloned()
    }

    pub fn running(&self) -> usize {
        self.lock().running
    }

    pub fn live_count(&self) -> usize {
        self.lock().live.len()
    }
}

impl Agent {
    /// Promises a slot if running + waiting + promised stays within the limits.
    pub fn reserve_slot(self: &Arc<Self>) -> Option<Reservation> {
        let config = self.config();
        let mut state = self.jobs.lock();
        let taken = state.running + state.waiting.len() + state.reserved;
        if taken >= config.max_concurrent_jobs + config.max_queued_jobs {
            return None;
        }
        state.reserved += 1;
        Some(Reservation {
            agent: self.clone(),
            armed: true,
        })
    }

    /// Turns a reservation into a queued job and starts what can start.
    pub fn enqueue(self: &Arc<Self>, mut reservation: Reservation, job: QueuedJob) {
        let config = self.config();
        let live = Arc::new(LiveJob {
            controller_id: job.controller_id.clone(),
            stream: Arc::new(JobStream::new(
                &job.job_id,
                config.max_output_bytes,
                config.stream_buffer_frames,
            )),
            cancel: CancellationToken::new(),
            cancel_reason: Mutex::new(None),
        });
        {
            let mut state = self.jobs.lock();
            reservation.armed = false;
            state.reserved -= 1;
            state.live.insert(job.job_id.clone(), live);
            state.waiting.push_back(job);
        }
        self.start_next();
    }

    /// Starts waiting jobs while run slots are free.
    pub(crate) fn start_next(self: &Arc<Self>) {
        let max = self.config().max_concurrent_jobs;
        let mut state = self.jobs.lock();
        while state.running < max {
            let Some(job) = state.waiting.pop_front() else {
                break;
            };
            let Some(live) = state.live.get(&job.job_id).cloned() else {
                continue;
            };
            state.running += 1;
            let agent = self.clone();
            tokio::spawn(async move { run::run_job(agent, job, live).await });
        }
        self.metrics.set_queue_depth(state.waiting.len());
    }

    /// Called by a job's task when it has ended and its final frame is out.
    fn job_done(self: &Arc<Self>, job_id: &str, was_running: bool) {
        {
            let mut state = self.jobs.lock();
            state.live.remove(job_id);
            if was_running {
                state.running -= 1;
            }
        }
        self.start_next();
    }

    /// Cancels a pending or running job of this id.
    pub async fn cancel(self: &Arc<Self>, job_id: &str, reason: &'static str) -> CancelOutcome {
        let (live, waiting) = {
            let mut state = self.jobs.lock();
            let Some(live) = state.live.get(job_id).cloned() else {
                return CancelOutcome::NotLive;
            };
            let position = state.waiting.iter().position(|j| j.job_id == job_id);
            let waiting = position.and_then(|p| state.waiting.remove(p));
            self.metrics.set_queue_depth(state.waiting.len());
            (live, waiting)
        };
        live.cancel_with(reason);
        if let Some(job) = waiting {
            // It never got a slot: end it here.
            run::end_without_running(
                self,
                &job,
                &live,
                JobStatus::Failed,
                reason,
                "job was cancelled before it started",
            )
            .await;
            self.job_done(job_id, false);
        }
        CancelOutcome::Cancelled
    }

    /// Cancels every live job (shutdown after the grace period).
    pub async fn cancel_all(self: &Arc<Self>, reason: &'static str) {
        let ids: Vec<String> = self.jobs.lock().live.keys().cloned().collect();
        for id in ids {
            self.cancel(&id, reason).await;
        }
    }

    /// Fails jobs still waiting for a slot (shutdown: they must not start).
    pub async fn fail_waiting(self: &Arc<Self>, reason: &'static str) {
        let waiting: Vec<QueuedJob> = {
            let mut state = self.jobs.lock();
            let drained = state.waiting.drain(..).collect();
            self.metrics.set_queue_depth(0);
            drained
        };
        for job in waiting {
            if let Some(live) = self.jobs.live(&job.job_id) {
                run::end_without_running(
                    self,
                    &job,
                    &live,
                    JobStatus::Failed,
                    reason,
                    "the agent is shutting down",
                )
                .await;
            }
            self.job_done(&job.job_id, false);
        }
    }
}
