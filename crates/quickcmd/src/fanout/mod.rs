//! Running one job on many agents: at most `max_concurrency` at a time, no new host after
//! more than `max_errors` failures (like SSM's MaxErrors), every submission recorded in the
//! history before it is sent, each host's output and outcome reported as events. A slow or
//! dead agent only ever holds up its own task.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use crate::client::{Client, ClientError};
use crate::history::{History, NewRun, RunOutcome};
use crate::job::{new_job_id, JobSpec};
use crate::report::{HostReport, HostStatus, RunEvent};

mod follow;

use follow::{follow, OutputRecord};

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
    /// The invocation every job of this fan-out belongs to (recorded in the history).
    pub run_id: Option<String>,
    /// Say on stderr when a job waits in the agent's queue (one host, live output).
    pub announce_queue: bool,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            max_concurrency: 50,
            max_errors: MaxErrors::default(),
            stream: true,
            wait_limit: None,
            submit_only: false,
            run_id: None,
            announce_queue: false,
        }
    }
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
            run_id: context.options.run_id.clone(),
            requested_by: signed.payload.requested_by.clone(),
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
    let mut report = submit_and_follow(host, client, context, &signed).await;
    context.started.remove(host);
    if let Some(history) = &context.history {
        let witness = report.1.as_ref().and_then(|r| r.witness.as_ref());
        if let Some(witness) = witness {
            keep_witness(
                host,
                client,
                context,
                history,
                &job_id,
                witness,
                &mut report.0,
            )
            .await;
        }
        let outcome = outcome_of(&report.0, report.1.as_ref());
        if let Err(error) = history.record_outcome(&job_id, &agent_url, outcome).await {
            context.note_history_error(host, &error).await;
        }
    }
    report.0
}

/// Checks the result's audit witness and keeps it. A witness that does not verify is a
/// different agent or a forged result: the host's outcome becomes an error, said loudly.
async fn keep_witness(
    host: usize,
    client: &Client,
    context: &Context,
    history: &crate::history::History,
    job_id: &str,
    witness: &quickcmd_protocol::AuditWitness,
    report: &mut HostReport,
) {
    match crate::audit::accept_witness(client, history, job_id, witness).await {
        Ok(()) => {}
        Err(error @ crate::audit::WitnessError::BadMac { .. }) => {
            context
                .emit(RunEvent::Notice {
                    host,
                    message: format!("SECURITY: {error}"),
                })
                .await;
            report.status = HostStatus::Error;
            report.reason = Some("bad audit witness".into());
            report.error = Some(error.to_string());
        }
        Err(error) => {
            context
                .emit(RunEvent::Notice {
                    host,
                    message: format!("audit witness not kept: {error}"),
                })
                .await;
        }
    }
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
    let following = async {
        let following = follow(host, client, context, &job_id);
        tokio::pin!(following);
        if context.options.announce_queue {
            tokio::select! {
                done = &mut following => return done,
                () = watch_queue(host, client, context, &job_id) => {}
            }
        }
        following.await
    };
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

/// How long a job may stay `pending` before we say it is queued.
const QUEUE_NOTICE_AFTER: Duration = Duration::from_secs(1);
/// How often a queued job is asked about.
const QUEUE_POLL: Duration = Duration::from_secs(2);

/// Says on stderr when the job waits in the agent's queue (instead of silence), and when
/// it leaves it. Returns once the job is no longer pending or cannot be asked about.
async fn watch_queue(host: usize, client: &Client, context: &Context, job_id: &str) {
    tokio::time::sleep(QUEUE_NOTICE_AFTER).await;
    let mut queued_since = None;
    loop {
        match client.status(job_id).await {
            Ok(view) if view.status == quickcmd_protocol::JobStatus::Pending => {
                if queued_since.is_none() {
                    queued_since = Some(std::time::Instant::now());
                    context
                        .emit(RunEvent::Notice {
                            host,
                            message: format!(
                                "queued: job {job_id} is waiting for a free slot on the agent"
                            ),
                        })
                        .await;
                }
            }
            Ok(_) => {
                if let Some(since) = queued_since {
                    context
                        .emit(RunEvent::Notice {
                            host,
                            message: format!(
                                "started after {:.0}s in the queue",
                                since.elapsed().as_secs_f64()
                            ),
                        })
                        .await;
                }
                return;
            }
            Err(_) => return,
        }
        tokio::time::sleep(QUEUE_POLL).await;
    }
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
}
