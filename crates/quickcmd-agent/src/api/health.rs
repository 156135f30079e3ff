//! `GET /health` and `GET /metrics`: no auth, cheap, bounded. The health checks (a Docker
//! ping and both database locks) run at most once per [`HEALTH_CACHE_FOR`]; callers in
//! between, and callers waiting while a check runs, share its result.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use quickcmd_protocol::Health;

use crate::clock;
use crate::state::Agent;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one check's result answers `/health`.
pub(super) const HEALTH_CACHE_FOR: Duration = Duration::from_secs(1);

/// The last check and when it finished.
#[derive(Default)]
pub(super) struct HealthCache {
    last: Mutex<Option<(Instant, Checked)>>,
}

#[derive(Clone)]
struct Checked {
    healthy: bool,
    checks: BTreeMap<String, String>,
}

impl HealthCache {
    /// A result at most [`HEALTH_CACHE_FOR`] old; one caller runs the check while the
    /// others wait for its result.
    async fn get(&self, agent: &Agent) -> Checked {
        let mut last = self.last.lock().await;
        if let Some((at, checked)) = last.as_ref() {
            if at.elapsed() < HEALTH_CACHE_FOR {
                return checked.clone();
            }
        }
        agent.metrics.health_checked();
        let checked = run_checks(agent).await;
        *last = Some((Instant::now(), checked.clone()));
        checked
    }
}

pub(super) async fn health(agent: Arc<Agent>, cache: Arc<HealthCache>) -> Response {
    let Checked { healthy, checks } = cache.get(&agent).await;
    let body = Health {
        status: if healthy { "healthy" } else { "unhealthy" }.to_string(),
        timestamp: clock::now_unix(),
        version: Some(env!("CARGO_PKG_VERSION").to_string()),
        agent_id: Some(agent.config().agent_id.clone()),
        running_jobs: Some(agent.metrics.running()),
        checks: Some(checks),
    };
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn run_checks(agent: &Agent) -> Checked {
    let mut checks = BTreeMap::new();
    let mut healthy = true;
    let docker = tokio::time::timeout(CHECK_TIMEOUT, agent.sandbox.ping()).await;
    let docker_state = match docker {
        Ok(Ok(())) => "ok".to_string(),
        Ok(Err(error)) => format!("unreachable: {error}"),
        Err(_) => "unreachable: no answer within 3 s".to_string(),
    };
    healthy &= docker_state == "ok";
    checks.insert("docker".to_string(), docker_state);
    let database = match (agent.store.check().await, agent.audit.check().await) {
        (Ok(()), Ok(())) => "ok".to_string(),
        (Err(error), _) => format!("job store unavailable: {error}"),
        (_, Err(error)) => format!("audit log unavailable: {error}"),
    };
    healthy &= database == "ok";
    checks.insert("database".to_string(), database);
    Checked { healthy, checks }
}

pub(super) async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    agent.metrics.set_audit_head_seq(agent.audit.head_seq());
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        agent.metrics.render(),
    )
        .into_response()
}
