//! Prometheus metrics, rendered by hand so the seed's names stand exactly as written
//! (`quickcmd_agent_jobs_completed` has no `_total`, which client libraries would add).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use quickcmd_sandbox::{DockerSandbox, WarmPoolStats};

const DURATION_BUCKETS: [f64; 12] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];
const START_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 1.0, 2.5, 5.0];

struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            counts: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, value: Duration) {
        let seconds = value.as_secs_f64();
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            if seconds <= *bound {
                count.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.sum_micros
            .fetch_add(value.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, count) in self.bounds.iter().zip(&self.counts) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                count.load(Ordering::Relaxed)
            );
        }
        let total = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {total}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {total}");
    }
}

/// Every metric the agent exports.
pub(crate) struct Metrics {
    jobs_total: AtomicU64,
    jobs_running: AtomicI64,
    jobs_completed: AtomicU64,
    jobs_failed: AtomicU64,
    jobs_rejected: AtomicU64,
    queue_depth: AtomicI64,
    ws_subscribers: AtomicI64,
    connections_open: AtomicI64,
    connections_refused: AtomicU64,
    health_checks: AtomicU64,
    container_remove_failures: AtomicU64,
    refusals_delayed: AtomicU64,
    /// The audit log's newest row id, set before each scrape.
    audit_head_seq: AtomicI64,
    /// Connections closed by a timeout: header, body, idle; and WebSocket sends.
    timeouts: Mutex<BTreeMap<&'static str, u64>>,
    rejections: Mutex<BTreeMap<&'static str, u64>>,
    job_duration: Histogram,
    sandbox_start: Histogram,
    /// The sandbox whose warm pool is reported, once the server has built it.
    warm_pool: OnceLock<DockerSandbox>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            jobs_total: AtomicU64::new(0),
            jobs_running: AtomicI64::new(0),
            jobs_completed: AtomicU64::new(0),
            jobs_failed: AtomicU64::new(0),
            jobs_rejected: AtomicU64::new(0),
            queue_depth: AtomicI64::new(0),
            ws_subscribers: AtomicI64::new(0),
            connections_open: AtomicI64::new(0),
            connections_refused: AtomicU64::new(0),
            health_checks: AtomicU64::new(0),
            container_remove_failures: AtomicU64::new(0),
            refusals_delayed: AtomicU64::new(0),
            audit_head_seq: AtomicI64::new(0),
            timeouts: Mutex::new(BTreeMap::new()),
            rejections: Mutex::new(BTreeMap::new()),
            job_duration: Histogram::new(&DURATION_BUCKETS),
            sandbox_start: Histogram::new(&START_BUCKETS),
            warm_pool: OnceLock::new(),
        }
    }
}

impl Metrics {
    /// A job was accepted (counted once, however often it is resubmitted).
    pub(crate) fn job_accepted(&self) {
        self.jobs_total.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn job_started(&self) {
        self.jobs_running.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn job_stopped(&self) {
        self.jobs_running.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn job_ended(&self, completed: bool, duration: Duration) {
        if completed {
            self.jobs_completed.fetch_add(1, Ordering::Relaxed);
        } else {
            self.jobs_failed.fetch_add(1, Ordering::Relaxed);
        }
        self.job_duration.observe(duration);
    }
    pub(crate) fn job_rejected(&self) {
        self.jobs_rejected.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn refusal(&self, code: &'static str) {
        let mut map = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(code).or_insert(0) += 1;
    }
    pub(crate) fn sandbox_started(&self, latency: Duration) {
        self.sandbox_start.observe(latency);
    }
    pub(crate) fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.store(depth as i64, Ordering::Relaxed);
    }
    pub(crate) fn subscriber_joined(&self) {
        self.ws_subscribers.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn subscriber_left(&self) {
        self.ws_subscribers.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn connection_opened(&self) {
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn connection_closed(&self) {
        self.connections_open.fetch_sub(1, Ordering::Relaxed);
    }
    pub(crate) fn connection_refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }
    /// A connection (`header`, `body`, `idle`) or a WebSocket (`stream_send`) timed out.
    pub(crate) fn connection_timed_out(&self, reason: &'static str) {
        let mut map = self.timeouts.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(reason).or_insert(0) += 1;
    }
    /// `/health` ran its checks (not answered from the cache).
    pub(crate) fn set_audit_head_seq(&self, seq: i64) {
        self.audit_head_seq.store(seq, Ordering::Relaxed);
    }
    pub(crate) fn health_checked(&self) {
        self.health_checks.fetch_add(1, Ordering::Relaxed);
    }
    /// An unauthenticated refusal from a source past its row limit was answered late.
    pub(crate) fn refusal_delayed(&self) {
        self.refusals_delayed.fetch_add(1, Ordering::Relaxed);
    }
    /// A job's stopped container could not be removed after its result was sent.
    pub(crate) fn container_remove_failed(&self) {
        self.container_remove_failures
            .fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn running(&self) -> u64 {
        self.jobs_running.load(Ordering::Relaxed).max(0) as u64
    }

    /// Reports `sandbox`'s warm pool from now on, whichever pool a reload put in place
    /// (nothing is reported while it never had one).
    pub(crate) fn report_warm_pool(&self, sandbox: DockerSandbox) {
        let _ = self.warm_pool.set(sandbox);
    }

    /// Prometheus text exposition format 0.0.4.
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let simple = [
            (
                "quickcmd_agent_jobs_total",
                "counter",
                "Total number of jobs",
                self.jobs_total.load(Ordering::Relaxed) as i64,
            ),
            (
                "quickcmd_agent_jobs_running",
                "gauge",
                "Currently running jobs",
                self.jobs_running.load(Ordering::Relaxed),
            ),
            (
                "quickcmd_agent_jobs_completed",
                "counter",
                "Jobs whose command ran and exited",
                self.jobs_completed.load(Ordering::Relaxed) as i64,
            ),
            (
                "quickcmd_agent_jobs_failed",
                "counter",
                "Jobs that could not run, timed out, were killed or cancelled",
                self.jobs_failed.load(Ordering::Relaxed) as i64,
            ),
            (
                "quickcmd_agent_jobs_rejected_total",
                "counter",
                "Authenticated jobs refused for scopes, image or limits",
                self.jobs_rejected.load(Ordering::Relaxed) as i64,
            ),
            (
                "quickcmd_agent_queue_depth",
                "gauge",
                "Accepted jobs waiting for a run slot",
                self.queue_depth.load(Ordering::Relaxed),
            ),
            (
                "quickcmd_agent_websocket_subscribers",
                "gauge",
                "Open log-stream WebSocket subscribers",
                self.ws_subscribers.load(Ordering::Relaxed),
            ),
            (
                "quickcmd_agent_connections_open",
                "gauge",
                "Open client connections, WebSockets included",
                self.connections_open.load(Ordering::Relaxed),
            ),
            (
                "quickcmd_agent_connections_refused_total",
                "counter",
                "Connections closed at once because max_connections were open",
                self.connections_refused.load(Ordering::Relaxed) as i64,
            ),
            (
                "quickcmd_agent_health_checks_total",
                "counter",
                "Docker and database checks run for /health (answers in between are cached)",
                self.health_checks.load(Ordering::Relaxed) as i64,
            ),
            (
                "quickcmd_agent_container_remove_failures_total",
                "counter",
                "Stopped job containers the engine would not remove after the result was sent (retried; swept at start)",
                self.container_remove_failures.load(Ordering::Relaxed) as i64,
            ),
            (
                "quickcmd_agent_refusals_delayed_total",
                "counter",
                "Unauthenticated refusals answered 50 ms late because their source was past audit_refusals_per_source_per_minute",
                self.refusals_delayed.load(Ordering::Relaxed) as i64,
            ),
            (
                "quickcmd_agent_audit_head_seq",
                "gauge",
                "Seq of the newest audit row (the chain head; compare with controllers' witnesses)",
                self.audit_head_seq.load(Ordering::Relaxed),
            ),
        ];
        for (name, kind, help, value) in simple {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let name = "quickcmd_agent_submissions_refused_total";
        let _ = writeln!(
            out,
            "# HELP {name} Refused submissions and reads by error code\n# TYPE {name} counter"
        );
        let map = self.rejections.lock().unwrap_or_else(|p| p.into_inner());
        for (code, count) in map.iter() {
            let _ = writeln!(out, "{name}{{code=\"{code}\"}} {count}");
        }
        drop(map);
        let name = "quickcmd_agent_connections_timed_out_total";
        let _ = writeln!(
            out,
            "# HELP {name} Connections and WebSockets closed by a timeout, by what timed out\n# TYPE {name} counter"
        );
        let map = self.timeouts.lock().unwrap_or_else(|p| p.into_inner());
        for (reason, count) in map.iter() {
            let _ = writeln!(out, "{name}{{reason=\"{reason}\"}} {count}");
        }
        drop(map);
        self.job_duration.render(
            &mut out,
            "quickcmd_agent_job_duration_seconds",
            "Run time of jobs from start to end",
        );
        self.sandbox_start.render(
            &mut out,
            "quickcmd_agent_sandbox_start_seconds",
            "Sandbox create-to-started latency",
        );
        if let Some(stats) = self
            .warm_pool
            .get()
            .and_then(DockerSandbox::warm_pool_stats)
        {
            render_warm_pool(&mut out, &stats);
        }
        out
    }
}

fn render_warm_pool(out: &mut String, stats: &WarmPoolStats) {
    let lines = [
        (
            "quickcmd_agent_warm_pool_size",
            "gauge",
            "Warm sandbox containers the pool keeps ready (warm_pool_size)",
            stats.size as u64,
        ),
        (
            "quickcmd_agent_warm_pool_idle",
            "gauge",
            "Warm sandbox containers ready now",
            stats.idle as u64,
        ),
        (
            "quickcmd_agent_warm_pool_claimed_total",
            "counter",
            "Jobs that ran in a warm pool container",
            stats.claimed_total,
        ),
        (
            "quickcmd_agent_warm_pool_misses_total",
            "counter",
            "Jobs that fit the pool but found it empty and ran cold",
            stats.misses_total,
        ),
        (
            "quickcmd_agent_warm_pool_cold_fallbacks_total",
            "counter",
            "Jobs whose sandbox differs from the pool profile and ran cold",
            stats.cold_fallbacks_total,
        ),
        (
            "quickcmd_agent_warm_pool_discarded_total",
            "counter",
            "Warm containers found stopped while idle and removed unused",
            stats.discarded_total,
        ),
    ];
    for (name, kind, help, value) in lines {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_names_stand_exactly() {
        let metrics = Metrics::default();
        metrics.job_accepted();
        metrics.job_started();
        metrics.refusal("INVALID_SIGNATURE");
        metrics.job_ended(true, Duration::from_millis(300));
        let text = metrics.render();
        for line in [
            "# TYPE quickcmd_agent_jobs_total counter",
            "quickcmd_agent_jobs_total 1",
            "# TYPE quickcmd_agent_jobs_running gauge",
            "quickcmd_agent_jobs_running 1",
            "quickcmd_agent_jobs_completed 1",
            "quickcmd_agent_jobs_failed 0",
            "quickcmd_agent_submissions_refused_total{code=\"INVALID_SIGNATURE\"} 1",
            "quickcmd_agent_job_duration_seconds_bucket{le=\"0.5\"} 1",
            "quickcmd_agent_job_duration_seconds_bucket{le=\"0.25\"} 0",
            "quickcmd_agent_job_duration_seconds_count 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
