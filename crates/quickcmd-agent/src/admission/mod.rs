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
//! | 7    | queue slot                      | 429 `QUEUE_FULL` + `Retry-After`|
//!
//! Then acceptance: the audit row first (else 500 `AUDIT_UNAVAILABLE`), the job stored
//! `pending`, and the queue. A new check is one more step in [`admit`].

mod attempt;
mod checks;

use std::sync::Arc;

use quickcmd_protocol::{
    verify_submit, ErrorCode, JobPayload, JobStatus, SignatureRefusal, SignedForm, SubmitRequest,
    ALGORITHM,
};

pub(crate) use self::attempt::{with_requested_by, Attempt};
use crate::clock;
use crate::config::{AgentConfig, ControllerGrant};
use crate::queue::{QueuedJob, Reservation, ResolvedSandbox};
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
    AuditUnavailable,
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

/// The verified request with the bytes its signature covers.
struct Signed<'a> {
    request: &'a SubmitRequest<'a>,
    /// The signed bytes as text (the raw payload or its Go form).
    text: String,
    /// Whether the signature matched the Go form rather than the raw bytes.
    canonical: bool,
}

impl<'a> Signed<'a> {
    fn new(request: &'a SubmitRequest<'a>, form: &SignedForm) -> Signed<'a> {
        Signed {
            request,
            text: String::from_utf8_lossy(form.signed_bytes(request)).into_owned(),
            canonical: *form != SignedForm::Raw,
        }
    }

    fn payload(&self) -> &JobPayload {
        &self.request.payload
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
            signature: self.request.signature.to_ascii_lowercase(),
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
            && existing
                .signature
                .eq_ignore_ascii_case(&self.request.signature)
    }
}

/// Runs the check table in order and, when every check passes, accepts the job.
pub(crate) async fn admit(
    agent: &Arc<Agent>,
    attempt: &Attempt,
    request: &SubmitRequest<'_>,
) -> Result<Admitted, Refused> {
    let config = agent.config();
    let payload = &request.payload;
    check_algorithm(request)?;
    let grant = allowed_controller(&config, payload)?;
    let form = check_signature(grant, request)?;
    checks::check_clock(payload, clock::now_unix(), &config)?;
    let signed = Signed::new(request, &form);

    if let Some(existing) = agent.store.get_job(&payload.job_id).await? {
        return resubmission(agent, attempt, &signed, existing).await;
    }
    let sandbox = match checks::resolve_sandbox(payload, grant, &config) {
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
    let reservation = reserve_slot(agent, &config)?;
    accept(agent, attempt, &signed, &form, sandbox, reservation).await
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

/// Step 7: a run slot, promised until the job is queued.
fn reserve_slot(agent: &Agent, config: &AgentConfig) -> Result<Reservation, Refusal> {
    agent
        .jobs
        .reserve(config.max_concurrent_jobs + config.max_queued_jobs)
        .ok_or_else(|| Refusal {
            retry_after_seconds: Some(QUEUE_FULL_RETRY_AFTER),
            ..Refusal::new(
                ErrorCode::QueueFull,
                format!(
                    "the agent is running {} jobs and has {} waiting; retry later",
                    config.max_concurrent_jobs, config.max_queued_jobs
                ),
            )
        })
}

/// Acceptance: the audit row, then the stored `pending` job, then the queue.
async fn accept(
    agent: &Arc<Agent>,
    attempt: &Attempt,
    signed: &Signed<'_>,
    form: &SignedForm,
    sandbox: ResolvedSandbox,
    reservation: Reservation,
) -> Result<Admitted, Refused> {
    let payload = signed.payload();
    let signed_form = match form {
        SignedForm::Raw => "raw",
        SignedForm::GoCanonical(_) => "go_canonical",
    };
    let details = serde_json::json!({ "signed_form": signed_form, "sandbox": sandbox });
    if let Err(error) = agent
        .audit
        .append(attempt.event(true, None, Some("pending"), details))
        .await
    {
        tracing::error!(job_id = %payload.job_id, %error, "audit write failed; job refused");
        return Err(Refused::AuditUnavailable);
    }
    let sandbox_json = serde_json::to_string(&sandbox).ok();
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
    runner::enqueue(
        agent,
        reservation,
        QueuedJob {
            job_id: payload.job_id.clone(),
            controller_id: payload.controller_id.clone(),
            command: payload.command.clone(),
            ttl: payload.ttl,
            sandbox,
            stdin: payload.stdin.clone(),
            requested_by: payload.requested_by.clone(),
        },
    );
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
    signed: &Signed<'_>,
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
async fn store_rejected(agent: &Agent, signed: &Signed<'_>, refusal: &Refusal) {
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
