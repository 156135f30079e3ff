//! Admission: protocol-v1 §1's check table, in the table's order, for a submission whose
//! body has been read and parsed. [`admit`] returns the admitted job (new, or the same job
//! sent again) or a typed refusal; the HTTP adapter (`api/submit.rs`) only turns that into
//! an answer and audits refusals.
//!
//! | step | check                           | refusal                         |
//! |------|---------------------------------|---------------------------------|
//! | 1    | signature algorithm             | 400 `UNSUPPORTED_ALGORITHM`     |
//! | 2    | controller allowlist            | 403 `CONTROLLER_NOT_ALLOWED`    |
//! | 3    | signature (raw, then Go form)   | 401 `INVALID_SIGNATURE`         |
//! | 4    | clock window and TTL            | 401 (`checks::check_clock`)     |
//! | 5    | job-id replay                   | 409 `DUPLICATE_JOB`, or 202     |
//! | 6    | scopes, image, caps             | 403/400, stored as `rejected`   |
//! | 6b   | the sandbox's own spec checks   | 400 `INVALID_PAYLOAD`           |
//! | 7    | queue slot (agent, controller)  | 429 `QUEUE_FULL` + `Retry-After`|
//!
//! Then acceptance: the audit row first (else 500 `AUDIT_UNAVAILABLE`), the job stored
//! `pending`, and the queue. A new check is one more step in [`admit`].

mod attempt;
mod checks;

use std::sync::Arc;

use bytes::Bytes;
use quickcmd_protocol::{
    parse_submit, verify_submit, ErrorCode, JobPayload, JobStatus, PayloadError, SignatureRefusal,
    SignedForm, SubmitRequest, ALGORITHM,
};

pub(crate) use self::attempt::{with_requested_by, Attempt};
use crate::clock;
use crate::config::{AgentConfig, ControllerGrant};
use crate::queue::{Capacity, QueueFull, QueuedJob, Reservation};
use crate::runner;
use crate::state::Agent;
use crate::store::{InsertOutcome, JobRecord, NewJob, StoreError};

/// Seconds a client is told to wait when the queue is full.
const QUEUE_FULL_RETRY_AFTER: u64 = 5;

/// A failed check: the code, a sentence for the client, and what else the answer carries.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Refusal {
    pub code: ErrorCode,
    pub message: String,
    pub details: Option<String>,
    pub retry_after_seconds: Option<u64>,
}

impl Refusal {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Refusal {
        Refusal {
            code,
            message: message.into(),
            details: None,
            retry_after_seconds: None,
        }
    }

    fn with_details(mut self, details: impl Into<String>) -> Refusal {
        self.details = Some(details.into());
        self
    }
}

/// Why a submission was not admitted.
#[derive(Debug)]
pub(crate) enum Refused {
    /// A row of the check table failed. Audited as a refused submission and counted.
    Check(Refusal),
    /// The job store could not be read or written. Audited and counted like a check.
    Store(StoreError),
    /// The acceptance row could not be written to the audit log, so nothing was accepted.
    /// Already logged; not audited again (the log is what failed) and not counted.
    /// `disk_full`: the write failed for want of space (answered 507 `STORAGE_FULL`).
    AuditUnavailable { disk_full: bool },
    /// The body is not a well-formed submit request (step 0). Audited and counted.
    Body(PayloadError),
    /// The agent failed in a way no client can fix (a body check did not finish).
    /// Already logged; audited and counted like a check.
    Internal,
}

impl From<Refusal> for Refused {
    fn from(refusal: Refusal) -> Refused {
        Refused::Check(refusal)
    }
}

impl From<StoreError> for Refused {
    fn from(error: StoreError) -> Refused {
        Refused::Store(error)
    }
}

/// An admitted job: the id and the status the client is told (202).
#[derive(Debug)]
pub(crate) struct Admitted {
    pub job_id: String,
    pub status: JobStatus,
}

/// A submission whose body parsed and whose signature verified, with the bytes that
/// signature covers. Owned, so it can come back from the blocking pool.
struct Signed {
    payload: JobPayload,
    signature: String,
    /// The signed bytes as text (the raw payload or its Go form).
    text: String,
    /// Whether the signature matched the Go form rather than the raw bytes.
    canonical: bool,
}

impl Signed {
    fn new(request: SubmitRequest<'_>, form: SignedForm) -> Signed {
        let text = String::from_utf8_lossy(form.signed_bytes(&request)).into_owned();
        Signed {
            text,
            canonical: form != SignedForm::Raw,
            signature: request.signature,
            payload: request.payload,
        }
    }

    fn payload(&self) -> &JobPayload {
        &self.payload
    }

    fn form_name(&self) -> &'static str {
        if self.canonical {
            "go_canonical"
        } else {
            "raw"
        }
    }

    /// The row the store keeps for this job; the only place a `NewJob` is built.
    fn new_job(
        &self,
        status: JobStatus,
        sandbox_json: Option<String>,
        refusal: Option<&Refusal>,
    ) -> NewJob {
        let payload = self.payload();
        NewJob {
            job_id: payload.job_id.clone(),
            controller_id: payload.controller_id.clone(),
            command: payload.command.clone(),
            prompt: payload.prompt.clone(),
            payload_json: self.text.clone(),
            signature: self.signature.to_ascii_lowercase(),
            canonical: self.canonical,
            sandbox_json,
            ttl: payload.ttl,
            timestamp: payload.timestamp,
            created_at_ms: clock::now_ms(),
            status,
            reason: refusal.map(|r| r.code.as_str().to_ascii_lowercase()),
            error: refusal.map(|r| r.message.clone()),
            requested_by: payload.requested_by.clone(),
        }
    }

    /// Whether a stored job is this very submission again (same signed bytes and
    /// signature), not merely the same id.
    fn is_same_as(&self, existing: &JobRecord) -> bool {
        existing.payload_json == self.text
            && existing.signature.eq_ignore_ascii_case(&self.signature)
    }
}

/// Runs the check table in order on a body that was read and, when every check passes,
/// accepts the job. Returns what is known of the attempt (for the refusal's audit row)
/// with the outcome.
pub(crate) async fn admit(
    agent: &Arc<Agent>,
    remote: String,
    body: Bytes,
) -> (Attempt, Result<Admitted, Refused>) {
    let config = agent.config();
    let (attempt, signed) = match verify_off_runtime(agent, &config, remote, body).await {
        (attempt, Ok(signed)) => (attempt, signed),
        (attempt, Err(refused)) => return (attempt, Err(refused)),
    };
    let outcome = admit_signed(agent, &config, &attempt, signed).await;
    (attempt, outcome)
}

/// Steps 0–3 (parse, algorithm, controller, signature) off the async workers.
async fn verify_off_runtime(
    agent: &Agent,
    config: &Arc<AgentConfig>,
    remote: String,
    body: Bytes,
) -> (Attempt, Result<Signed, Refused>) {
    let config = config.clone();
    let fallback = remote.clone();
    off_runtime(agent, body.len(), move || {
        verify_body(&config, remote, &body)
    })
    .await
    .unwrap_or_else(|| (Attempt::unread(fallback), Err(Refused::Internal)))
}

/// What a body that will not be admitted says about itself (for its audit row), read off
/// the async workers.
pub(crate) async fn describe(agent: &Agent, remote: String, body: Bytes) -> Attempt {
    let fallback = remote.clone();
    off_runtime(agent, body.len(), move || {
        Attempt::from_unparsed(remote, &body)
    })
    .await
    .unwrap_or_else(|| Attempt::unread(fallback))
}

/// Bodies up to this size are checked on the async worker itself: parse and verify take at
/// most ~50 µs on them (`cargo run --release --example parse_flood -p quickcmd-protocol`:
/// 2 KiB of keys or of numbers, 0.05 ms; 8 KiB would be 0.2–0.4 ms, too long to hold a
/// worker), about the cost of the hop to the blocking pool and back, and a flood of small
/// garbage then cannot queue signed bodies (typically under 1 KiB) behind it for a permit.
const INLINE_BODY_BYTES: usize = 2 * 1024;

/// Runs CPU work on untrusted bytes of `len` bytes: inline when small, else on the blocking
/// pool, at most [`Agent::body_checks`] at once — a large body never holds an async worker,
/// and a flood of large bodies cannot take every core. `None` if the work panicked
/// (logged).
async fn off_runtime<T: Send + 'static>(
    agent: &Agent,
    len: usize,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if len <= INLINE_BODY_BYTES {
        return match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
            Ok(value) => Some(value),
            Err(_) => {
                tracing::error!("checking a submit body failed");
                None
            }
        };
    }
    // The semaphore is never closed, so this is always a permit.
    let permit = agent.body_checks.clone().acquire_owned().await.ok()?;
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    });
    match task.await {
        Ok(value) => Some(value),
        Err(join_error) => {
            tracing::error!(%join_error, "checking a submit body failed");
            None
        }
    }
}

/// Steps 0–3 as plain CPU work: the body's shape, then algorithm, controller, signature.
fn verify_body(
    config: &AgentConfig,
    remote: String,
    body: &[u8],
) -> (Attempt, Result<Signed, Refused>) {
    let request = match parse_submit(body) {
        Ok(request) => request,
        Err(error) => {
            return (
                Attempt::from_unparsed(remote, body),
                Err(Refused::Body(error)),
            )
        }
    };
    let mut attempt = Attempt::from_request(remote, &request);
    let verified = check_algorithm(&request)
        .and_then(|()| allowed_controller(config, &request.payload))
        .and_then(|grant| check_signature(grant, &request));
    match verified {
        Ok(form) => {
            attempt.verified = true;
            (attempt, Ok(Signed::new(request, form)))
        }
        Err(refusal) => (attempt, Err(refusal.into())),
    }
}

/// Steps 4–7 and acceptance, for a body whose signature verified.
async fn admit_signed(
    agent: &Arc<Agent>,
    config: &AgentConfig,
    attempt: &Attempt,
    signed: Signed,
) -> Result<Admitted, Refused> {
    let payload = signed.payload();
    checks::check_clock(payload, clock::now_unix(), config)?;
    let Some(grant) = config.controller(&payload.controller_id) else {
        // The config was read once for this request, so this cannot happen; refuse anyway.
        return Err(Refused::Internal);
    };

    if let Some(existing) = agent.store.get_job(&payload.job_id).await? {
        return resubmission(agent, attempt, &signed, existing).await;
    }
    let sandbox = match checks::resolve_sandbox(payload, grant, config) {
        Ok(sandbox) => sandbox,
        Err(refusal) => {
            // A malformed request is refused; a well-formed one over its rights or the
            // caps is kept as `rejected`, so its id cannot be reused.
            if refusal.code != ErrorCode::InvalidPayload {
                store_rejected(agent, &signed, &refusal).await;
            }
            return Err(refusal.into());
        }
    };
    let job = QueuedJob {
        job_id: payload.job_id.clone(),
        controller_id: payload.controller_id.clone(),
        command: payload.command.clone(),
        ttl: payload.ttl,
        sandbox,
        stdin: payload.stdin.clone(),
        requested_by: payload.requested_by.clone(),
    };
    checks::check_spec(config, &job)?;
    let reservation = reserve_slot(agent, config, &payload.controller_id)?;
    accept(agent, attempt, &signed, job, reservation).await
}

/// Step 1: the one algorithm protocol-v1 knows.
fn check_algorithm(request: &SubmitRequest<'_>) -> Result<(), Refusal> {
    if request.algorithm == ALGORITHM {
        return Ok(());
    }
    Err(Refusal::new(
        ErrorCode::UnsupportedAlgorithm,
        format!(
            "signature algorithm `{}` is not supported; use {ALGORITHM}",
            request.algorithm
        ),
    ))
}

/// Step 2: the controller is configured on this agent.
fn allowed_controller<'c>(
    config: &'c AgentConfig,
    payload: &JobPayload,
) -> Result<&'c ControllerGrant, Refusal> {
    config.controller(&payload.controller_id).ok_or_else(|| {
        Refusal::new(
            ErrorCode::ControllerNotAllowed,
            format!(
                "controller `{}` is not allowed on this agent",
                payload.controller_id
            ),
        )
    })
}

/// Step 3: the signature, over the raw payload bytes or their Go form.
fn check_signature(
    grant: &ControllerGrant,
    request: &SubmitRequest<'_>,
) -> Result<SignedForm, Refusal> {
    verify_submit(grant.secret.as_bytes(), request).map_err(|refusal| {
        let error = Refusal::new(
            ErrorCode::InvalidSignature,
            "signature does not verify for this controller's secret",
        );
        match refusal {
            SignatureRefusal::Mismatch => error,
            SignatureRefusal::UnsignedExtension { field } => error.with_details(format!(
                "the payload carries `{field}`, which only the raw form signs; sign the payload bytes exactly as sent",
            )),
        }
    })
}

/// Step 7: a run slot, promised until the job is queued, within the agent's capacity and
/// the controller's quota.
fn reserve_slot(
    agent: &Agent,
    config: &AgentConfig,
    controller_id: &str,
) -> Result<Reservation, Refusal> {
    let capacity = Capacity {
        agent: config
            .max_concurrent_jobs
            .saturating_add(config.max_queued_jobs),
        controller: config
            .max_running_jobs_per_controller
            .saturating_add(config.max_queued_jobs_per_controller),
    };
    let message = match agent.jobs.reserve(controller_id, capacity) {
        Ok(reservation) => return Ok(reservation),
        Err(QueueFull::Agent) => format!(
            "the agent is running {} jobs and has {} waiting; retry later",
            config.max_concurrent_jobs, config.max_queued_jobs
        ),
        Err(QueueFull::Controller) => format!(
            "controller `{controller_id}` holds its quota of {} running \
             (max_running_jobs_per_controller) and {} waiting \
             (max_queued_jobs_per_controller) jobs; retry later",
            config.max_running_jobs_per_controller, config.max_queued_jobs_per_controller
        ),
    };
    Err(Refusal {
        retry_after_seconds: Some(QUEUE_FULL_RETRY_AFTER),
        ..Refusal::new(ErrorCode::QueueFull, message)
    })
}

/// Acceptance: the audit row, then the stored `pending` job, then the queue.
async fn accept(
    agent: &Arc<Agent>,
    attempt: &Attempt,
    signed: &Signed,
    job: QueuedJob,
    reservation: Reservation,
) -> Result<Admitted, Refused> {
    let payload = signed.payload();
    let details = serde_json::json!({ "signed_form": signed.form_name(), "sandbox": job.sandbox });
    if let Err(error) = agent
        .audit
        .append(attempt.event(true, None, Some("pending"), details))
        .await
    {
        tracing::error!(job_id = %payload.job_id, %error, "audit write failed; job refused");
        let disk_full = crate::db::is_disk_full(&error);
        return Err(Refused::AuditUnavailable { disk_full });
    }
    let sandbox_json = serde_json::to_string(&job.sandbox).ok();
    let new_job = signed.new_job(JobStatus::Pending, sandbox_json, None);
    match agent.store.insert_job(new_job).await? {
        InsertOutcome::Inserted => {}
        // Another request with this id won the race since we looked.
        InsertOutcome::Exists(existing) => {
            drop(reservation);
            return resubmission(agent, attempt, signed, existing).await;
        }
    }
    agent.metrics.job_accepted();
    runner::enqueue(agent, reservation, job);
    tracing::info!(job_id = %payload.job_id, controller = %payload.controller_id, remote = %attempt.remote, "job accepted");
    Ok(Admitted {
        job_id: payload.job_id.clone(),
        status: JobStatus::Pending,
    })
}

/// Step 5, when the id is known: the same signed bytes and signature are a retry (202 with
/// the current status, `rejected` included); anything else is 409.
async fn resubmission(
    agent: &Agent,
    attempt: &Attempt,
    signed: &Signed,
    existing: JobRecord,
) -> Result<Admitted, Refused> {
    if !signed.is_same_as(&existing) {
        return Err(Refusal::new(
            ErrorCode::DuplicateJob,
            format!(
                "job id `{}` was already used with a different payload",
                existing.job_id
            ),
        )
        .into());
    }
    let status = existing.status;
    let details = serde_json::json!({ "resubmission": true });
    if let Err(error) = agent
        .audit
        .append(attempt.event(true, None, Some(status.as_str()), details))
        .await
    {
        tracing::error!(%error, "could not audit a resubmission");
    }
    Ok(Admitted {
        job_id: existing.job_id,
        status,
    })
}

/// Step 6 refused a well-formed job: keep it as `rejected` (best effort; logged).
async fn store_rejected(agent: &Agent, signed: &Signed, refusal: &Refusal) {
    let payload = signed.payload();
    let sandbox_json = payload
        .sandbox
        .as_ref()
        .and_then(|s| serde_json::to_string(s).ok());
    let job = signed.new_job(JobStatus::Rejected, sandbox_json, Some(refusal));
    match agent.store.insert_job(job).await {
        Ok(_) => agent.metrics.job_rejected(),
        Err(error) => {
            tracing::error!(job_id = %payload.job_id, %error, "could not store a rejected job")
        }
    }
}
