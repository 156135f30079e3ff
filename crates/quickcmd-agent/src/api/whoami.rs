//! `GET /api/v1/whoami` (protocol v1.1): who the agent takes a signed caller for, so a
//! controller can check that its secret works without touching any job.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::Json;
use quickcmd_protocol::WhoAmI;

use super::auth::authenticate_signed;
use super::ApiError;
use crate::state::Agent;

pub(super) async fn whoami(
    State(agent): State<Arc<Agent>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<WhoAmI>, ApiError> {
    // No open form: the point is to prove the secret, even with `legacy_open_reads`.
    let controller_id = authenticate_signed(&agent, "/api/v1/whoami", &headers, &query, "whoami")?;
    Ok(Json(WhoAmI {
        controller_id,
        agent_id: agent.config().agent_id.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
    }))
}
