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

/// How many jobs one controller has in each state.
#[derive(Default, Clone, Copy)]
struct Share {
    running: usize,
    waiting: usize,
    reserved: usize,
    /// When this controller last got a run slot (a tick of [`QueueState::starts`]).
    last_start: u64,
}

impl Share {
    fn total(&self) -> usize {
        self.running + self.waiting + self.reserved
    }
}

#[derive(Default)]
struct QueueState {
    /// Waiting jobs per controller, each in arrival order.
    waiting: BTreeMap<String, VecDeque<QueuedJob>>,
    waiting_total: usize,
    running: usize,
    /// Slots promised to submissions that are still being audited and stored.
    reserved: usize,
    /// Per-controller counts; an entry goes when the controller has nothing left.
    shares: HashMap<String, Share>,
    /// The controller of each running job.
    running_owner: HashMap<String, String>,
    /// Slots handed out so far: the clock of `Share::last_start`.
    starts: u64,
    live: HashMap<String, Arc<LiveJob>>,
}

impl QueueState {
    fn share(&mut self, controller_id: &str) -> &mut Share {
        self.shares.entry(controller_id.to_owned()).or_default()
    }

    /// Forgets a controller's share once it holds nothing, keeping its place in the
    /// rotation only while it has jobs.
    fn tidy(&mut self, controller_id: &str) {
        if self
            .shares
            .get(controller_id)
            .is_some_and(|s| s.total() == 0)
        {
            self.shares.remove(controller_id);
        }
    }

    /// The controller whose turn it is: it has a waiting job and is under its running
    /// quota; fewest running first, then the one served longest ago.
    fn next_controller(&self, max_running_per_controller: usize) -> Option<String> {
        self.waiting
            .keys()
            .filter_map(|id| Some((id, self.shares.get(id).copied()?)))
            .filter(|(_, share)| share.running < max_running_per_controller)
            .min_by_key(|(_, share)| (share.running, share.last_start))
            .map(|(id, _)| id.clone())
    }

    fn pop_waiting(&mut self, controller_id: &str) -> Option<QueuedJob> {
        let queue = self.waiting.get_mut(controller_id)?;
        let job = queue.pop_front();
        if queue.is_empty() {
            self.waiting.remove(controller_id);
        }
        if job.is_some() {
            self.waiting_total -= 1;
            self.share(controller_id).waiting -= 1;
        }
        job
    }
}

/// The run queue: one lock over every counter.
#[derive(Default)]
pub(crate) struct JobQueue {
    state: Arc<Mutex<QueueState>>,
}

/// Why no slot could be promised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum QueueFull {
    /// The agent's running + waiting jobs are at `max_concurrent_jobs + max_queued_jobs`.
    Agent,
    /// This controller's running + waiting jobs are at its quota.
    Controller,
}

/// Capacities a reservation is checked against.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Capacity {
    /// Running + waiting jobs of the whole agent.
    pub agent: usize,
    /// Running + waiting jobs of one controller.
    pub controller: usize,
}

/// A promised slot; dropping it without [`JobQueue::enqueue`] gives it back. It holds the
/// queue's state and nothing else.
pub(crate) struct Reservation {
    state: Arc<Mutex<QueueState>>,
    controller_id: String,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            let mut state = lock(&self.state);
            state.reserved -= 1;
            state.share(&self.controller_id).reserved -= 1;
            state.tidy(&self.controller_id);
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

    /// Promises a slot to `controller_id` if running + waiting + promised stays under both
    /// the agent's and the controller's capacity.
    pub(crate) fn reserve(
        &self,
        controller_id: &str,
        capacity: Capacity,
    ) -> Result<Reservation, QueueFull> {
        let mut state = self.lock();
        let taken = state.running + state.waiting_total + state.reserved;
        if taken >= capacity.agent {
            return Err(QueueFull::Agent);
        }
        let held = state.shares.get(controller_id).map_or(0, Share::total);
        if held >= capacity.controller {
            return Err(QueueFull::Controller);
        }
        state.share(controller_id).reserved += 1;
        state.reserved += 1;
        Ok(Reservation {
            state: self.state.clone(),
            controller_id: controller_id.to_owned(),
            armed: true,
        })
    }

    /// Turns a reservation into a waiting job.
    pub(crate) fn enqueue(&self, mut reservation: Reservation, job: QueuedJob, live: Arc<LiveJob>) {
        let mut state = self.lock();
        reservation.armed = false;
        state.reserved -= 1;
        let share = state.share(&reservation.controller_id);
        share.reserved -= 1;
        share.waiting += 1;
        state.waiting_total += 1;
        state.live.insert(job.job_id.clone(), live);
        state
            .waiting
            .entry(reservation.controller_id.clone())
            .or_default()
            .push_back(job);
    }

    /// Takes waiting jobs while fewer than `max_running` run, counting each as running.
    /// Each free slot goes to the controller under its running quota with the fewest
    /// running jobs, then the one served longest ago: round-robin between controllers.
    pub(crate) fn take_startable(
        &self,
        max_running: usize,
        max_running_per_controller: usize,
        metrics: &Metrics,
    ) -> Vec<(QueuedJob, Arc<LiveJob>)> {
        let mut state = self.lock();
        let mut started = Vec::new();
        while state.running < max_running {
            let Some(controller_id) = state.next_controller(max_running_per_controller) else {
                break;
            };
            let Some(job) = state.pop_waiting(&controller_id) else {
                break;
            };
            let Some(live) = state.live.get(&job.job_id).cloned() else {
                state.tidy(&controller_id);
                continue;
            };
            state.starts += 1;
            let tick = state.starts;
            let share = state.share(&controller_id);
            share.running += 1;
            share.last_start = tick;
            state.running += 1;
            state
                .running_owner
                .insert(job.job_id.clone(), controller_id);
            started.push((job, live));
        }
        metrics.set_queue_depth(state.waiting_total);
        started
    }

    /// Forgets a job that has ended; frees its run slot if it held one.
    pub(crate) fn release(&self, job_id: &str, was_running: bool) {
        let mut state = self.lock();
        state.live.remove(job_id);
        if was_running {
            state.running -= 1;
            if let Some(controller_id) = state.running_owner.remove(job_id) {
                state.share(&controller_id).running -= 1;
                state.tidy(&controller_id);
            }
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
        let found = state.waiting.iter().find_map(|(controller_id, queue)| {
            let position = queue.iter().position(|j| j.job_id == job_id)?;
            Some((controller_id.clone(), position))
        });
        let waiting = found.and_then(|(controller_id, position)| {
            let queue = state.waiting.get_mut(&controller_id)?;
            let job = queue.remove(position)?;
            if queue.is_empty() {
                state.waiting.remove(&controller_id);
            }
            state.waiting_total -= 1;
            state.share(&controller_id).waiting -= 1;
            state.tidy(&controller_id);
            Some(job)
        });
        metrics.set_queue_depth(state.waiting_total);
        Some((live, waiting))
    }

    /// Takes every waiting job out of the queue.
    pub(crate) fn drain_waiting(&self, metrics: &Metrics) -> Vec<QueuedJob> {
        let mut state = self.lock();
        let queues = std::mem::take(&mut state.waiting);
        state.waiting_total = 0;
        let mut drained = Vec::new();
        for (controller_id, queue) in queues {
            state.share(&controller_id).waiting -= queue.len();
            state.tidy(&controller_id);
            drained.extend(queue);
        }
        metrics.set_queue_depth(0);
        drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(controller_id: &str, n: usize) -> QueuedJob {
        QueuedJob {
            job_id: format!("{controller_id}-{n}"),
            controller_id: controller_id.to_owned(),
            command: "true".to_owned(),
            ttl: 0,
            sandbox: ResolvedSandbox {
                image: "img".to_owned(),
                timeout_seconds: 1,
                cpu_limit: 1.0,
                memory_limit: 1 << 26,
                network: false,
                mounts: Vec::new(),
                env: BTreeMap::new(),
                workdir: "/work".to_owned(),
            },
            stdin: None,
            requested_by: None,
        }
    }

    fn add(queue: &JobQueue, controller_id: &str, n: usize, capacity: Capacity) -> bool {
        let Ok(reservation) = queue.reserve(controller_id, capacity) else {
            return false;
        };
        let live = Arc::new(LiveJob::new(JobStream::new("j", 1024, 8)));
        queue.enqueue(reservation, job(controller_id, n), live);
        true
    }

    fn ids(started: Vec<(QueuedJob, Arc<LiveJob>)>) -> Vec<String> {
        started.into_iter().map(|(j, _)| j.job_id).collect()
    }

    #[test]
    fn a_controller_over_its_quota_is_refused_and_others_are_not() {
        let queue = JobQueue::default();
        let metrics = Metrics::default();
        let capacity = Capacity {
            agent: 10,
            controller: 3,
        };
        for n in 0..3 {
            assert!(add(&queue, "a", n, capacity));
        }
        assert_eq!(
            queue.reserve("a", capacity).err(),
            Some(QueueFull::Controller)
        );
        assert!(add(&queue, "b", 0, capacity));
        // One running slot per controller: both start, a's other jobs wait.
        assert_eq!(ids(queue.take_startable(4, 1, &metrics)), ["a-0", "b-0"]);
        queue.release("a-0", true);
        assert!(add(&queue, "a", 3, capacity), "a freed one of its three");
        assert_eq!(
            queue.reserve("a", capacity).err(),
            Some(QueueFull::Controller)
        );
        let full = Capacity {
            agent: 5,
            controller: 5,
        };
        assert!(add(&queue, "c", 0, full));
        assert_eq!(queue.reserve("d", full).err(), Some(QueueFull::Agent));
    }

    #[test]
    fn freed_slots_go_round_robin_between_controllers() {
        let queue = JobQueue::default();
        let metrics = Metrics::default();
        let capacity = Capacity {
            agent: 100,
            controller: 100,
        };
        for n in 0..4 {
            assert!(add(&queue, "a", n, capacity));
        }
        assert_eq!(ids(queue.take_startable(1, 1, &metrics)), ["a-0"]);
        for n in 0..2 {
            assert!(add(&queue, "b", n, capacity));
        }
        let mut order = Vec::new();
        let mut running = "a-0".to_owned();
        for _ in 0..5 {
            queue.release(&running, true);
            let next = ids(queue.take_startable(1, 1, &metrics));
            assert_eq!(next.len(), 1, "{next:?}");
            running = next[0].clone();
            order.push(running.clone());
        }
        assert_eq!(order, ["b-0", "a-1", "b-1", "a-2", "a-3"]);
        queue.release(&running, true);
        assert!(queue.take_startable(1, 1, &metrics).is_empty());
        assert!(
            queue.lock().shares.is_empty(),
            "shares are forgotten when empty"
        );
    }
}
