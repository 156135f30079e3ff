//! The HTTPS API of protocol-v1: one file per resource, one error type for all of them.

mod auth;
mod health;
mod jobs;
mod openapi;
mod stream;
mod submit;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use quickcmd_protocol::{ErrorBody, ErrorCode};

use crate::state::Agent;

pub use openapi::{openapi_json, OPENAPI_YAML};

/// Every route the agent serves: the one list the router is built from, so that tests can
/// hold `docs/openapi.yaml` against it.
fn routes(health_cache: Arc<health::HealthCache>) -> Vec<(&'static str, MethodRouter<Arc<Agent>>)> {
    vec![
        ("/api/v1/jobs", post(submit::submit).get(jobs::list)),
        ("/api/v1/jobs/{id}", get(jobs::get).delete(jobs::cancel)),
        ("/api/v1/stream/{id}", get(stream::stream)),
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
pub fn router(agent: Arc<Agent>) -> Router {
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
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<String>,
    pub retry_after_seconds: Option<u64>,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
            details: None,
            retry_after_seconds: None,
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> ApiError {
        self.details = Some(details.into());
        self
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
