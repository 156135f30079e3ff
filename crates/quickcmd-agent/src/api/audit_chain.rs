//! `GET /api/v1/audit/chain?from=&to=` (protocol v1.1 §5, "Witnessed audit"): a segment of
//! the audit chain, for a controller to check its witnesses against. Read auth, at most
//! [`MAX_CHAIN_ROWS`] rows; every row's links, digest and version, and the full row only
//! where its `controller_id` is the caller's (its own jobs and requests).

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use quickcmd_protocol::{chain_range, AuditChain, ErrorCode, MAX_CHAIN_ROWS};

use super::auth::authenticate_signed;
use super::ApiError;
use crate::audit::AuditError;
use crate::state::Agent;

impl From<AuditError> for ApiError {
    fn from(error: AuditError) -> ApiError {
        tracing::error!(%error, "audit log error");
        ApiError::new(
            ErrorCode::Internal,
            "the agent could not read its audit log; see the agent log",
        )
    }
}

fn bad_query(message: String) -> ApiError {
    ApiError::new(ErrorCode::InvalidPayload, message)
}

/// A required `seq` parameter: a whole number from 1.
fn seq_param(query: &HashMap<String, String>, name: &str) -> Result<u64, ApiError> {
    let text = query.get(name).ok_or_else(|| {
        bad_query(format!(
            "`{name}` is required: GET /api/v1/audit/chain?from=<seq>&to=<seq>"
        ))
    })?;
    match text.parse::<u64>() {
        Ok(seq) if seq >= 1 => Ok(seq),
        _ => Err(bad_query(format!(
            "`{name}` must be an audit row seq, a whole number from 1 (got {text:?})"
        ))),
    }
}

pub(super) async fn chain(
    State(agent): State<Arc<Agent>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<AuditChain>, ApiError> {
    let caller = authenticate_signed(
        &agent,
        "/api/v1/audit/chain",
        &headers,
        &query,
        "the audit chain",
    )?;
    let from = seq_param(&query, "from")?;
    let to = seq_param(&query, "to")?;
    chain_range(from, to).map_err(|error| {
        bad_query(format!(
            "{error}; ask for at most {MAX_CHAIN_ROWS} rows at a time"
        ))
    })?;
    let rows = agent.audit.segment(from, to, caller).await?;
    Ok(Json(AuditChain {
        agent_id: agent.config().agent_id.clone(),
        rows,
    }))
}
