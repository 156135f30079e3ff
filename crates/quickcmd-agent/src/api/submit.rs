//! `POST /api/v1/jobs`: every check of protocol-v1 §1 in the table's order, an audit row
//! for every attempt, and nothing accepted unless its audit row is written first.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use quickcmd_protocol::{
    parse_submit, verify_submit, ErrorCode, JobStatus, PayloadError, SignatureRefusal,
    SubmitRequest, SubmitResponse, ALGORITHM, MAX_BODY_BYTES,
};

use super::ApiError;
use crate::audit::{AuditEvent, AuditKind};
use crate::clock;
use crate::jobs::{admit, QueuedJob};
use crate::state::Agent;
use crate::store::{InsertOutcome, JobRecord, NewJob};

/// Seconds a client is told to wait when the queue is full.
const QUEUE_FULL_RETRY_AFTER: u64 = 5;

/// What is known of an attempt, for its audit row.
#[derive(Default)]
struct Attempt {
    remote: String,
    job_id: Option<String>,
    controller_id: Option<String>,
    command: Option<String>,
    prompt: Option<String>,
}

impl Attempt {
    fn from_request(remote: String, request: &SubmitRequest<'_>) -> Attempt {
        let payload = &request.payload;
        Attempt {
            remote,
            job_id: Some(payload.job_id.clone()),
            controller_id: Some(payload.controller_id.clone()),
            command: Some(payload.command.clone()),
            prompt: Some(payload.prompt.clone()),
        }
    }

    /// Best effort for bodies that did not pass the shape check.
    fn from_unparsed(remote: String, body: &[u8]) -> Attempt {
        let value: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        let field = |name: &str| {
            value
                .pointer(&format!("/payload/{name}"))
                .and_then(|v| v.as_str())
                .map(str::to_string)
        };
        Attempt {
            remote,
            job_id: field("job_id"),
            controller_id: field("controller_id"),
            command: field("command"),
            prompt: field("prompt"),
        }
    }

    fn event(
        &self,
        accepted: bool,
        code: Option<ErrorCode>,
        status: Option<&str>,
        details: serde_json::Value,
    ) -> AuditEvent {
        AuditEvent {
            job_id: self.job_id.clone(),
            controller_id: self.controller_id.clone(),
            remote_addr: Some(self.remote.clone()),
            accepted: Some(accepted),
            code: code.map(|c| c.as_str().to_string()),
            status: status.map(str::to_string),
            command: self.command.clone(),
            prompt: self.prompt.clone(),
            details,
            ..AuditEvent::new(AuditKind::Submission)
        }
    }
}

/// Refuses: audits the attempt (a failed audit write is logged; the answer stays the
/// refusal) and counts it.
async fn refuse(agent: &Agent, attempt: &Attempt, error: ApiError) -> Response {
    agent.metrics.refusal(error.code.as_str());
    let details = serde_json::json!({ "error": error.message, "details": error.details });
    if let Err(audit_error) = agent
        .audit
        .append(attempt.event(false, Some(error.code), None, details))
        .await
    {
        tracing::error!(%audit_error, code = error.code.as_str(), "could not audit a refused submission");
    }
    tracing::info!(
        job_id = attempt.job_id.as_deref().unwrap_or("-"),
        controller = attempt.controller_id.as_deref().unwrap_or("-"),
        remote = %attempt.remote,
        code = error.code.as_str(),
        "submission refused"
    );
    error.into_response()
}

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
        return refuse(
            &agent,
            &Attempt {
                remote,
                ..Attempt::default()
            },
            error,
        )
        .await;
    };
    if agent.is_shutting_down() {
        let error = ApiError::new(
            ErrorCode::ShuttingDown,
            "the agent is shutting down and takes no new jobs; retry on another agent or later",
        );
        return refuse(&agent, &Attempt::from_unparsed(remote, &bytes), error).await;
    }
    let request = match parse_submit(&bytes) {
        Ok(request) => request,
        Err(error) => {
            let api_error = match &error {
                PayloadError::TooLarge { .. } => {
                    ApiError::new(ErrorCode::PayloadTooLarge, error.to_string())
                }
                PayloadError::InvalidJson(_) => {
                    ApiError::new(ErrorCode::InvalidJson, error.to_string())
                }
                PayloadError::InvalidPayload(_) => {
                    ApiError::new(ErrorCode::InvalidPayload, error.to_string())
                }
            };
            return refuse(&agent, &Attempt::from_unparsed(remote, &bytes), api_error).await;
        }
    };
    let attempt = Attempt::from_request(remote, &request);
    match admit_request(&agent, &attempt, &request).await {
        Ok(response) => response,
        Err(error) => refuse(&agent, &attempt, error).await,
    }
}

async fn admit_request(
    agent: &Arc<Agent>,
    attempt: &Attempt,
    request: &SubmitRequest<'_>,
) -> Result<Response, ApiError> {
    let payload = &request.payload;
    if request.algorithm != ALGORITHM {
        return Err(ApiError::new(
            ErrorCode::UnsupportedAlgorithm,
            format!(
                "signature algorithm `{}` is not supported; use {ALGORITHM}",
                request.algorithm
            ),
        ));
    }
    let config = agent.config();
    let Some(grant) = config.controller(&payload.controller_id) else {
        return Err(ApiError::new(
            ErrorCode::ControllerNotAllowed,
            format!(
                "controller `{}` is not allowed on this agent",
                payload.controller_id
            ),
        ));
    };
    let form = verify_submit(grant.secret.as_bytes(), request).map_err(|refusal| {
        let error = ApiError::new(ErrorCode::InvalidSignature, "signature does not verify for this controller's secret");
        match refusal {
            SignatureRefusal::Mismatch => error,
            SignatureRefusal::UnsignedExtension { field } => error.with_details(format!(
                "the payload carries `{field}`, which only the raw form signs; sign the payload bytes exactly as sent",
            )),
        }
    })?;
    admit::check_clock(payload, clock::now_unix(), &config)
        .map_err(|r| ApiError::new(r.code, r.message))?;

    let signed = String::from_utf8_lossy(form.signed_bytes(request)).into_owned();
    if let Some(existing) = agent
        .store
        .get_job(&payload.job_id)
        .await
        .map_err(internal)?
    {
        return resubmission(agent, attempt, request, &signed, existing).await;
    }

    let sandbox = match admit::resolve_sandbox(payload, grant, &config) {
        Ok(sandbox) => sandbox,
        Err(refusal) if refusal.code == ErrorCode::InvalidPayload => {
            return Err(ApiError::new(refusal.code, refusal.message));
        }
        Err(refusal) => {
            store_rejected(agent, request, &signed, &refusal).await;
            return Err(ApiError::new(refusal.code, refusal.message));
        }
    };

    let Some(reservation) = agent.reserve_slot() else {
        let mut error = ApiError::new(
            ErrorCode::QueueFull,
            format!(
                "the agent is running {} jobs and has {} waiting; retry later",
                config.max_concurrent_jobs, config.max_queued_jobs
            ),
        );
        error.retry_after_seconds = Some(QUEUE_FULL_RETRY_AFTER);
        return Err(error);
    };

    let sandbox_json = serde_json::to_string(&sandbox).ok();
    let details = serde_json::json!({ "signed_form": if matches!(form, quickcmd_protocol::SignedForm::Raw) { "raw" } else { "go_canonical" }, "sandbox": sandbox });
    if let Err(error) = agent
        .audit
        .append(attempt.event(true, None, Some("pending"), details))
        .await
    {
        tracing::error!(job_id = %payload.job_id, %error, "audit write failed; job refused");
        return Ok(ApiError::new(
            ErrorCode::AuditUnavailable,
            "the audit log cannot be written, so no job is accepted",
        )
        .into_response());
    }
    let new_job = NewJob {
        job_id: payload.job_id.clone(),
        controller_id: payload.controller_id.clone(),
        command: payload.command.clone(),
        prompt: payload.prompt.clone(),
        payload_json: signed.clone(),
        signature: request.signature.to_ascii_lowercase(),
        canonical: !matches!(form, quickcmd_protocol::SignedForm::Raw),
        sandbox_json,
        ttl: payload.ttl,
        timestamp: payload.timestamp,
        created_at_ms: clock::now_ms(),
        status: JobStatus::Pending,
        reason: None,
        error: None,
    };
    match agent.store.insert_job(new_job).await.map_err(internal)? {
        InsertOutcome::Inserted => {}
        // Another request with this id won the race since we looked.
        InsertOutcome::Exists(existing) => {
            drop(reservation);
            return resubmission(agent, attempt, request, &signed, existing).await;
        }
    }
    agent.metrics.job_accepted();
    agent.enqueue(
        reservation,
        QueuedJob {
            job_id: payload.job_id.clone(),
            controller_id: payload.controller_id.clone(),
            command: payload.command.clone(),
            ttl: payload.ttl,
            sandbox,
        },
    );
    tracing::info!(job_id = %payload.job_id, controller = %payload.controller_id, remote = %attempt.remote, "job accepted");
    Ok(accepted(&payload.job_id, JobStatus::Pending))
}

fn accepted(job_id: &str, status: JobStatus) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(SubmitResponse {
            job_id: job_id.to_string(),
            status,
        }),
    )
        .into_response()
}

fn internal(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "job store error");
    ApiError::new(
        ErrorCode::Internal,
        "the agent could not read or write its job store; see the agent log",
    )
}

/// The same job id again: the same signed bytes and signature are a retry (202 with the
/// current status, `rejected` included); anything else is 409.
async fn resubmission(
    agent: &Arc<Agent>,
    attempt: &Attempt,
    request: &SubmitRequest<'_>,
    signed: &str,
    existing: JobRecord,
) -> Result<Response, ApiError> {
    let same = existing.payload_json == signed
        && existing.signature.eq_ignore_ascii_case(&request.signature);
    if !same {
        return Err(ApiError::new(
            ErrorCode::DuplicateJob,
            format!(
                "job id `{}` was already used with a different payload",
                existing.job_id
            ),
        ));
    }
    let status: JobStatus = existing.status;
    let details = serde_json::json!({ "resubmission": true });
    if let Err(error) = agent
        .audit
        .append(attempt.event(true, None, Some(status.as_str()), details))
        .await
    {
        tracing::error!(%error, "could not audit a resubmission");
    }
    Ok(accepted(&existing.job_id, status))
}

async fn store_rejected(
    agent: &Arc<Agent>,
    request: &SubmitRequest<'_>,
    signed: &str,
    refusal: &admit::Refusal,
) {
    let payload = &request.payload;
    let now = clock::now_ms();
    let job = NewJob {
        job_id: payload.job_id.clone(),
        controller_id: payload.controller_id.clone(),
        command: payload.command.clone(),
        prompt: payload.prompt.clone(),
        payload_json: signed.to_string(),
        signature: request.signature.to_ascii_lowercase(),
        canonical: signed.as_bytes() != request.payload_raw,
        sandbox_json: payload
            .sandbox
            .as_ref()
            .and_then(|s| serde_json::to_string(s).ok()),
        ttl: payload.ttl,
        timestamp: payload.timestamp,
        created_at_ms: now,
        status: JobStatus::Rejected,
        reason: Some(refusal.code.as_str().to_ascii_lowercase()),
        error: Some(refusal.message.clone()),
    };
    match agent.store.insert_job(job).await {
        Ok(_) => agent.metrics.job_rejected(),
        Err(error) => {
            tracing::error!(job_id = %payload.job_id, %error, "could not store a rejected job")
        }
    }
}
