//! The agent's shared state: the live config (swapped on SIGHUP), the databases, the
//! sandbox engine, metrics and the run queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use quickcmd_sandbox::DockerSandbox;
use tokio::sync::Semaphore;

use crate::audit::AuditLog;
use crate::config::AgentConfig;
use crate::flood::RefusalLog;
use crate::metrics::Metrics;
use crate::queue::JobQueue;
use crate::store::Store;

pub(crate) struct Agent {
    config: RwLock<Arc<AgentConfig>>,
    pub store: Store,
    pub audit: AuditLog,
    pub sandbox: DockerSandbox,
    pub metrics: Metrics,
    pub jobs: JobQueue,
    /// Submit bodies being parsed and verified on the blocking pool at once: one per CPU.
    pub body_checks: Arc<Semaphore>,
    /// Per-source windows that keep the audit of a flood of refusals bounded.
    pub refusals: RefusalLog,
    shutting_down: AtomicBool,
}

impl Agent {
    pub(crate) fn new(
        config: AgentConfig,
        store: Store,
        audit: AuditLog,
        sandbox: DockerSandbox,
    ) -> Arc<Agent> {
        Arc::new(Agent {
            config: RwLock::new(Arc::new(config)),
            store,
            audit,
            sandbox,
            metrics: Metrics::default(),
            jobs: JobQueue::default(),
            body_checks: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            )),
            refusals: RefusalLog::default(),
            shutting_down: AtomicBool::new(false),
        })
    }

    /// The config in force now; a request keeps the one it started with.
    pub(crate) fn config(&self) -> Arc<AgentConfig> {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn replace_config(&self, config: AgentConfig) {
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(config);
    }

    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}
