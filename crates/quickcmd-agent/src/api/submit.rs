//! `POST /api/v1/jobs`: the HTTP side of a submission. Reads the body (size cap), refuses
//! while shutting down, parses it, hands it to [`admission::admit`] and answers; every
//! refusal writes the attempt's audit row and is counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use quickcmd_protocol::{ErrorCode, SubmitResponse, MAX_BODY_BYTES};

use super::ApiError;
use crate::admission::{self, Admitted, Attempt, Refused};
use crate::state::Agent;

pub(super) async fn submit(
    State(agent): State<Arc<Agent>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let remote = remote.to_string();
    let Ok(bytes) = read_body(&headers, body).await else {
        let error = ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("request body is over the {MAX_BODY_BYTES}-byte limit"),
        );
        let mut response = refuse(&agent, &Attempt::unread(remote), error).await;
        // The rest of the body was never read: say the connection ends, so a client does
        // not send its next request down a connection the server is about to close.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    };
    if agent.is_shutting_down() {
        let error = ApiError::new(
            ErrorCode::ShuttingDown,
            "the agent is shutting down and takes no new jobs; retry on another agent or later",
        );
        let attempt = admission::describe(&agent, remote, bytes).await;
        return refuse(&agent, &attempt, error).await;
    }
    match admission::admit(&agent, remote, bytes).await {
        (_, Ok(Admitted { job_id, status })) => (
            StatusCode::ACCEPTED,
            Json(SubmitResponse { job_id, status }),
        )
            .into_response(),
        // Nothing to audit it in: answered, not audited nor counted.
        (_, Err(refused @ Refused::AuditUnavailable { .. })) => {
            ApiError::from(refused).into_response()
        }
        (attempt, Err(refused)) => refuse(&agent, &attempt, refused.into()).await,
    }
}

/// Refuses: audits the attempt (a small row; under a flood from one source, a count in
/// that source's summary row; a failed audit write is logged and the answer stays the
/// refusal) and counts it.
async fn refuse(agent: &Agent, attempt: &Attempt, error: ApiError) -> Response {
    agent.metrics.refusal(error.code.as_str());
    let decision = agent.refusals.record(
        &attempt.source(),
        error.code.as_str(),
        agent.config().audit_refusals_per_source_per_minute,
        Instant::now(),
    );
    let mut rows = decision.summaries;
    if !rows.is_empty() {
        tracing::info!(
            remote = %attempt.remote,
            windows = rows.len(),
            "refused submissions beyond the per-source row limit were counted in summary audit rows"
        );
    }
    if decision.write_row {
        let details = serde_json::json!({ "error": error.message, "details": error.details });
        rows.push(attempt.refusal_event(error.code, details));
    }
    for row in rows {
        if let Err(audit_error) = agent.audit.append(row).await {
            tracing::error!(%audit_error, code = error.code.as_str(), "could not audit a refused submission");
        }
    }
    // The log is bounded like the audit: a line per refusal that gets its own row; beyond
    // the per-source limit only at debug (the summary rows keep the count), so a flood of
    // garbage cannot flood the journal. There, an unauthenticated refusal also waits a
    // little for its answer, as sshd makes failed logins wait: a sender that waits for its
    // answers (most do) sends a fraction of the requests, and the agent's CPU goes to
    // signed work. Nothing is held meanwhile but a timer; a signed job's refusal (a 429
    // for a full queue) is never delayed.
    if decision.write_row {
        tracing::info!(
            job_id = attempt.job_id.as_deref().unwrap_or("-"),
            controller = attempt.controller_id.as_deref().unwrap_or("-"),
            remote = %attempt.remote,
            code = error.code.as_str(),
            "submission refused"
        );
    } else {
        tracing::debug!(remote = %attempt.remote, code = error.code.as_str(), "refusal counted in its source's summary");
        if !attempt.verified {
            agent.metrics.refusal_delayed();
            tokio::time::sleep(FLOOD_ANSWER_DELAY).await;
        }
    }
    error.into_response()
}

/// How long an unauthenticated refusal waits once its source is past
/// `audit_refusals_per_source_per_minute` refusals in the current minute.
const FLOOD_ANSWER_DELAY: std::time::Duration = std::time::Duration::from_millis(50);

async fn read_body(headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, ()> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > MAX_BODY_BYTES) {
        return Err(());
    }
    // One byte over the limit is enough to know it is too large.
    axum::body::to_bytes(body, MAX_BODY_BYTES + 1)
        .await
        .map_err(|_| ())
}
