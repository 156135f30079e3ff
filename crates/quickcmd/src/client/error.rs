//! `ClientError`: everything that can go wrong between us and one agent, classified so a
//! summary row can say why in a few words (connection refused, TLS error, 401 with its
//! code, timeout) and the retry loop can tell transient failures from final ones.

use std::time::Duration;

use quickcmd_protocol::{ErrorBody, ErrorCode};

use crate::job::JobError;

/// A failed exchange with an agent. Messages do not name the agent: callers print it.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("connection refused")]
    ConnectionRefused,
    #[error("TLS error: {message}")]
    Tls { message: String },
    #[error("timed out {during}")]
    Timeout { during: String },
    #[error("network error: {message}")]
    Network { message: String },
    /// The agent answered with an error status.
    #[error("{}", api_message(*status, code, message, details.as_deref()))]
    Api {
        status: u16,
        /// The protocol `code`, or empty when the body had none.
        code: String,
        message: String,
        details: Option<String>,
        retry_after: Option<Duration>,
    },
    /// The agent answered something protocol v1 does not allow.
    #[error("unexpected answer: {message}")]
    Protocol { message: String },
    #[error("log stream of job {job_id} lost after frame {last_seq}: {message}")]
    StreamLost {
        job_id: String,
        last_seq: u64,
        message: String,
    },
    #[error("gave up waiting for job {job_id} after {waited:?}")]
    WaitTimeout { job_id: String, waited: Duration },
    #[error("job id `{0}` is not 1-128 characters of A-Z a-z 0-9 . _ : -")]
    InvalidJobId(String),
    #[error(transparent)]
    Job(#[from] JobError),
    #[error("client setup failed: {0}")]
    Setup(String),
}

fn api_message(status: u16, code: &str, message: &str, details: Option<&str>) -> String {
    let mut text = if code.is_empty() {
        format!("HTTP {status}")
    } else {
        format!("{status} {code}")
    };
    if !message.is_empty() {
        text.push_str(": ");
        text.push_str(message);
    }
    if let Some(details) = details.filter(|d| !d.is_empty()) {
        text.push_str(&format!(" ({details})"));
    }
    match ErrorCode::parse(code) {
        Some(ErrorCode::InvalidSignature) => {
            text.push_str(" - check the HMAC secret used for this agent")
        }
        Some(ErrorCode::ControllerNotAllowed) => {
            text.push_str(" - the agent's allowed_controllers lacks our controller_id")
        }
        Some(ErrorCode::JobTooOld | ErrorCode::TimestampInFuture) => {
            text.push_str(" - check the clocks of controller and agent")
        }
        Some(ErrorCode::Unauthorized) => {
            text.push_str(" - check the HMAC secret and controller_id for this agent")
        }
        _ => {}
    }
    text
}

impl ClientError {
    /// Builds the error for a non-success answer from its status, headers and body.
    pub(crate) fn from_response(
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(error) => ClientError::Api {
                status,
                code: error.code,
                message: error.error,
                details: error.details,
                retry_after,
            },
            Err(_) => ClientError::Api {
                status,
                code: String::new(),
                message: String::from_utf8_lossy(&body[..body.len().min(200)])
                    .trim()
                    .to_string(),
                details: None,
                retry_after,
            },
        }
    }

    /// Whether sending the same request again may succeed: network trouble, 5xx, 429.
    /// TLS failures are not transient: a wrong certificate stays wrong.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::ConnectionRefused
            | ClientError::Timeout { .. }
            | ClientError::Network { .. } => true,
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// Whether the agent could not be reached at all (as opposed to answering "no").
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::ConnectionRefused
                | ClientError::Tls { .. }
                | ClientError::Timeout { .. }
                | ClientError::Network { .. }
        )
    }

    /// Adds what to do to a TLS error about an agent certificate that no trusted
    /// authority signed: pin it, or (when one is pinned) check it is the right agent.
    pub(crate) fn with_trust_hint(self, trust: &crate::tls::Trust) -> ClientError {
        match self {
            ClientError::Tls { message } if message.contains("UnknownIssuer") => {
                let hint = match trust {
                    crate::tls::Trust::Pinned { source, .. } => format!(
                        "the agent's certificate is not among those pinned in {}: is this \
                         the right agent, or was its certificate replaced?",
                        source.display()
                    ),
                    _ => "no trusted authority signed the agent's certificate: pin it with \
                          --ca-cert FILE (or ca_cert: in controller.yaml), e.g. the \
                          agent-cert.pem that `quickcmd agent gen-cert` wrote"
                        .to_string(),
                };
                ClientError::Tls {
                    message: format!("{message} - {hint}"),
                }
            }
            other => other,
        }
    }

    /// The protocol error code of an agent's answer.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => ErrorCode::parse(code),
            _ => None,
        }
    }

    /// The HTTP status of an agent's answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Classifies a reqwest failure; `during` says what we were doing, for timeouts.
    pub(crate) fn from_reqwest(error: &reqwest::Error, during: &str) -> ClientError {
        if let Some(message) = find_tls_error(error) {
            return ClientError::Tls { message };
        }
        if error.is_timeout() {
            return ClientError::Timeout {
                during: during.to_string(),
            };
        }
        match find_io_kind(error) {
            Some(std::io::ErrorKind::ConnectionRefused) => ClientError::ConnectionRefused,
            Some(std::io::ErrorKind::TimedOut) => ClientError::Timeout {
                during: during.to_string(),
            },
            _ => ClientError::Network {
                message: innermost_message(error),
            },
        }
    }

    /// Classifies a WebSocket failure.
    pub(crate) fn from_websocket(
        error: tokio_tungstenite::tungstenite::Error,
        during: &str,
    ) -> ClientError {
        use tokio_tungstenite::tungstenite::error::TlsError as WsTlsError;
        use tokio_tungstenite::tungstenite::Error as WsError;
        match error {
            WsError::Http(response) => {
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(super::retry::parse_retry_after);
                let body = response.body().as_deref().unwrap_or_default();
                ClientError::from_response(response.status().as_u16(), body, retry_after)
            }
            WsError::Tls(WsTlsError::Rustls(error)) => ClientError::Tls {
                message: error.to_string(),
            },
            WsError::Tls(other) => ClientError::Tls {
                message: other.to_string(),
            },
            WsError::Io(io) => {
                if let Some(message) = find_tls_error(&io) {
                    return ClientError::Tls { message };
                }
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => ClientError::ConnectionRefused,
                    std::io::ErrorKind::TimedOut => ClientError::Timeout {
                        during: during.to_string(),
                    },
                    _ => ClientError::Network {
                        message: io.to_string(),
                    },
                }
            }
            other => ClientError::Network {
                message: other.to_string(),
            },
        }
    }
}

/// The errors of `error`'s source chain, including errors boxed inside `io::Error`s (whose
/// `source()` skips the boxed error itself).
fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut next = Some(error);
    while let Some(current) = next {
        out.push(current);
        if out.len() > 32 {
            break;
        }
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => match io.get_ref() {
                Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
                None => current.source(),
            },
            None => current.source(),
        };
    }
    out
}

fn find_tls_error(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    chain(error)
        .into_iter()
        .find_map(|e| e.downcast_ref::<rustls::Error>().map(|e| e.to_string()))
}

fn find_io_kind(error: &(dyn std::error::Error + 'static)) -> Option<std::io::ErrorKind> {
    chain(error)
        .into_iter()
        .find_map(|e| e.downcast_ref::<std::io::Error>().map(|e| e.kind()))
}

fn innermost_message(error: &(dyn std::error::Error + 'static)) -> String {
    chain(error)
        .last()
        .map(|e| e.to_string())
        .unwrap_or_default()
}

/// The parsed error body of an agent answer, when it had one (for callers that inspect
/// codes without matching on `ClientError`).
pub fn error_code_of(error: &ClientError) -> Option<&str> {
    match error {
        ClientError::Api { code, .. } if !code.is_empty() => Some(code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_errors_read_the_protocol_body() {
        let error = ClientError::from_response(
            401,
            br#"{"error":"signature does not verify","code":"INVALID_SIGNATURE"}"#,
            None,
        );
        assert_eq!(error.code(), Some(ErrorCode::InvalidSignature));
        let text = error.to_string();
        assert!(text.starts_with("401 INVALID_SIGNATURE: signature does not verify"));
        assert!(text.contains("HMAC secret"), "{text}");
        assert!(!error.is_retryable());
        assert_eq!(error_code_of(&error), Some("INVALID_SIGNATURE"));
    }

    #[test]
    fn odd_bodies_still_make_an_error() {
        let error = ClientError::from_response(502, b"<html>bad gateway</html>", None);
        assert_eq!(error.to_string(), "HTTP 502: <html>bad gateway</html>");
        assert!(error.is_retryable());
        assert!(ClientError::from_response(429, b"", None).is_retryable());
        assert!(!ClientError::from_response(404, b"", None).is_retryable());
    }

    #[test]
    fn unknown_issuer_says_what_to_do() {
        let error = || ClientError::Tls {
            message: "invalid peer certificate: UnknownIssuer".into(),
        };
        let public = error().with_trust_hint(&crate::tls::Trust::PublicRoots);
        assert!(public.to_string().contains("--ca-cert"), "{public}");
        let pinned = error().with_trust_hint(&crate::tls::Trust::Pinned {
            source: "/etc/q/agent.pem".into(),
            certs: Vec::new(),
        });
        assert!(pinned.to_string().contains("/etc/q/agent.pem"), "{pinned}");
        let other = ClientError::Tls {
            message: "invalid peer certificate: Expired".into(),
        }
        .with_trust_hint(&crate::tls::Trust::PublicRoots);
        assert!(!other.to_string().contains("--ca-cert"), "{other}");
    }

    #[test]
    fn tls_errors_are_found_inside_io_errors() {
        let inner = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, inner);
        assert!(find_tls_error(&io)
            .expect("found")
            .contains("invalid peer certificate"));
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            find_io_kind(&refused),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
    }
}
