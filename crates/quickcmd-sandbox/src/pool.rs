//! The warm pool: containers of one sandbox profile created, attached (stdin, stdout,
//! stderr) and started ahead of time, each idle in [`BOOTSTRAP`](crate::script::BOOTSTRAP)
//! (blocked reading stdin: no CPU), each serving exactly one job and then removed — never
//! reused. A background task refills the pool after every claim, a few containers at once.
//!
//! Every pool container carries `quickcmd.agent`, `quickcmd.managed` and `quickcmd.pool`, so
//! an agent's start-up sweep removes those a previous run left; `quickcmd.pool.instance`
//! names this process's pool, which that sweep spares.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use rand::Rng;
use tokio::sync::Notify;
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;

use crate::attach::{attach, AttachedInput, AttachedOutput};
use crate::create::create_pool_container;
use crate::error::SandboxError;
use crate::image::ensure_image;
use crate::remove::{remove_container, ContainerGuard};
use crate::script::job_script;
use crate::spec::SandboxSpec;
use crate::start::start_container;
use crate::wait::wait_for_exit;

/// The job id pool containers are created and traced under until a job claims one.
pub(crate) const POOL_JOB_ID: &str = "warm-pool";
/// After a failed refill, wait this long before the next attempt, doubling up to the cap.
const REFILL_BACKOFF_MIN: Duration = Duration::from_millis(500);
const REFILL_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Containers made at once while the pool is short: a burst of jobs that empties it is
/// met by refills side by side, not one after another. Kept small: on a busy host each
/// create competes with the jobs for the engine.
const REFILL_PARALLEL: usize = 2;

/// The fixed settings of pool containers. A job whose image, user, workdir, tmpfs sizes or
/// agent differ, or that asks for network or mounts, takes the cold path; memory, CPU and
/// PID limits may differ (they are updated on the claimed container).
#[derive(Debug, Clone, PartialEq)]
pub struct PoolProfile {
    pub agent_id: String,
    pub image: String,
    /// `uid[:gid]`; fixed at create, so jobs for another user take the cold path.
    pub user: String,
    pub workdir: String,
    pub tmp_size_bytes: i64,
    pub workdir_size_bytes: i64,
    pub cpu_limit: f64,
    pub memory_limit_bytes: i64,
    pub pids_limit: i64,
}

/// Counters for metrics. The totals count over every pool a sandbox had (a reload that
/// replaces the pool does not reset them); `size` and `idle` are the current pool's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WarmPoolStats {
    /// How many containers the pool keeps ready.
    pub size: usize,
    /// Ready containers now.
    pub idle: usize,
    /// Jobs that ran in a pool container.
    pub claimed_total: u64,
    /// Jobs that fit the profile but found the pool empty, and ran cold.
    pub misses_total: u64,
    /// Jobs that did not fit the profile (or had an unexportable env name), and ran cold.
    pub cold_fallbacks_total: u64,
    /// Idle containers found dead at claim time and removed unused.
    pub discarded_total: u64,
}

/// A started pool container waiting for its one job.
pub(crate) struct WarmContainer {
    pub(crate) container_id: String,
    pub(crate) input: AttachedInput,
    pub(crate) output: AttachedOutput,
    /// The engine's wait, issued right after start: resolves with the exit code.
    pub(crate) exited: JoinHandle<Result<i64, SandboxError>>,
    /// Removes the container if this is dropped unused.
    pub(crate) guard: ContainerGuard,
}

impl Drop for WarmContainer {
    fn drop(&mut self) {
        self.exited.abort();
    }
}

/// What outlives one pool when a reload replaces it: the counters, so they never go
/// backwards, and the containers whose removal failed, which the next pool retries.
#[derive(Debug, Default)]
pub(crate) struct PoolTotals {
    claimed: AtomicU64,
    misses: AtomicU64,
    cold_fallbacks: AtomicU64,
    discarded: AtomicU64,
    /// Containers whose removal failed (the engine away): tried again before every refill
    /// and at shutdown, so a claimed or half-made container does not outlive an engine
    /// outage until the next agent start.
    leftovers: Mutex<Vec<String>>,
}

impl PoolTotals {
    /// The totals, with the current pool's `size` and `idle` count.
    pub(crate) fn stats(&self, size: usize, idle: usize) -> WarmPoolStats {
        WarmPoolStats {
            size,
            idle,
            claimed_total: self.claimed.load(Ordering::Relaxed),
            misses_total: self.misses.load(Ordering::Relaxed),
            cold_fallbacks_total: self.cold_fallbacks.load(Ordering::Relaxed),
            discarded_total: self.discarded.load(Ordering::Relaxed),
        }
    }
}

pub(crate) struct WarmPool {
    docker: Docker,
    profile: PoolProfile,
    /// The profile as a spec, for `create_pool_container`.
    template: SandboxSpec,
    size: usize,
    instance: String,
    idle: Mutex<VecDeque<WarmContainer>>,
    refill: Notify,
    stop: CancellationToken,
    /// The refill task, awaited by `retire`.
    refill_task: Mutex<Option<JoinHandle<()>>>,
    /// Shared with the pools that replace this one.
    totals: Arc<PoolTotals>,
}

/// Held by the `DockerSandbox`'s pool slot (shared by its clones): stops the refill task
/// when the last clone goes away.
pub(crate) struct PoolHandle(pub(crate) Arc<WarmPool>);

impl Drop for PoolHandle {
    fn drop(&mut self) {
        self.0.stop.cancel();
    }
}

impl std::fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WarmPool")
            .field("profile", &self.0.profile)
            .field("size", &self.0.size)
            .field("instance", &self.0.instance)
            .finish_non_exhaustive()
    }
}

impl WarmPool {
    /// Starts the refill task of a new pool of `size` (at least 1) containers of `profile`.
    pub(crate) fn start(
        docker: Docker,
        size: usize,
        profile: PoolProfile,
        totals: Arc<PoolTotals>,
    ) -> Result<Arc<WarmPool>, SandboxError> {
        let template = pool_template(&profile);
        template.validate()?;
        let instance = format!("{:016x}", rand::thread_rng().gen::<u64>());
        let pool = Arc::new(WarmPool {
            docker,
            profile,
            template,
            size,
            instance,
            idle: Mutex::new(VecDeque::with_capacity(size)),
            refill: Notify::new(),
            stop: CancellationToken::new(),
            refill_task: Mutex::new(None),
            totals,
        });
        let task = tokio::spawn(pool.clone().refill_loop());
        *pool.refill_task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        Ok(pool)
    }

    /// Stops refilling (at once: no claim succeeds after this), then waits for a refill in
    /// progress and removes every idle container. Claimed containers are their jobs'.
    pub(crate) async fn retire(&self) {
        self.stop.cancel();
        let task = self
            .refill_task
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = task {
            if let Err(err) = task.await {
                tracing::warn!(error = %err, "the warm pool refill task failed");
            }
        }
        self.remove_idle().await;
    }

    /// Stops refilling and claiming without waiting (see [`WarmPool::retire`]).
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    pub(crate) fn instance(&self) -> &str {
        &self.instance
    }

    pub(crate) fn profile(&self) -> &PoolProfile {
        &self.profile
    }

    pub(crate) fn size(&self) -> usize {
        self.size
    }

    /// A ready container and the job's script, when `spec` fits the profile and the pool
    /// has one; else `None`, counted as a cold fallback or a miss.
    pub(crate) fn claim_for(&self, spec: &SandboxSpec) -> Option<(WarmContainer, Vec<u8>)> {
        let totals = &self.totals;
        let script = match job_script(spec) {
            Some(script) if self.fits(spec) => script,
            _ => {
                totals.cold_fallbacks.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
        // A stopped pool (replaced by a reload, or shut down) hands out nothing: its idle
        // containers may be of an old profile and are about to be removed.
        let claimed = if self.stop.is_cancelled() {
            None
        } else {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            let mut found = None;
            while let Some(warm) = idle.pop_front() {
                // It stopped while idle (killed from outside, engine restart): its exit code
                // is not a job's, so it serves nobody.
                if warm.exited.is_finished() {
                    totals.discarded.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(container_id = %warm.container_id, "warm pool container stopped while idle; removing it");
                    continue;
                }
                found = Some(warm);
                break;
            }
            found
        };
        self.refill.notify_one();
        match claimed {
            Some(warm) => {
                totals.claimed.fetch_add(1, Ordering::Relaxed);
                Some((warm, script))
            }
            None => {
                totals.misses.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }

    /// Whether `spec`'s fixed settings are the profile's.
    fn fits(&self, spec: &SandboxSpec) -> bool {
        let profile = &self.profile;
        spec.agent_id == profile.agent_id
            && spec.image == profile.image
            && spec.user == profile.user
            && !spec.network
            && spec.mounts.is_empty()
            && spec.workdir == profile.workdir
            && spec.tmp_size_bytes == profile.tmp_size_bytes
            && spec.workdir_size_bytes == profile.workdir_size_bytes
    }

    /// Whether the claimed container's limits must be updated for `spec`.
    pub(crate) fn limits_differ(&self, spec: &SandboxSpec) -> bool {
        let profile = &self.profile;
        spec.memory_limit_bytes != profile.memory_limit_bytes
            || spec.pids_limit != profile.pids_limit
            || crate::create::nano_cpus(spec.cpu_limit)
                != crate::create::nano_cpus(profile.cpu_limit)
    }

    pub(crate) fn stats(&self) -> WarmPoolStats {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).len();
        self.totals.stats(self.size, idle)
    }

    /// Removes `container_id` later (before the next refill) if it still exists.
    pub(crate) fn remove_later(&self, container_id: &str) {
        self.totals
            .leftovers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(container_id.to_owned());
    }

    /// One removal attempt for each leftover; those that fail stay for the next round.
    async fn remove_leftovers(&self) {
        let pending: Vec<String> = std::mem::take(
            &mut *self
                .totals
                .leftovers
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for container_id in pending {
            if let Err(err) = remove_container(&self.docker, &container_id, POOL_JOB_ID).await {
                tracing::debug!(%container_id, error = %err, "warm pool leftover not removed yet");
                self.remove_later(&container_id);
            } else {
                tracing::info!(%container_id, "removed a warm pool leftover container");
            }
        }
    }

    fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Create, attach (stdin too) and start one container; the engine's wait is issued at
    /// once so a container that dies idle is noticed at claim.
    async fn make_one(&self) -> Result<WarmContainer, SandboxError> {
        let container_id =
            create_pool_container(&self.docker, &self.template, &self.instance).await?;
        let mut guard = ContainerGuard::new(&self.docker, &container_id, POOL_JOB_ID);
        match self.attach_and_start(&container_id).await {
            Ok((input, output, exited)) => Ok(WarmContainer {
                container_id,
                input,
                output,
                exited,
                guard,
            }),
            Err(err) => {
                // Created but not ready: the engine may be going away, so the removal is
                // retried before the next refill rather than attempted once by the guard.
                guard.disarm();
                self.remove_later(&container_id);
                Err(err)
            }
        }
    }

    async fn attach_and_start(
        &self,
        container_id: &str,
    ) -> Result<
        (
            AttachedInput,
            AttachedOutput,
            JoinHandle<Result<i64, SandboxError>>,
        ),
        SandboxError,
    > {
        let (input, output) = attach(&self.docker, container_id, POOL_JOB_ID, true).await?;
        let input = input.ok_or_else(|| SandboxError::Engine {
            action: "attach to container",
            job_id: POOL_JOB_ID.to_owned(),
            message: "the engine gave no stdin to write to".to_owned(),
        })?;
        start_container(&self.docker, container_id, POOL_JOB_ID).await?;
        let exited = tokio::spawn({
            let docker = self.docker.clone();
            let container_id = container_id.to_owned();
            async move { wait_for_exit(&docker, &container_id, POOL_JOB_ID).await }
        });
        Ok((input, output, exited))
    }

    /// Keeps `size` containers ready until stopped (up to [`REFILL_PARALLEL`] being made at
    /// once), then removes the idle ones.
    async fn refill_loop(self: Arc<Self>) {
        let mut backoff = REFILL_BACKOFF_MIN;
        let mut image_ready = false;
        let mut making: JoinSet<Result<WarmContainer, SandboxError>> = JoinSet::new();
        while !self.stop.is_cancelled() {
            let missing = self.size.saturating_sub(self.idle_count() + making.len());
            let room = REFILL_PARALLEL.saturating_sub(making.len());
            if missing > 0 && room > 0 {
                // Not abandoned half-way when stopped: an image pull or a create whose
                // answer was dropped would leave work only the next start-up sweep undoes.
                self.remove_leftovers().await;
                let ready = if image_ready {
                    Ok(())
                } else {
                    ensure_image(&self.docker, &self.profile.image, POOL_JOB_ID).await
                };
                match ready {
                    Ok(()) => {
                        image_ready = true;
                        for _ in 0..missing.min(room) {
                            let pool = self.clone();
                            making.spawn(async move { pool.make_one().await });
                        }
                    }
                    Err(err) => {
                        if !self.back_off(&mut backoff, &err).await {
                            break;
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                () = self.refill.notified() => {}
                Some(made) = making.join_next(), if !making.is_empty() => {
                    match flatten_join(made) {
                        Ok(warm) => {
                            backoff = REFILL_BACKOFF_MIN;
                            self.add_idle(warm);
                        }
                        Err(err) => {
                            image_ready = false;
                            if !self.back_off(&mut backoff, &err).await {
                                break;
                            }
                        }
                    }
                }
                () = self.stop.cancelled() => break,
            }
        }
        // Containers being made when the pool stopped are finished, then removed with the
        // idle ones.
        while let Some(made) = making.join_next().await {
            if let Ok(warm) = flatten_join(made) {
                self.add_idle(warm);
            }
        }
        self.remove_idle().await;
    }

    fn add_idle(&self, warm: WarmContainer) {
        tracing::debug!(container_id = %warm.container_id, "warm pool container ready");
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(warm);
    }

    /// After a failed refill: logs it and waits `backoff` (doubled for next time, up to the
    /// cap). False when the pool was stopped meanwhile.
    async fn back_off(&self, backoff: &mut Duration, err: &SandboxError) -> bool {
        tracing::warn!(error = %err, retry_in = ?*backoff, "could not refill the warm pool; jobs run cold meanwhile");
        let wait = *backoff;
        *backoff = (*backoff * 2).min(REFILL_BACKOFF_MAX);
        tokio::select! {
            () = tokio::time::sleep(wait) => true,
            () = self.stop.cancelled() => false,
        }
    }

    /// Removes every idle container and waits for the removals.
    pub(crate) async fn remove_idle(&self) {
        let idle: Vec<WarmContainer> = self
            .idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        self.remove_leftovers().await;
        for mut warm in idle {
            warm.guard.disarm();
            if let Err(err) = remove_container(&self.docker, &warm.container_id, POOL_JOB_ID).await
            {
                tracing::warn!(container_id = %warm.container_id, error = %err, "could not remove an idle warm pool container");
            }
        }
    }
}

/// A refill task's result, a panic or abort counted as a failed refill.
fn flatten_join(
    made: Result<Result<WarmContainer, SandboxError>, JoinError>,
) -> Result<WarmContainer, SandboxError> {
    made.unwrap_or_else(|join| {
        Err(SandboxError::Engine {
            action: "refill the warm pool",
            job_id: POOL_JOB_ID.to_owned(),
            message: format!("the refill task ended: {join}"),
        })
    })
}

/// The profile as a spec, as `create_pool_container` takes it.
fn pool_template(profile: &PoolProfile) -> SandboxSpec {
    SandboxSpec {
        job_id: POOL_JOB_ID.to_owned(),
        agent_id: profile.agent_id.clone(),
        image: profile.image.clone(),
        command: String::new(),
        user: profile.user.clone(),
        network: false,
        cpu_limit: profile.cpu_limit,
        memory_limit_bytes: profile.memory_limit_bytes,
        pids_limit: profile.pids_limit,
        timeout: Duration::from_secs(1),
        env: Default::default(),
        workdir: profile.workdir.clone(),
        tmp_size_bytes: profile.tmp_size_bytes,
        workdir_size_bytes: profile.workdir_size_bytes,
        mounts: Vec::new(),
        stdin: None,
    }
}

impl PoolProfile {
    /// Refuses a profile no pool container could be created with (the checks every job's
    /// sandbox passes), before anything is started or replaced.
    pub fn validate(&self) -> Result<(), SandboxError> {
        pool_template(self).validate()
    }
}
