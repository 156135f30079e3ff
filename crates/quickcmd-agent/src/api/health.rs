//! `GET /health` and `GET /metrics`: no auth, cheap, bounded.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use quickcmd_protocol::Health;

use crate::clock;
use crate::state::Agent;

const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

pub(super) async fn health(State(agent): State<Arc<Agent>>) -> Response {
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

pub(super) async fn metrics(State(agent): State<Arc<Agent>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        agent.metrics.render(),
    )
        .into_response()
}
