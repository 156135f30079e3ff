//! `GET /api/v1/jobs/:id`, `GET /api/v1/jobs`, `DELETE /api/v1/jobs/:id`: authenticated,
//! and a controller sees only its own jobs (another's is a 404, like a missing one).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use quickcmd_protocol::reason;
use quickcmd_protocol::{
    Encoding, ErrorCode, JobList, JobResult, JobStatus, JobSummary, JobView, SubmitResponse,
};

use super::auth::{authenticate, authenticate_signed, Reader};
use super::ApiError;
use crate::audit::{AuditEvent, AuditKind};
use crate::clock;
use crate::runner::{self, CancelOutcome};
use crate::state::Agent;
use crate::store::JobRecord;

const DEFAULT_LIST_LIMIT: usize = 50;
const MAX_LIST_LIMIT: usize = 1000;

fn not_found(job_id: &str) -> ApiError {
    ApiError::new(
        ErrorCode::JobNotFound,
        format!("no job `{job_id}` for this controller"),
    )
}

/// The job, if it exists and this reader may see it.
pub(super) async fn visible_job(
    agent: &Agent,
    reader: &Reader,
    job_id: &str,
) -> Result<JobRecord, ApiError> {
    match agent.store.get_job(job_id).await? {
        Some(job) if reader.sees(&job.controller_id) => Ok(job),
        _ => Err(not_found(job_id)),
    }
}

pub(super) async fn get(
    State(agent): State<Arc<Agent>>,
    Path(job_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<JobView>, ApiError> {
    let path = format!("/api/v1/jobs/{job_id}");
    let reader = authenticate(&agent, &Method::GET, &path, &headers, &query, true)?;
    let encoding = encoding_of(&query)?;
    let job = visible_job(&agent, &reader, &job_id).await?;
    let status: JobStatus = job.status;
    let result = if status.is_final() {
        Some(result_of(&agent, &job, encoding).await?)
    } else {
        None
    };
    Ok(Json(JobView {
        job_id: job.job_id,
        status,
        requested_by: job.requested_by,
        result,
    }))
}

/// The `encoding` query parameter (v1.1): `text` (the default) or `base64`.
pub(super) fn encoding_of(query: &HashMap<String, String>) -> Result<Encoding, ApiError> {
    Encoding::from_query(query.get("encoding").map(String::as_str))
        .map_err(|error| ApiError::new(ErrorCode::InvalidPayload, error.to_string()))
}

async fn result_of(
    agent: &Agent,
    job: &JobRecord,
    encoding: Encoding,
) -> Result<JobResult, ApiError> {
    let frames = agent.store.frames_since(&job.job_id, 0).await?;
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for frame in frames {
        match frame.stream.as_str() {
            "stderr" => stderr.extend_from_slice(&frame.data),
            _ => stdout.extend_from_slice(&frame.data),
        }
    }
    // Each stored frame ends on a character boundary, so the text of the whole is the
    // text of its frames.
    let (stdout, stderr) = (encoding.encode(&stdout), encoding.encode(&stderr));
    let start_ms = job.started_at_ms.unwrap_or(job.created_at_ms);
    let end_ms = job.ended_at_ms.unwrap_or(start_ms);
    Ok(JobResult {
        job_id: job.job_id.clone(),
        status: job.status,
        sandbox_id: job.sandbox_id.clone().unwrap_or_default(),
        exit_code: job.exit_code.unwrap_or(-1),
        stdout,
        stderr,
        start_time: clock::rfc3339_ms(start_ms),
        end_time: clock::rfc3339_ms(end_ms),
        duration_ms: if job.started_at_ms.is_some() {
            end_ms.saturating_sub(start_ms)
        } else {
            0
        },
        error: job.error.clone(),
        reason: job.reason.clone(),
        stdout_truncated: job.stdout_truncated,
        stderr_truncated: job.stderr_truncated,
        stdout_bytes: job.stdout_bytes.max(0) as u64,
        stderr_bytes: job.stderr_bytes.max(0) as u64,
        stdout_sha256: job.stdout_sha256.clone().unwrap_or_default(),
        stderr_sha256: job.stderr_sha256.clone().unwrap_or_default(),
        audit: agent.job_witness(&job.job_id, &job.controller_id).await,
    })
}

pub(super) async fn list(
    State(agent): State<Arc<Agent>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<JobList>, ApiError> {
    let controller_id =
        authenticate_signed(&agent, "/api/v1/jobs", &headers, &query, "listing jobs")?;
    let status = match query.get("status").filter(|s| !s.is_empty()) {
        Some(text) => Some(JobStatus::parse(text).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidPayload,
                format!(
                    "status `{text}` is not one of pending, running, completed, failed, rejected"
                ),
            )
        })?),
        None => None,
    };
    let limit = match query.get("limit") {
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_LIST_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidPayload,
                    format!("limit must be a number from 1 to {MAX_LIST_LIMIT}"),
                )
            })?,
        None => DEFAULT_LIST_LIMIT,
    };
    let jobs = agent.store.list_jobs(&controller_id, status, limit).await?;
    Ok(Json(JobList {
        jobs: jobs
            .into_iter()
            .map(|job| JobSummary {
                job_id: job.job_id,
                status: job.status,
                created_at: clock::rfc3339_ms(job.created_at_ms),
                command: job.command,
                exit_code: job.exit_code,
                requested_by: job.requested_by,
            })
            .collect(),
    }))
}

pub(super) async fn cancel(
    State(agent): State<Arc<Agent>>,
    Path(job_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let path = format!("/api/v1/jobs/{job_id}");
    let reader = authenticate(&agent, &Method::DELETE, &path, &headers, &query, false)?;
    let job = visible_job(&agent, &reader, &job_id).await?;
    let event = AuditEvent {
        job_id: Some(job_id.clone()),
        controller_id: Some(job.controller_id.clone()),
        status: Some(job.status.as_str().to_string()),
        ..AuditEvent::new(AuditKind::Cancel)
    };
    if let Err(error) = agent.audit.append(event).await {
        tracing::error!(%error, "could not audit a cancel request");
    }
    match runner::cancel(&agent, &job_id, reason::CANCELLED).await {
        CancelOutcome::Cancelled => {
            let status = match agent.store.get_job(&job_id).await {
                Ok(Some(job)) => job.status,
                _ => JobStatus::Running,
            };
            Ok((
                StatusCode::ACCEPTED,
                Json(SubmitResponse { job_id, status }),
            )
                .into_response())
        }
        CancelOutcome::NotLive => Err(ApiError::new(
            ErrorCode::JobAlreadyFinished,
            format!("job `{job_id}` has already ended ({})", job.status),
        )),
    }
}
