//! The warm pool as state shared by every clone of a `DockerSandbox`, and its replacement
//! when the agent's config changes (SIGHUP): the old pool stops at once (no claim after
//! the swap), its idle containers are removed in the background, and a new pool of the new
//! profile and size fills; size 0 leaves none. Jobs already running in old pool containers
//! are not touched, and the counters carry over, so metrics never go backwards.

use std::sync::{Arc, Mutex};

use tokio::task::JoinHandle;

use crate::client::DockerSandbox;
use crate::error::SandboxError;
use crate::pool::{PoolHandle, PoolProfile, PoolTotals, WarmPool, WarmPoolStats};

/// The pool of one `DockerSandbox` and all its clones. Dropping the last clone stops the
/// current pool's refill task (its `PoolHandle` goes with it).
#[derive(Default)]
pub(crate) struct PoolSlot {
    state: Mutex<SlotState>,
}

#[derive(Default)]
struct SlotState {
    current: Option<PoolHandle>,
    /// `None` until a pool is first configured: an agent that never had one reports none.
    totals: Option<Arc<PoolTotals>>,
    /// Every pool instance this sandbox started, replaced ones included: their containers
    /// are this process's (some may still run a job), so the start-up sweep spares them.
    instances: Vec<String>,
    /// Removals of replaced pools' idle containers still in progress.
    retiring: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for PoolSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("PoolSlot")
            .field("current", &state.current)
            .field("retiring", &state.retiring.len())
            .finish_non_exhaustive()
    }
}

impl PoolSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DockerSandbox {
    /// Starts a warm pool of `size` containers of `profile` (none when `size` is 0) and
    /// returns the sandbox that uses it. Must be called inside a tokio runtime: the refill
    /// runs in a background task until the last clone of the returned sandbox is dropped or
    /// [`DockerSandbox::shutdown_warm_pool`] is called. The pool is shared by every clone of
    /// this sandbox, and [`DockerSandbox::reconfigure_warm_pool`] replaces it for all.
    pub fn with_warm_pool(self, size: usize, profile: PoolProfile) -> Result<Self, SandboxError> {
        self.reconfigure_warm_pool(size, profile)?;
        Ok(self)
    }

    /// Makes the warm pool `size` containers of `profile`, for this sandbox and all its
    /// clones. When the size or profile differ from the current pool's, the current pool
    /// stops at once — none of its idle containers is handed to a job after this returns —
    /// and they are removed in the background ([`DockerSandbox::wait_retired_warm_pools`]
    /// waits for that); a new pool fills with `profile` unless `size` is 0. Jobs running in
    /// the old pool's containers are not touched. Returns whether anything changed; a
    /// profile that does not validate is refused and the current pool stays.
    pub fn reconfigure_warm_pool(
        &self,
        size: usize,
        profile: PoolProfile,
    ) -> Result<bool, SandboxError> {
        profile.validate()?;
        let mut state = self.pool.lock();
        let (old_size, old_profile) = match state.current.as_ref() {
            Some(handle) => (handle.0.size(), Some(handle.0.profile().clone())),
            None => (0, None),
        };
        let unchanged = size == old_size && (size == 0 || old_profile.as_ref() == Some(&profile));
        if unchanged {
            return Ok(false);
        }
        let totals = state.totals.get_or_insert_with(Default::default).clone();
        let new = match size {
            0 => None,
            _ => {
                let pool = WarmPool::start(self.docker.clone(), size, profile.clone(), totals)?;
                state.instances.push(pool.instance().to_owned());
                Some(PoolHandle(pool))
            }
        };
        let old = std::mem::replace(&mut state.current, new);
        if let Some(PoolHandle(old)) = &old {
            old.stop();
            let old = old.clone();
            state.retiring.retain(|task| !task.is_finished());
            state
                .retiring
                .push(tokio::spawn(async move { old.retire().await }));
        }
        drop(state);
        if old_size == 0 {
            tracing::info!(size, image = %profile.image, user = %profile.user, "warm pool on");
        } else if size == 0 {
            tracing::info!(
                old_size,
                "warm pool off; its idle containers are being removed"
            );
        } else {
            tracing::info!(
                old_size,
                size,
                image = %profile.image,
                user = %profile.user,
                cpu_limit = profile.cpu_limit,
                memory_limit_bytes = profile.memory_limit_bytes,
                pids_limit = profile.pids_limit,
                tmp_size_bytes = profile.tmp_size_bytes,
                workdir_size_bytes = profile.workdir_size_bytes,
                "warm pool replaced; the old one's idle containers are being removed"
            );
        }
        Ok(true)
    }

    /// Waits until every pool replaced so far has stopped and its idle containers are
    /// removed.
    pub async fn wait_retired_warm_pools(&self) {
        loop {
            let retiring = std::mem::take(&mut self.pool.lock().retiring);
            if retiring.is_empty() {
                return;
            }
            for task in retiring {
                if let Err(err) = task.await {
                    tracing::warn!(error = %err, "removing a replaced warm pool failed");
                }
            }
        }
    }

    /// The pool's counters (totals over every pool this sandbox had; size and idle of the
    /// current one, 0 when it was turned off), or `None` if it never had a pool.
    pub fn warm_pool_stats(&self) -> Option<WarmPoolStats> {
        let state = self.pool.lock();
        match &state.current {
            Some(handle) => Some(handle.0.stats()),
            None => state.totals.as_ref().map(|totals| totals.stats(0, 0)),
        }
    }

    /// Stops refilling and removes the idle pool containers, the replaced pools' too
    /// (waiting for a refill in progress to finish and be removed too); jobs then run cold.
    /// Running pooled jobs are not touched.
    pub async fn shutdown_warm_pool(&self) {
        let current = self.pool.lock().current.take();
        if let Some(PoolHandle(pool)) = &current {
            pool.retire().await;
        }
        self.wait_retired_warm_pools().await;
    }

    /// The current pool, if any. A job keeps the pool it claimed from even if a reload
    /// replaces it meanwhile.
    pub(crate) fn warm_pool(&self) -> Option<Arc<WarmPool>> {
        self.pool
            .lock()
            .current
            .as_ref()
            .map(|handle| handle.0.clone())
    }

    /// Whether `instance` names a pool this sandbox started (current or replaced).
    pub(crate) fn is_own_pool_instance(&self, instance: &str) -> bool {
        self.pool.lock().instances.iter().any(|own| own == instance)
    }
}
