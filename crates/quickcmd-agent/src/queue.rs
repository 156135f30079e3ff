//! The run queue's data: jobs waiting for a slot, the count of running ones, slots promised
//! to submissions still being audited, and the live stream and cancel token of every job
//! that has not ended. All counters sit under one lock so admission can never over-commit.
//!
//! This module knows nothing of `Agent`: it is plain data and bookkeeping. Starting,
//! running and ending jobs is `runner`'s work.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use quickcmd_protocol::reason;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::stream::JobStream;

/// The sandbox a job will get: its request filled in with defaults, inside the caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ResolvedSandbox {
    pub image: String,
    pub timeout_seconds: u64,
    pub cpu_limit: f64,
    pub memory_limit: i64,
    pub network: bool,
    pub mounts: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
}

/// A job that was accepted and waits for, or holds, a run slot.
#[derive(Debug, Clone)]
pub(crate) struct QueuedJob {
    pub job_id: String,
    pub controller_id: String,
    pub command: String,
    pub ttl: i64,
    pub sandbox: ResolvedSandbox,
    /// The bytes for the command's standard input (v1.1); `None`: end of file at once.
    pub stdin: Option<Vec<u8>>,
    /// The payload's `requested_by` (v1.1), for the job's audit rows.
    pub requested_by: Option<String>,
}

/// A pending or running job: its output and the means to stop it.
pub(crate) struct LiveJob {
    pub stream: Arc<JobStream>,
    pub cancel: CancellationToken,
    /// Why `cancel` fired: `cancelled` (DELETE) or `agent_shutdown`.
    cancel_reason: Mutex<Option<&'static str>>,
}

impl LiveJob {
    pub(crate) fn new(stream: JobStream) -> LiveJob {
        LiveJob {
            stream: Arc::new(stream),
            cancel: CancellationToken::new(),
            cancel_reason: Mutex::new(None),
        }
    }

    pub(crate) fn cancel_with(&self, reason: &'static str) {
        let mut slot = self.cancel_reason.lock().unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert(reason);
        drop(slot);
        self.cancel.cancel();
    }

    pub(crate) fn cancel_reason(&self) -> &'static str {
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

/// The run queue: one lock over every counter.
#[derive(Default)]
pub(crate) struct JobQueue {
    state: Arc<Mutex<QueueState>>,
}

/// A promised slot; dropping it without [`JobQueue::enqueue`] gives it back. It holds the
/// queue's state and nothing else.
pub(crate) struct Reservation {
    state: Arc<Mutex<QueueState>>,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            lock(&self.state).reserved -= 1;
        }
    }
}

fn lock(state: &Mutex<QueueState>) -> MutexGuard<'_, QueueState> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl JobQueue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        lock(&self.state)
    }

    pub(crate) fn live(&self, job_id: &str) -> Option<Arc<LiveJob>> {
        self.lock().live.get(job_id).cloned()
    }

    pub(crate) fn running(&self) -> usize {
        self.lock().running
    }

    pub(crate) fn live_count(&self) -> usize {
        self.lock().live.len()
    }

    /// The ids of every job that has not ended.
    pub(crate) fn live_ids(&self) -> Vec<String> {
        self.lock().live.keys().cloned().collect()
    }

    /// Promises a slot if running + waiting + promised stays under `capacity`.
    pub(crate) fn reserve(&self, capacity: usize) -> Option<Reservation> {
        let mut state = self.lock();
        let taken = state.running + state.waiting.len() + state.reserved;
        if taken >= capacity {
            return None;
        }
        state.reserved += 1;
        Some(Reservation {
            state: self.state.clone(),
            armed: true,
        })
    }

    /// Turns a reservation into a waiting job.
    pub(crate) fn enqueue(&self, mut reservation: Reservation, job: QueuedJob, live: Arc<LiveJob>) {
        let mut state = self.lock();
        reservation.armed = false;
        state.reserved -= 1;
        state.live.insert(job.job_id.clone(), live);
        state.waiting.push_back(job);
    }

    /// Takes waiting jobs while fewer than `max_running` run, counting each as running.
    pub(crate) fn take_startable(
        &self,
        max_running: usize,
        metrics: &Metrics,
    ) -> Vec<(QueuedJob, Arc<LiveJob>)> {
        let mut state = self.lock();
        let mut started = Vec::new();
        while state.running < max_running {
            let Some(job) = state.waiting.pop_front() else {
                break;
            };
            let Some(live) = state.live.get(&job.job_id).cloned() else {
                continue;
            };
            state.running += 1;
            started.push((job, live));
        }
        metrics.set_queue_depth(state.waiting.len());
        started
    }

    /// Forgets a job that has ended; frees its run slot if it held one.
    pub(crate) fn release(&self, job_id: &str, was_running: bool) {
        let mut state = self.lock();
        state.live.remove(job_id);
        if was_running {
            state.running -= 1;
        }
    }

    /// The live job of this id, and the job itself if it was still waiting (it is taken
    /// out of the queue). `None` when no such job is live.
    pub(crate) fn withdraw(
        &self,
        job_id: &str,
        metrics: &Metrics,
    ) -> Option<(Arc<LiveJob>, Option<QueuedJob>)> {
        let mut state = self.lock();
        let live = state.live.get(job_id).cloned()?;
        let position = state.waiting.iter().position(|j| j.job_id == job_id);
        let waiting = position.and_then(|p| state.waiting.remove(p));
        metrics.set_queue_depth(state.waiting.len());
        Some((live, waiting))
    }

    /// Takes every waiting job out of the queue.
    pub(crate) fn drain_waiting(&self, metrics: &Metrics) -> Vec<QueuedJob> {
        let mut state = self.lock();
        let drained = state.waiting.drain(..).collect();
        metrics.set_queue_depth(0);
        drained
    }
}
