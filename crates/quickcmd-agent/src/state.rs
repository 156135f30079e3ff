//! The agent's shared state: the live config (swapped on SIGHUP), the databases, the
//! sandbox engine, metrics and the run queue.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use quickcmd_protocol::AuditWitness;
use quickcmd_sandbox::DockerSandbox;
use tokio::sync::Semaphore;

use crate::audit::{AuditLog, ChainHead};
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

    /// The witness of audit row `head` for the controller that submitted the job
    /// (protocol-v1 §5): MACed with that controller's secret, so it knows this agent said
    /// it. `None` when the controller is no longer in the config.
    pub(crate) fn witness(&self, controller_id: &str, head: &ChainHead) -> Option<AuditWitness> {
        let config = self.config();
        let grant = config.controller(controller_id)?;
        let seq = u64::try_from(head.id).ok()?;
        Some(AuditWitness::new(
            grant.secret.as_bytes(),
            &config.agent_id,
            seq,
            &head.row_hash,
        ))
    }

    /// The witness of a finished job: its newest `result` row. `None` (and a log line)
    /// when the row cannot be read; a result without a witness is still a result.
    pub(crate) async fn job_witness(
        &self,
        job_id: &str,
        controller_id: &str,
    ) -> Option<AuditWitness> {
        match self.audit.result_row(job_id.to_string()).await {
            Ok(Some(head)) => self.witness(controller_id, &head),
            Ok(None) => None,
            Err(error) => {
                tracing::error!(job_id, %error, "could not read the result's audit row");
                None
            }
        }
    }
}
