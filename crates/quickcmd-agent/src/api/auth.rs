//! Read authentication (protocol-v1 §2): the signed `Authorization` header, or the same
//! three values as query parameters for WebSocket clients that cannot set headers.

use std::collections::HashMap;

use axum::http::{header, HeaderMap, Method};
use quickcmd_protocol::{ErrorCode, ReadAuth};

use super::ApiError;
use crate::clock;
use crate::state::Agent;

/// Who is reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Reader {
    Controller(String),
    /// `legacy_open_reads`: the seed's unauthenticated reads.
    Open,
}

impl Reader {
    /// Whether this reader may see a job of `controller_id`.
    pub(super) fn sees(&self, controller_id: &str) -> bool {
        match self {
            Reader::Controller(id) => id == controller_id,
            Reader::Open => true,
        }
    }
}

fn unauthorized(agent: &Agent, why: &str) -> ApiError {
    agent.metrics.refusal(ErrorCode::Unauthorized.as_str());
    ApiError::new(
        ErrorCode::Unauthorized,
        format!("read requests must be signed: {why}"),
    )
}

/// Checks a read that has no legacy open form and returns the signing controller's id;
/// `what` names the request in the refusal.
pub(super) fn authenticate_signed(
    agent: &Agent,
    path: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    what: &str,
) -> Result<String, ApiError> {
    match authenticate(agent, &Method::GET, path, headers, query, false)? {
        Reader::Controller(controller_id) => Ok(controller_id),
        _ => Err(ApiError::new(
            ErrorCode::Unauthorized,
            format!("{what} needs a signed request"),
        )),
    }
}

/// Checks the credentials of a read; `open_allowed` says whether this endpoint has a
/// legacy open form.
pub(super) fn authenticate(
    agent: &Agent,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
    open_allowed: bool,
) -> Result<Reader, ApiError> {
    let config = agent.config();
    let credentials = if let Some(value) = headers.get(header::AUTHORIZATION) {
        let text = value
            .to_str()
            .map_err(|_| unauthorized(agent, "Authorization header is not text"))?;
        ReadAuth::parse_header(text).map_err(|e| unauthorized(agent, &e.to_string()))?
    } else if let (Some(id), Some(ts), Some(sig)) = (
        query.get("controller_id"),
        query.get("timestamp"),
        query.get("signature"),
    ) {
        ReadAuth {
            controller_id: id.clone(),
            timestamp: ts
                .parse()
                .map_err(|_| unauthorized(agent, "timestamp is not a whole number"))?,
            signature: sig.clone(),
        }
    } else if open_allowed && config.legacy_open_reads {
        return Ok(Reader::Open);
    } else {
        return Err(unauthorized(agent, "no Authorization header (QuickCMD-HMAC-SHA256 controller_id=..,timestamp=..,signature=..)"));
    };
    let now = clock::now_unix();
    if !credentials.within_clock_window(now, config.clock_skew_seconds) {
        return Err(unauthorized(
            agent,
            "timestamp is outside the agent's clock window",
        ));
    }
    let Some(grant) = config.controller(&credentials.controller_id) else {
        return Err(unauthorized(agent, "unknown controller or bad signature"));
    };
    if !credentials.verify(grant.secret.as_bytes(), method.as_str(), path) {
        return Err(unauthorized(agent, "unknown controller or bad signature"));
    }
    Ok(Reader::Controller(credentials.controller_id))
}
