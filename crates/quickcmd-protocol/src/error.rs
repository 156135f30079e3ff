//! Error codes of the wire contract and the JSON error body.

use serde::{Deserialize, Serialize};

/// Every `code` an agent answers with, and its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    PayloadTooLarge,
    InvalidJson,
    InvalidPayload,
    UnsupportedAlgorithm,
    ControllerNotAllowed,
    InvalidSignature,
    JobExpired,
    JobTooOld,
    TimestampInFuture,
    TtlTooLong,
    DuplicateJob,
    InsufficientScopes,
    ImageNotAllowed,
    SandboxLimitExceeded,
    QueueFull,
    Unauthorized,
    JobNotFound,
    JobAlreadyFinished,
    AuditUnavailable,
    StorageFull,
    ShuttingDown,
    NotFound,
    MethodNotAllowed,
    Internal,
}

impl ErrorCode {
    /// Every code, for documentation and metrics.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::PayloadTooLarge,
        ErrorCode::InvalidJson,
        ErrorCode::InvalidPayload,
        ErrorCode::UnsupportedAlgorithm,
        ErrorCode::ControllerNotAllowed,
        ErrorCode::InvalidSignature,
        ErrorCode::JobExpired,
        ErrorCode::JobTooOld,
        ErrorCode::TimestampInFuture,
        ErrorCode::TtlTooLong,
        ErrorCode::DuplicateJob,
        ErrorCode::InsufficientScopes,
        ErrorCode::ImageNotAllowed,
        ErrorCode::SandboxLimitExceeded,
        ErrorCode::QueueFull,
        ErrorCode::Unauthorized,
        ErrorCode::JobNotFound,
        ErrorCode::JobAlreadyFinished,
        ErrorCode::AuditUnavailable,
        ErrorCode::StorageFull,
        ErrorCode::ShuttingDown,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::PayloadTooLarge => "PAYLOAD_TOO_LARGE",
            ErrorCode::InvalidJson => "INVALID_JSON",
            ErrorCode::InvalidPayload => "INVALID_PAYLOAD",
            ErrorCode::UnsupportedAlgorithm => "UNSUPPORTED_ALGORITHM",
            ErrorCode::ControllerNotAllowed => "CONTROLLER_NOT_ALLOWED",
            ErrorCode::InvalidSignature => "INVALID_SIGNATURE",
            ErrorCode::JobExpired => "JOB_EXPIRED",
            ErrorCode::JobTooOld => "JOB_TOO_OLD",
            ErrorCode::TimestampInFuture => "TIMESTAMP_IN_FUTURE",
            ErrorCode::TtlTooLong => "TTL_TOO_LONG",
            ErrorCode::DuplicateJob => "DUPLICATE_JOB",
            ErrorCode::InsufficientScopes => "INSUFFICIENT_SCOPES",
            ErrorCode::ImageNotAllowed => "IMAGE_NOT_ALLOWED",
            ErrorCode::SandboxLimitExceeded => "SANDBOX_LIMIT_EXCEEDED",
            ErrorCode::QueueFull => "QUEUE_FULL",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::JobNotFound => "JOB_NOT_FOUND",
            ErrorCode::JobAlreadyFinished => "JOB_ALREADY_FINISHED",
            ErrorCode::AuditUnavailable => "AUDIT_UNAVAILABLE",
            ErrorCode::StorageFull => "STORAGE_FULL",
            ErrorCode::ShuttingDown => "SHUTTING_DOWN",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::MethodNotAllowed => "METHOD_NOT_ALLOWED",
            ErrorCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status protocol-v1 gives this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::InvalidJson
            | ErrorCode::InvalidPayload
            | ErrorCode::UnsupportedAlgorithm => 400,
            ErrorCode::ControllerNotAllowed
            | ErrorCode::InsufficientScopes
            | ErrorCode::ImageNotAllowed
            | ErrorCode::SandboxLimitExceeded => 403,
            ErrorCode::InvalidSignature
            | ErrorCode::JobExpired
            | ErrorCode::JobTooOld
            | ErrorCode::TimestampInFuture
            | ErrorCode::TtlTooLong
            | ErrorCode::Unauthorized => 401,
            ErrorCode::DuplicateJob | ErrorCode::JobAlreadyFinished => 409,
            ErrorCode::QueueFull => 429,
            ErrorCode::JobNotFound | ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::AuditUnavailable | ErrorCode::Internal => 500,
            ErrorCode::ShuttingDown => 503,
            // 507 Insufficient Storage (RFC 4918): the agent's disk is full; retry later.
            ErrorCode::StorageFull => 507,
        }
    }

    pub fn parse(text: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == text)
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `{"error": "<sentence>", "code": "<CODE>", "details": "<optional>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_through_text_and_serde() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
