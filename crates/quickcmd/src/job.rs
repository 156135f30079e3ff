//! What a controller asks an agent to run, and signing it: a fresh sortable job id per
//! target, TTL and timestamp from the clock, and the exact submit body whose payload bytes
//! are the bytes that were signed.

use std::time::Duration;

use quickcmd_protocol::{sign, JobPayload, SandboxRequest, ALGORITHM};
use sha2::{Digest, Sha256};

use crate::secret::Secret;

/// Default time a job may wait on the agent before it must have started.
pub const DEFAULT_TTL: Duration = Duration::from_secs(300);

/// A job as the operator asked for it, before it is bound to an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// The shell command (non-empty).
    pub command: String,
    /// Why it runs; defaults to the command.
    pub prompt: Option<String>,
    pub required_scopes: Vec<String>,
    /// The `sandbox` extension; `None` leaves everything to the agent's defaults.
    pub sandbox: Option<SandboxRequest>,
    /// How long the job may wait on the agent before it must start.
    pub ttl: Duration,
    /// Bytes for the command's standard input (v1.1 `stdin`, at most
    /// [`quickcmd_protocol::MAX_STDIN_BYTES`]); `None`: end of file at once.
    pub stdin: Option<Vec<u8>>,
    /// Who the job is for (v1.1 `requested_by`), e.g. `ann@laptop`.
    pub requested_by: Option<String>,
}

impl JobSpec {
    /// A spec for `command` with the agent's defaults.
    pub fn new(command: impl Into<String>) -> JobSpec {
        JobSpec {
            command: command.into(),
            prompt: None,
            required_scopes: Vec::new(),
            sandbox: None,
            ttl: DEFAULT_TTL,
            stdin: None,
            requested_by: None,
        }
    }

    /// The prompt sent: the given one, or the command.
    pub fn effective_prompt(&self) -> &str {
        self.prompt.as_deref().unwrap_or(&self.command)
    }
}

/// Why a job could not be signed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JobError {
    #[error("the command is empty")]
    EmptyCommand,
    #[error("job id `{0}` is not 1-128 characters of A-Z a-z 0-9 . _ : -")]
    BadJobId(String),
    #[error("the job cannot be encoded: {0}")]
    Encode(String),
    #[error(
        "standard input is {0} bytes; an agent takes at most {max} (512 KiB): copy large \
         files with a mount, or pass -n to send none",
        max = quickcmd_protocol::MAX_STDIN_BYTES
    )]
    StdinTooLarge(usize),
    #[error("requested_by `{0}` is not 1-128 printable characters")]
    BadRequestedBy(String),
}

/// A job signed for one agent: the submit body and what the history needs to prove it.
#[derive(Debug, Clone, PartialEq)]
pub struct SignedJob {
    pub job_id: String,
    pub payload: JobPayload,
    /// The payload bytes that were signed, exactly as they stand in `body`.
    pub payload_json: String,
    /// Lowercase hex HMAC-SHA256 of `payload_json`.
    pub signature: String,
    /// The whole `POST /api/v1/jobs` body. Retries resend these same bytes.
    pub body: String,
}

impl SignedJob {
    /// SHA-256 of the signed payload bytes, hex.
    pub fn payload_sha256(&self) -> String {
        hex::encode(Sha256::digest(self.payload_json.as_bytes()))
    }
}

/// A new job id: a UUIDv7, so ids sort by creation time.
pub fn new_job_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The current unix time in seconds.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Signs `spec` as `controller_id` under `secret` with id `job_id`, at `now` (unix s).
pub fn sign_job(
    spec: &JobSpec,
    job_id: &str,
    controller_id: &str,
    secret: &Secret,
    now: i64,
) -> Result<SignedJob, JobError> {
    if spec.command.trim().is_empty() {
        return Err(JobError::EmptyCommand);
    }
    if !quickcmd_protocol::is_valid_job_id(job_id) {
        return Err(JobError::BadJobId(job_id.to_string()));
    }
    if let Some(stdin) = &spec.stdin {
        if stdin.len() > quickcmd_protocol::MAX_STDIN_BYTES {
            return Err(JobError::StdinTooLarge(stdin.len()));
        }
    }
    if let Some(requested_by) = &spec.requested_by {
        if !quickcmd_protocol::is_valid_requested_by(requested_by) {
            return Err(JobError::BadRequestedBy(requested_by.clone()));
        }
    }
    let ttl_seconds = i64::try_from(spec.ttl.as_secs().max(1)).unwrap_or(i64::MAX / 2);
    let payload = JobPayload {
        job_id: job_id.to_string(),
        prompt: spec.effective_prompt().to_string(),
        command: spec.command.clone(),
        candidate_metadata: None,
        plugin_metadata: None,
        required_scopes: (!spec.required_scopes.is_empty()).then(|| spec.required_scopes.clone()),
        snapshot_metadata: String::new(),
        ttl: now.saturating_add(ttl_seconds),
        timestamp: now,
        controller_id: controller_id.to_string(),
        sandbox: spec
            .sandbox
            .clone()
            .filter(|s| *s != SandboxRequest::default()),
        stdin: spec.stdin.clone(),
        requested_by: spec.requested_by.clone(),
    };
    let payload_json = payload
        .to_signed_json()
        .map_err(|e| JobError::Encode(e.to_string()))?;
    let signature = sign(secret.as_bytes(), payload_json.as_bytes());
    // String concatenation, not re-serialization: the payload bytes must stay the signed ones.
    let body = format!(
        "{{\"payload\":{payload_json},\"signature\":{{\"signature\":\"{signature}\",\"algorithm\":\"{ALGORITHM}\"}}}}"
    );
    Ok(SignedJob {
        job_id: job_id.to_string(),
        payload,
        payload_json,
        signature,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcmd_protocol::{parse_submit, verify_submit, SignedForm};

    fn secret() -> Secret {
        Secret::from_text("0123456789abcdef0123456789abcdef").expect("secret")
    }

    #[test]
    fn signed_body_verifies_as_raw_bytes() {
        let mut spec = JobSpec::new("echo 'a<b>' && printf '%s\\n' \"x\"");
        spec.required_scopes = vec!["sandbox:network".into()];
        spec.sandbox = Some(SandboxRequest {
            image: Some("quickcmd-sandbox:latest".into()),
            timeout_seconds: Some(5),
            network: Some(true),
            env: Some([("K".to_string(), "v=1".to_string())].into()),
            ..SandboxRequest::default()
        });
        let job = sign_job(&spec, &new_job_id(), "ctl-1", &secret(), 1_700_000_000).expect("signs");
        let request = parse_submit(job.body.as_bytes()).expect("agent parses our body");
        assert_eq!(request.payload_raw, job.payload_json.as_bytes());
        assert_eq!(request.payload, job.payload);
        assert_eq!(
            verify_submit(secret().as_bytes(), &request),
            Ok(SignedForm::Raw)
        );
        let wrong = Secret::from_text("other").expect("secret");
        assert!(verify_submit(wrong.as_bytes(), &request).is_err());
        assert_eq!(job.payload.ttl - job.payload.timestamp, 300);
        assert_eq!(job.payload.prompt, spec.command);
    }

    #[test]
    fn without_sandbox_the_body_is_the_go_form() {
        let job = sign_job(&JobSpec::new("true"), "j-1", "c", &secret(), 10).expect("signs");
        assert_eq!(
            job.payload_json,
            r#"{"job_id":"j-1","prompt":"true","command":"true","candidate_metadata":null,"plugin_metadata":null,"required_scopes":null,"snapshot_metadata":"","ttl":310,"timestamp":10,"controller_id":"c"}"#
        );
        assert_eq!(
            job.payload_json,
            job.payload.go_canonical_json().expect("go form")
        );
    }

    #[test]
    fn refuses_empty_commands_and_bad_ids() {
        assert_eq!(
            sign_job(&JobSpec::new("  "), "j", "c", &secret(), 1),
            Err(JobError::EmptyCommand)
        );
        assert!(matches!(
            sign_job(&JobSpec::new("true"), "a b", "c", &secret(), 1),
            Err(JobError::BadJobId(_))
        ));
    }

    #[test]
    fn job_ids_are_unique_valid_and_sortable() {
        let ids: Vec<String> = (0..200).map(|_| new_job_id()).collect();
        let mut sorted = ids.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), ids.len());
        assert!(ids.iter().all(|id| quickcmd_protocol::is_valid_job_id(id)));
        let (first, last) = (&ids[0], &ids[ids.len() - 1]);
        assert!(first < last, "{first} then {last}");
    }
}
