//! The HTTPS API of protocol-v1: one file per resource, one error type for all of them.

mod audit_chain;
mod auth;
mod health;
mod job_routes;
mod openapi;
mod stream;
mod submit;
mod whoami;

pub(crate) use stream::parse_since;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use quickcmd_protocol::{ErrorBody, ErrorCode, PayloadError};

use crate::admission::{Refusal, Refused};
use crate::state::Agent;
use crate::store::StoreError;

/// Every route the agent serves: the one list the router is built from, so that tests can
/// hold `docs/openapi.yaml` against it.
fn routes(health_cache: Arc<health::HealthCache>) -> Vec<(&'static str, MethodRouter<Arc<Agent>>)> {
    vec![
        ("/api/v1/jobs", post(submit::submit).get(job_routes::list)),
        (
            "/api/v1/jobs/{id}",
            get(job_routes::get).delete(job_routes::cancel),
        ),
        ("/api/v1/stream/{id}", get(stream::stream)),
        ("/api/v1/audit/chain", get(audit_chain::chain)),
        ("/api/v1/whoami", get(whoami::whoami)),
        ("/api/v1/openapi.json", get(openapi::openapi)),
        (
            "/health",
            get(move |State(agent): State<Arc<Agent>>| health::health(agent, health_cache.clone())),
        ),
        ("/metrics", get(health::metrics)),
    ]
}

/// The paths of every route, in axum's `{param}` syntax (which OpenAPI shares).
pub fn route_paths() -> Vec<&'static str> {
    routes(Arc::default())
        .into_iter()
        .map(|(path, _)| path)
        .collect()
}

/// Builds the router over the shared agent state.
pub(crate) fn router(agent: Arc<Agent>) -> Router {
    routes(Arc::new(health::HealthCache::default()))
        .into_iter()
        .fold(Router::new(), |router, (path, methods)| {
            router.route(path, methods)
        })
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(agent)
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint; see docs/api.md")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this endpoint does not take that method",
    )
}

/// Every error answer: status from the code, body `{"error", "code", "details"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<String>,
    pub retry_after_seconds: Option<u64>,
}

impl ApiError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: None,
            retry_after_seconds: None,
        }
    }
}

/// How long a client should wait before retrying on a full disk.
const STORAGE_FULL_RETRY_SECONDS: u64 = 60;

/// 507 `STORAGE_FULL`: what a full data directory answers, whichever database hit it.
fn storage_full() -> ApiError {
    ApiError {
        retry_after_seconds: Some(STORAGE_FULL_RETRY_SECONDS),
        ..ApiError::new(
            ErrorCode::StorageFull,
            "the agent's disk is full, so no job is accepted; retry later (operator: free space in data_dir)",
        )
    }
}

/// The one place a job-store failure becomes an answer: logged in full, answered 500
/// without the SQL details (507 when the disk is full).
impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        tracing::error!(%error, "job store error");
        if crate::db::is_disk_full(&error) {
            return storage_full();
        }
        ApiError::new(
            ErrorCode::Internal,
            "the agent could not read or write its job store; see the agent log",
        )
    }
}

impl From<Refusal> for ApiError {
    fn from(refusal: Refusal) -> ApiError {
        ApiError {
            code: refusal.code,
            message: refusal.message,
            details: refusal.details,
            retry_after_seconds: refusal.retry_after_seconds,
        }
    }
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> ApiError {
        match refused {
            Refused::Check(refusal) => refusal.into(),
            Refused::Store(error) => error.into(),
            Refused::AuditUnavailable { disk_full: true } => storage_full(),
            Refused::AuditUnavailable { disk_full: false } => ApiError::new(
                ErrorCode::AuditUnavailable,
                "the audit log cannot be written, so no job is accepted",
            ),
            Refused::Body(error) => error.into(),
            Refused::Internal => ApiError::new(
                ErrorCode::Internal,
                "the agent could not check this submission; retry later",
            ),
        }
    }
}

/// A body that is not a well-formed submit request.
impl From<PayloadError> for ApiError {
    fn from(error: PayloadError) -> ApiError {
        let code = match &error {
            PayloadError::TooLarge { .. } => ErrorCode::PayloadTooLarge,
            PayloadError::InvalidJson(_) => ErrorCode::InvalidJson,
            PayloadError::InvalidPayload(_) => ErrorCode::InvalidPayload,
        };
        ApiError::new(code, error.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = ErrorBody {
            error: self.message,
            code: self.code.as_str().to_string(),
            details: self.details,
        };
        let mut response = (status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after_seconds {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}
