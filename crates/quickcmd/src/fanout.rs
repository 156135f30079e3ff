//! Running one job on many agents: at most `max_concurrency` at a time, no new host after
//! more than `max_errors` failures (like SSM's MaxErrors), every submission recorded in the
//! history before it is sent, each host's output and outcome reported as events. A slow or
//! dead agent only ever holds up its own task.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quickcmd_protocol::{JobResult, JobStatus, StreamName};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::client::{Client, ClientError};
use crate::history::{History, NewRun, RunOutcome};
use crate::job::{new_job_id, JobSpec};

/// `--max-errors`: a count of failed hosts, or a percentage of all targeted hosts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaxErrors {
    Count(u64),
    Percent(u32),
}

impl Default for MaxErrors {
    fn default() -> MaxErrors {
        MaxErrors::Count(0)
    }
}

impl FromStr for MaxErrors {
    type Err = String;

    fn from_str(text: &str) -> Result<MaxErrors, String> {
        let bad = || format!("`{text}` is not a count (N) or a percentage (P%)");
        match text.strip_suffix('%') {
            Some(percent) => {
                let percent: u32 = percent.trim().parse().map_err(|_| bad())?;
                if percent > 100 {
                    return Err(format!("`{text}` is over 100%"));
                }
                Ok(MaxErrors::Percent(percent))
            }
            None => text.trim().parse().map(MaxErrors::Count).map_err(|_| bad()),
        }
    }
}

impl MaxErrors {
    /// How many failed hosts are tolerated among `total` before no new host starts.
    pub fn allowed(self, total: usize) -> u64 {
        match self {
            MaxErrors::Count(count) => count,
            MaxErrors::Percent(percent) => (total as u64).saturating_mul(u64::from(percent)) / 100,
        }
    }
}

/// How a fan-out runs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub max_concurrency: usize,
    pub max_errors: MaxErrors,
    /// Follow the WebSocket stream (else poll for the result).
    pub stream: bool,
    /// Give up on a host (and cancel its job) after this long; `None` waits for the job.
    pub wait_limit: Option<Duration>,
    /// Submit only, do not wait (`quickcmd submit`).
    pub submit_only: bool,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            max_concurrency: 50,
            max_errors: MaxErrors::default(),
            stream: true,
            wait_limit: None,
            submit_only: false,
        }
    }
}

/// What became of one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HostStatus {
    /// The command ran and exited (see `exit_code`).
    Completed,
    /// The job could not run, timed out, was killed or cancelled by the agent.
    Failed,
    /// The agent accepted the signature but refused the job.
    Rejected,
    /// The agent refused the request (401, 403, 409, 4xx).
    Refused,
    /// We could not reach the agent (refused connection, TLS, timeout).
    Unreachable,
    /// Something else went wrong; `reason` says what.
    Error,
    /// Not started because too many hosts had failed (`--max-errors`).
    Skipped,
    /// Cancelled by us (Ctrl-C, or we gave up waiting).
    Cancelled,
    /// Accepted by the agent; not waited for (`quickcmd submit`).
    Submitted,
}

impl HostStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HostStatus::Completed => "completed",
            HostStatus::Failed => "failed",
            HostStatus::Rejected => "rejected",
            HostStatus::Refused => "refused",
            HostStatus::Unreachable => "unreachable",
            HostStatus::Error => "error",
            HostStatus::Skipped => "skipped",
            HostStatus::Cancelled => "cancelled",
            HostStatus::Submitted => "submitted",
        }
    }
}

impl std::fmt::Display for HostStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One host's result: a summary row, or one JSON object of `--output json`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HostReport {
    pub agent: String,
    pub url: String,
    pub job_id: Option<String>,
    pub status: HostStatus,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
    /// Short cause: the agent's `reason`, an error code, "connection refused", …
    pub reason: Option<String>,
    /// Longer explanation, when there is one.
    pub error: Option<String>,
    pub stdout: String,
    pub stderr: String,
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// How often the log stream had to be re-established.
    pub stream_reconnects: u32,
}

impl HostReport {
    fn new(client: &Client, status: HostStatus) -> HostReport {
        HostReport {
            agent: client.name().to_string(),
            url: client.url().to_string(),
            job_id: None,
            status,
            exit_code: None,
            duration_ms: None,
            reason: None,
            error: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            stream_reconnects: 0,
        }
    }

    /// A report for a host whose request failed.
    pub fn from_error(client: &Client, job_id: Option<String>, error: &ClientError) -> HostReport {
        let status = if error.is_unreachable() {
            HostStatus::Unreachable
        } else if matches!(error, ClientError::Api { status, .. } if *status < 500) {
            HostStatus::Refused
        } else {
            HostStatus::Error
        };
        let reason = match error {
            ClientError::Api { status, code, .. } if !code.is_empty() => {
                format!("{status} {code}")
            }
            ClientError::Api { status, .. } => format!("HTTP {status}"),
            ClientError::Tls { .. } => "TLS error".to_string(),
            ClientError::Timeout { .. } => "timeout".to_string(),
            ClientError::ConnectionRefused => "connection refused".to_string(),
            other => other.to_string(),
        };
        HostReport {
            job_id,
            reason: Some(reason),
            error: Some(error.to_string()),
            ..HostReport::new(client, status)
        }
    }

    /// Whether this host counts as a success: the command ran and exited 0 (or, for
    /// `submit`, the agent accepted the job).
    pub fn succeeded(&self) -> bool {
        match self.status {
            HostStatus::Completed => self.exit_code == Some(0),
            HostStatus::Submitted => true,
            _ => false,
        }
    }

    /// The exit code a single-host run ends with: the job's own (a timeout is 124), 1 when
    /// the job has none or it is out of range, 130 when cancelled by us.
    pub fn single_host_exit_code(&self) -> u8 {
        match (self.status, self.exit_code) {
            (HostStatus::Submitted, _) => 0,
            (HostStatus::Cancelled, _) => 130,
            (HostStatus::Completed | HostStatus::Failed, Some(code))
                if (0..=255).contains(&code) =>
            {
                u8::try_from(code).unwrap_or(1)
            }
            _ => 1,
        }
    }
}

/// What a fan-out reports while it runs, in order per host.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    Started {
        host: usize,
    },
    Submitted {
        host: usize,
        job_id: String,
    },
    Output {
        host: usize,
        stream: StreamName,
        data: String,
    },
    /// Something the operator should know that is not the job's output.
    Notice {
        host: usize,
        message: String,
    },
    /// The same, about the run rather than one host.
    Message {
        message: String,
    },
    Finished {
        host: usize,
        report: HostReport,
    },
}

/// Jobs submitted (or being submitted) and not yet ended: what Ctrl-C must cancel.
#[derive(Debug, Clone, Default)]
pub struct StartedJobs {
    inner: Arc<Mutex<Vec<StartedJob>>>,
}

/// One job that Ctrl-C must cancel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedJob {
    pub host: usize,
    pub job_id: String,
}

impl StartedJobs {
    fn add(&self, host: usize, job_id: &str) {
        self.lock().push(StartedJob {
            host,
            job_id: job_id.to_string(),
        });
    }

    fn remove(&self, host: usize) {
        self.lock().retain(|job| job.host != host);
    }

    /// The jobs still open, by host.
    pub fn open(&self) -> Vec<StartedJob> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<StartedJob>> {
        // Nothing panics while holding it; if something did, the list is still valid.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Everything a host task needs.
struct Context {
    spec: JobSpec,
    options: RunOptions,
    history: Option<History>,
    user: String,
    events: mpsc::Sender<RunEvent>,
    started: StartedJobs,
}

impl Context {
    async fn emit(&self, event: RunEvent) {
        // The printer is gone only when we are shutting down; nothing to tell then.
        let _ = self.events.send(event).await;
    }

    async fn note_history_error(&self, host: usize, error: &crate::history::HistoryError) {
        self.emit(RunEvent::Notice {
            host,
            message: format!("could not update the history: {error}"),
        })
        .await;
    }
}

/// Runs `spec` on every client and returns one report per client, in the clients' order.
/// Dropping the future aborts every host task; the jobs in `started` are then the ones to
/// cancel.
pub async fn run_all(
    clients: &[Client],
    spec: &JobSpec,
    options: &RunOptions,
    history: Option<History>,
    events: mpsc::Sender<RunEvent>,
    started: StartedJobs,
) -> Vec<HostReport> {
    let total = clients.len();
    let allowed_failures = options.max_errors.allowed(total);
    let failures = Arc::new(AtomicU64::new(0));
    let reports: Arc<Mutex<Vec<Option<HostReport>>>> = Arc::new(Mutex::new(vec![None; total]));
    let semaphore = Arc::new(Semaphore::new(options.max_concurrency.max(1)));
    let context = Arc::new(Context {
        spec: spec.clone(),
        options: options.clone(),
        history,
        user: crate::history::local_user(),
        events: events.clone(),
        started,
    });
    let mut tasks = JoinSet::new();
    let mut skipped_from = None;
    for (host, client) in clients.iter().enumerate() {
        let Ok(permit) = semaphore.clone().acquire_owned().await else {
            break;
        };
        if failures.load(Ordering::SeqCst) > allowed_failures {
            skipped_from = Some(host);
            break;
        }
        let (client, context, failures, reports) = (
            client.clone(),
            context.clone(),
            failures.clone(),
            reports.clone(),
        );
        tasks.spawn(async move {
            let report = run_host(host, &client, &context).await;
            if !report.succeeded() {
                failures.fetch_add(1, Ordering::SeqCst);
            }
            context
                .emit(RunEvent::Finished {
                    host,
                    report: report.clone(),
                })
                .await;
            reports.lock().unwrap_or_else(|p| p.into_inner())[host] = Some(report);
            // The permit is released only now, after the failure was counted, so the
            // next host sees it.
            drop(permit);
        });
    }
    while let Some(joined) = tasks.join_next().await {
        if let Err(error) = joined {
            tracing::error!("host task ended abnormally: {error}");
        }
    }
    let mut reports = std::mem::take(&mut *reports.lock().unwrap_or_else(|p| p.into_inner()));
    let failed = failures.load(Ordering::SeqCst);
    for (host, slot) in reports.iter_mut().enumerate() {
        if slot.is_some() {
            continue;
        }
        let client = &clients[host];
        let report = if skipped_from.is_some_and(|first| host >= first) {
            HostReport {
                reason: Some("not started".into()),
                error: Some(format!(
                    "{failed} host(s) failed, over --max-errors {}",
                    match options.max_errors {
                        MaxErrors::Count(n) => n.to_string(),
                        MaxErrors::Percent(p) => format!("{p}%"),
                    }
                )),
                ..HostReport::new(client, HostStatus::Skipped)
            }
        } else {
            HostReport {
                reason: Some("internal error".into()),
                error: Some("the host task ended without a report".into()),
                ..HostReport::new(client, HostStatus::Error)
            }
        };
        let _ = events
            .send(RunEvent::Finished {
                host,
                report: report.clone(),
            })
            .await;
        *slot = Some(report);
    }
    reports.into_iter().flatten().collect()
}

/// Output collected from a stream: sizes and hashes of everything, text up to a bound.
struct Capture {
    text: String,
    bytes: u64,
    hasher: Sha256,
    truncated: bool,
}

/// Most output text kept per stream for `--output json` and the report.
const MAX_CAPTURE_BYTES: usize = 8 * 1024 * 1024;

impl Capture {
    fn new() -> Capture {
        Capture {
            text: String::new(),
            bytes: 0,
            hasher: Sha256::new(),
            truncated: false,
        }
    }

    fn add(&mut self, data: &str) {
        self.bytes += data.len() as u64;
        self.hasher.update(data.as_bytes());
        if self.text.len() + data.len() <= MAX_CAPTURE_BYTES {
            self.text.push_str(data);
        } else {
            self.truncated = true;
        }
    }

    fn sha256(&self) -> String {
        hex::encode(self.hasher.clone().finalize())
    }
}

async fn run_host(host: usize, client: &Client, context: &Context) -> HostReport {
    context.emit(RunEvent::Started { host }).await;
    let job_id = new_job_id();
    let signed = match client.sign(&context.spec, &job_id) {
        Ok(signed) => signed,
        Err(error) => return HostReport::from_error(client, None, &error),
    };
    let agent_url = client.url().to_string();
    if let Some(history) = &context.history {
        let run = NewRun {
            job_id: job_id.clone(),
            agent: client.name().to_string(),
            agent_url: agent_url.clone(),
            controller_id: signed.payload.controller_id.clone(),
            user: context.user.clone(),
            command: signed.payload.command.clone(),
            prompt: signed.payload.prompt.clone(),
            payload_sha256: signed.payload_sha256(),
            signature: signed.signature.clone(),
        };
        // Nothing runs unrecorded: no history row, no submission.
        if let Err(error) = history.record_submission(run).await {
            return HostReport {
                reason: Some("history unavailable".into()),
                error: Some(error.to_string()),
                ..HostReport::new(client, HostStatus::Error)
            };
        }
    }
    context.started.add(host, &job_id);
    let report = submit_and_follow(host, client, context, &signed).await;
    context.started.remove(host);
    if let Some(history) = &context.history {
        let outcome = outcome_of(&report.0, report.1.as_ref());
        if let Err(error) = history.record_outcome(&job_id, &agent_url, outcome).await {
            context.note_history_error(host, &error).await;
        }
    }
    report.0
}

/// Submits and waits; returns the report and, when the job ended, its result.
async fn submit_and_follow(
    host: usize,
    client: &Client,
    context: &Context,
    signed: &crate::job::SignedJob,
) -> (HostReport, Option<OutputRecord>) {
    let job_id = signed.job_id.clone();
    if let Err(error) = client.submit(signed).await {
        return (HostReport::from_error(client, Some(job_id), &error), None);
    }
    context
        .emit(RunEvent::Submitted {
            host,
            job_id: job_id.clone(),
        })
        .await;
    if context.options.submit_only {
        let report = HostReport {
            job_id: Some(job_id),
            ..HostReport::new(client, HostStatus::Submitted)
        };
        return (report, None);
    }
    let following = follow(host, client, context, &job_id);
    match context.options.wait_limit {
        None => following.await,
        Some(limit) => match tokio::time::timeout(limit, following).await {
            Ok(done) => done,
            Err(_) => {
                let cancelled = client.cancel(&job_id).await;
                let error = match cancelled {
                    Ok(()) => format!("gave up waiting after {limit:?}; the job was cancelled"),
                    Err(e) => format!("gave up waiting after {limit:?}; cancelling failed: {e}"),
                };
                let report = HostReport {
                    job_id: Some(job_id),
                    reason: Some("wait limit".into()),
                    error: Some(error),
                    ..HostReport::new(client, HostStatus::Cancelled)
                };
                (report, None)
            }
        },
    }
}

/// Sizes and hashes of a job's output, for the history.
struct OutputRecord {
    result: Option<JobResult>,
    stdout_bytes: u64,
    stderr_bytes: u64,
    stdout_sha256: String,
    stderr_sha256: String,
}

async fn follow(
    host: usize,
    client: &Client,
    context: &Context,
    job_id: &str,
) -> (HostReport, Option<OutputRecord>) {
    let mut stdout = Capture::new();
    let mut stderr = Capture::new();
    let mut final_frame = None;
    let mut stream_complete = false;
    let mut reconnects = 0;
    if context.options.stream {
        let mut stream = client.stream(job_id, 0);
        loop {
            match stream.next().await {
                Ok(Some(frame)) if frame.is_final => {
                    final_frame = Some(frame);
                    stream_complete = true;
                    break;
                }
                Ok(Some(frame)) => {
                    match frame.stream {
                        StreamName::Stdout => stdout.add(&frame.data),
                        StreamName::Stderr => stderr.add(&frame.data),
                    }
                    context
                        .emit(RunEvent::Output {
                            host,
                            stream: frame.stream,
                            data: frame.data,
                        })
                        .await;
                }
                Ok(None) => {
                    stream_complete = true;
                    break;
                }
                Err(error) => {
                    context
                        .emit(RunEvent::Notice {
                            host,
                            message: format!(
                                "{error}; waiting for the result (live output may be incomplete)"
                            ),
                        })
                        .await;
                    break;
                }
            }
        }
        reconnects = stream.reconnects();
    }

    // After the final frame the result is there at once; otherwise poll for it.
    let limit = final_frame.as_ref().map(|_| Duration::from_secs(30));
    let result = match client.wait(job_id, limit).await {
        Ok(result) => Some(result),
        Err(error) => match &final_frame {
            Some(_) => {
                context
                    .emit(RunEvent::Notice {
                        host,
                        message: format!("could not read the job's result: {error}"),
                    })
                    .await;
                None
            }
            None => {
                let mut report = HostReport::from_error(client, Some(job_id.to_string()), &error);
                report.stream_reconnects = reconnects;
                return (report, None);
            }
        },
    };

    if !stream_complete {
        // Polled, or the stream was lost: the output comes from the stored result. What was
        // already printed live is not printed again.
        if let Some(result) = &result {
            for (stream, seen, data) in [
                (StreamName::Stdout, &stdout.text, &result.stdout),
                (StreamName::Stderr, &stderr.text, &result.stderr),
            ] {
                let rest = data.strip_prefix(seen.as_str()).unwrap_or_default();
                if !rest.is_empty() {
                    context
                        .emit(RunEvent::Output {
                            host,
                            stream,
                            data: rest.to_string(),
                        })
                        .await;
                }
            }
            stdout = Capture::new();
            stderr = Capture::new();
            stdout.add(&result.stdout);
            stderr.add(&result.stderr);
        }
    }

    let mut report = HostReport::new(client, HostStatus::Error);
    report.job_id = Some(job_id.to_string());
    report.stream_reconnects = reconnects;
    match &result {
        Some(result) => {
            report.status = match result.status {
                JobStatus::Completed => HostStatus::Completed,
                JobStatus::Failed => HostStatus::Failed,
                JobStatus::Rejected => HostStatus::Rejected,
                JobStatus::Pending | JobStatus::Running => HostStatus::Error,
            };
            report.exit_code = (result.exit_code >= 0).then_some(result.exit_code);
            report.duration_ms = Some(result.duration_ms);
            report.reason = result.reason.clone();
            report.error = result.error.clone();
            report.stdout_truncated = result.stdout_truncated || stdout.truncated;
            report.stderr_truncated = result.stderr_truncated || stderr.truncated;
        }
        None => {
            if let Some(frame) = &final_frame {
                report.status = match frame.status {
                    Some(JobStatus::Completed) => HostStatus::Completed,
                    Some(JobStatus::Failed) => HostStatus::Failed,
                    Some(JobStatus::Rejected) => HostStatus::Rejected,
                    _ => HostStatus::Error,
                };
                report.exit_code = frame.exit_code.filter(|code| *code >= 0);
                report.reason = Some("result unavailable".into());
            }
        }
    }
    let pick = |agent: Option<&String>, ours: String| match agent {
        Some(hash) if !hash.is_empty() => hash.clone(),
        _ => ours,
    };
    let record = OutputRecord {
        stdout_bytes: result
            .as_ref()
            .map(|r| r.stdout_bytes)
            .filter(|b| *b > 0)
            .unwrap_or(stdout.bytes),
        stderr_bytes: result
            .as_ref()
            .map(|r| r.stderr_bytes)
            .filter(|b| *b > 0)
            .unwrap_or(stderr.bytes),
        stdout_sha256: pick(result.as_ref().map(|r| &r.stdout_sha256), stdout.sha256()),
        stderr_sha256: pick(result.as_ref().map(|r| &r.stderr_sha256), stderr.sha256()),
        result,
    };
    report.stdout = stdout.text;
    report.stderr = stderr.text;
    (report, Some(record))
}

/// The history outcome of a host report.
fn outcome_of(report: &HostReport, record: Option<&OutputRecord>) -> RunOutcome {
    let status = match report.status {
        HostStatus::Submitted => "pending".to_string(),
        other => other.as_str().to_string(),
    };
    let result = record.and_then(|r| r.result.as_ref());
    let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
    RunOutcome {
        status,
        exit_code: report.exit_code,
        reason: report.reason.clone(),
        error: report.error.clone(),
        started_at: result.and_then(|r| non_empty(&r.start_time)),
        ended_at: result.and_then(|r| non_empty(&r.end_time)),
        duration_ms: report.duration_ms,
        stdout_bytes: record.map(|r| r.stdout_bytes),
        stderr_bytes: record.map(|r| r.stderr_bytes),
        stdout_sha256: record.map(|r| r.stdout_sha256.clone()),
        stderr_sha256: record.map(|r| r.stderr_sha256.clone()),
    }
}

/// Cancels every job in `started` (Ctrl-C), all at once, each bounded by `limit`. Returns
/// per job whether the agent took the cancel, and records the outcome in the history.
pub async fn cancel_started(
    clients: &[Client],
    started: &StartedJobs,
    history: Option<&History>,
    limit: Duration,
) -> Vec<(StartedJob, Result<(), ClientError>)> {
    let mut tasks = JoinSet::new();
    for job in started.open() {
        let Some(client) = clients.get(job.host).cloned() else {
            continue;
        };
        tasks.spawn(async move {
            let outcome = match tokio::time::timeout(limit, client.cancel(&job.job_id)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(ClientError::Timeout {
                    during: "cancelling the job".into(),
                }),
            };
            (job, client.url().to_string(), outcome)
        });
    }
    let mut done = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let Ok((job, agent_url, outcome)) = joined else {
            continue;
        };
        if let Some(history) = history {
            let error = outcome
                .as_ref()
                .err()
                .map(|e| format!("cancel failed: {e}"));
            let _ = history
                .record_outcome(
                    &job.job_id,
                    &agent_url,
                    RunOutcome {
                        status: "cancelled".into(),
                        reason: Some("interrupted".into()),
                        error,
                        ..RunOutcome::default()
                    },
                )
                .await;
        }
        done.push((job, outcome));
    }
    done.sort_by_key(|(job, _)| job.host);
    done
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_errors_parse_and_threshold() {
        assert_eq!("0".parse(), Ok(MaxErrors::Count(0)));
        assert_eq!("3".parse(), Ok(MaxErrors::Count(3)));
        assert_eq!("25%".parse(), Ok(MaxErrors::Percent(25)));
        assert!("x".parse::<MaxErrors>().is_err());
        assert!("101%".parse::<MaxErrors>().is_err());
        assert!("-1".parse::<MaxErrors>().is_err());
        assert_eq!(MaxErrors::Count(2).allowed(10), 2);
        assert_eq!(MaxErrors::Percent(25).allowed(10), 2);
        assert_eq!(MaxErrors::Percent(100).allowed(7), 7);
        assert_eq!(MaxErrors::Percent(0).allowed(7), 0);
    }

    #[test]
    fn capture_bounds_text_but_hashes_everything() {
        let mut capture = Capture::new();
        capture.add("abc");
        assert_eq!(capture.bytes, 3);
        assert_eq!(
            capture.sha256(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        capture.add(&"x".repeat(MAX_CAPTURE_BYTES));
        assert!(capture.truncated);
        assert_eq!(capture.text, "abc");
        assert_eq!(capture.bytes, 3 + MAX_CAPTURE_BYTES as u64);
    }
}
