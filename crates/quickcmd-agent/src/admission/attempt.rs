//! The submission audit row: who asked for what, from where. Every answer to a submit,
//! accepted or refused, writes one.

use quickcmd_protocol::{ErrorCode, SubmitRequest};

use crate::audit::{AuditEvent, AuditKind};

/// What is known about a submission attempt, for its audit row.
#[derive(Default)]
pub(crate) struct Attempt {
    pub remote: String,
    pub job_id: Option<String>,
    pub controller_id: Option<String>,
    pub command: Option<String>,
    pub prompt: Option<String>,
    /// The payload's `requested_by` (v1.1), recorded in the row's `details`.
    pub requested_by: Option<String>,
}

impl Attempt {
    /// An attempt of which only the remote address is known (the body was not read).
    pub(crate) fn unread(remote: String) -> Attempt {
        Attempt {
            remote,
            ..Attempt::default()
        }
    }

    pub(crate) fn from_request(remote: String, request: &SubmitRequest<'_>) -> Attempt {
        let payload = &request.payload;
        Attempt {
            remote,
            job_id: Some(payload.job_id.clone()),
            controller_id: Some(payload.controller_id.clone()),
            command: Some(payload.command.clone()),
            prompt: Some(payload.prompt.clone()),
            requested_by: payload.requested_by.clone(),
        }
    }

    /// Best effort for bodies that did not pass the shape check.
    pub(crate) fn from_unparsed(remote: String, body: &[u8]) -> Attempt {
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
            requested_by: None,
        }
    }

    pub(crate) fn event(
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
            details: with_requested_by(details, self.requested_by.as_deref()),
            ..AuditEvent::new(AuditKind::Submission)
        }
    }
}

/// `details` with `"requested_by"` added when the payload named one (a `Null` becomes an
/// object; any other non-object is kept as it is).
pub(crate) fn with_requested_by(
    details: serde_json::Value,
    requested_by: Option<&str>,
) -> serde_json::Value {
    let Some(requested_by) = requested_by else {
        return details;
    };
    let mut details = match details {
        serde_json::Value::Null => serde_json::Value::Object(serde_json::Map::new()),
        other => other,
    };
    if let Some(object) = details.as_object_mut() {
        object.insert("requested_by".to_string(), requested_by.into());
    }
    details
}
