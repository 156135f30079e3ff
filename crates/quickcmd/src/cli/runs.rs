//! Runs as objects: refreshing history rows whose job had not ended, `wait JOB|RUN`,
//! `cancel --run RUN` and `rerun --failed RUN`. Every job row names its run; the run's own
//! row (`invocations`) holds the job as asked and every host it targeted.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::anyhow;
use futures_util::stream::{self, StreamExt};
use serde_json::json;

use super::jobs::outcome_of_view;
use super::run::{exit_code, fan_out, requester, Shape};
use super::{failed, usage, CliResult, Context, Failure, EXIT_INTERRUPTED, EXIT_NOT_ENDED};
use crate::client::{Client, ClientError, RetryPolicy};
use crate::fanout::{MaxErrors, RunOptions};
use crate::history::{History, HistoryFilter, HistoryRow, Invocation, InvocationTarget};
use crate::output::{errln, host_event, out, outln, summary_counts, summary_json, summary_table};
use crate::report::{HostReport, HostStatus, Tally};
use crate::target::TargetSelection;

/// Agents asked at once when refreshing rows.
const REFRESH_CONCURRENCY: usize = 50;

/// The host status a history row stands for (`pending`/`running`/`submitting` are
/// `submitted`: sent, not ended).
pub(super) fn report_from_row(row: &HistoryRow) -> HostReport {
    let status = match row.status.as_str() {
        "completed" => HostStatus::Completed,
        "failed" => HostStatus::Failed,
        "rejected" => HostStatus::Rejected,
        "refused" => HostStatus::Refused,
        "unreachable" => HostStatus::Unreachable,
        "cancelled" => HostStatus::Cancelled,
        "submitting" | "pending" | "running" => HostStatus::Submitted,
        _ => HostStatus::Error,
    };
    HostReport {
        job_id: Some(row.job_id.clone()),
        exit_code: row.exit_code,
        duration_ms: row.duration_ms,
        reason: row.reason.clone(),
        error: row.error.clone(),
        ..HostReport::empty(&row.agent, &row.agent_url, status)
    }
}

/// One client per distinct agent URL of `rows`, built without retries (a refresh is a
/// probe). A URL whose client cannot be built maps to the reason.
fn clients_for_rows(
    context: &Context,
    rows: &[HistoryRow],
) -> BTreeMap<String, Result<Client, String>> {
    let mut clients = BTreeMap::new();
    for row in rows {
        if clients.contains_key(&row.agent_url) {
            continue;
        }
        let selection = TargetSelection {
            agents: vec![row.agent_url.clone()],
            ..TargetSelection::default()
        };
        let mut options = context.client_options();
        options.retry = RetryPolicy::with_retries(0);
        let client = context
            .clients_with(&selection, options)
            .map_err(|f| super::error_sentence(&f.error))
            .and_then(|mut c| c.pop().ok_or_else(|| "no client".to_string()));
        clients.insert(row.agent_url.clone(), client);
    }
    clients
}

/// Asks the agents about every row whose job had not ended and records what they say;
/// a row whose agent cannot be asked is left as it is, with a note on stderr.
pub(super) fn refresh_open_rows(context: &Context, history: &History, rows: &[HistoryRow]) {
    let open: Vec<HistoryRow> = rows.iter().filter(|r| r.is_open()).cloned().collect();
    if open.is_empty() {
        return;
    }
    let clients = clients_for_rows(context, &open);
    let notes = context.runtime.block_on(
        stream::iter(open.into_iter().map(|row| {
            let client = clients.get(&row.agent_url).cloned();
            async move {
                let client = match client {
                    Some(Ok(client)) => client,
                    Some(Err(reason)) => return Some((row, reason)),
                    None => return None,
                };
                match client.status(&row.job_id).await {
                    Ok(view) => {
                        if view.status.as_str() != row.status {
                            let outcome = outcome_of_view(&view);
                            if let Err(error) = history
                                .record_outcome(&row.job_id, &row.agent_url, outcome)
                                .await
                            {
                                return Some((row, error.to_string()));
                            }
                        }
                        None
                    }
                    Err(error) if error.status() == Some(404) => {
                        Some((row, "the agent does not know this job".to_string()))
                    }
                    Err(error) => Some((row, error.to_string())),
                }
            }
        }))
        .buffer_unordered(REFRESH_CONCURRENCY)
        .collect::<Vec<_>>(),
    );
    for (row, reason) in notes.into_iter().flatten() {
        errln!(
            "quickcmd: note: job {} on {} is still `{}` in the history; it could not be \
             refreshed: {reason}",
            row.job_id,
            row.agent,
            row.status
        );
    }
}

/// The run `id` (or `last`), or a usage error naming the history file.
pub(super) fn find_run(
    context: &Context,
    history: &History,
    id: &str,
) -> Result<Invocation, Failure> {
    context
        .runtime
        .block_on(history.find_invocation(id))
        .map_err(failed)?
        .ok_or_else(|| {
            usage(anyhow!(
                "run {id} is not in the history ({}); `quickcmd history` shows the RUN column",
                history.path().display()
            ))
        })
}

/// What `wait`, `cancel --run` and `rerun` act on: the run's targets and, per target, its
/// latest job row.
struct RunJobs {
    invocation: Option<Invocation>,
    /// (target, its job row if one was sent).
    hosts: Vec<(InvocationTarget, Option<HistoryRow>)>,
}

fn run_jobs(
    context: &Context,
    history: &History,
    invocation: Invocation,
) -> Result<RunJobs, Failure> {
    let rows = context
        .runtime
        .block_on(history.jobs_of_run(&invocation.run_id))
        .map_err(failed)?;
    let hosts = invocation
        .targets
        .iter()
        .map(|target| {
            let row = rows
                .iter()
                .rev()
                .find(|r| r.agent_url == target.url)
                .cloned();
            (target.clone(), row)
        })
        .collect();
    Ok(RunJobs {
        invocation: Some(invocation),
        hosts,
    })
}

/// `wait JOB|RUN`.
pub(super) fn wait(context: Context, id: String, timeout: Option<Duration>) -> CliResult {
    let path = context.history_path()?;
    let history = context
        .runtime
        .block_on(History::open(&path))
        .map_err(failed)?;
    let invocation = context
        .runtime
        .block_on(history.find_invocation(&id))
        .map_err(failed)?;
    let jobs = match invocation {
        Some(invocation) => run_jobs(&context, &history, invocation)?,
        None => {
            let row = context
                .runtime
                .block_on(history.find_job(&id))
                .map_err(failed)?
                .ok_or_else(|| {
                    usage(anyhow!(
                        "{id} is neither a run nor a job in the history ({})",
                        path.display()
                    ))
                })?;
            RunJobs {
                invocation: None,
                hosts: vec![(
                    InvocationTarget {
                        name: row.agent.clone(),
                        url: row.agent_url.clone(),
                    },
                    Some(row),
                )],
            }
        }
    };
    let single = jobs.invocation.is_none();
    let open: Vec<HistoryRow> = jobs
        .hosts
        .iter()
        .filter_map(|(_, row)| row.clone())
        .filter(HistoryRow::is_open)
        .collect();
    let clients = clients_for_rows(&context, &open);
    let waiting = stream::iter(open.into_iter().map(|row| {
        let client = clients.get(&row.agent_url).cloned();
        let history = history.clone();
        async move {
            let client = client.and_then(Result::ok)?;
            let result = client.wait(&row.job_id, None).await;
            if let Ok(view) = client.status(&row.job_id).await {
                let _ = history
                    .record_outcome(&row.job_id, &row.agent_url, outcome_of_view(&view))
                    .await;
            }
            result.err().map(|e| (row, e))
        }
    }))
    .buffer_unordered(REFRESH_CONCURRENCY)
    .collect::<Vec<Option<(HistoryRow, ClientError)>>>();
    let finished = context.runtime.block_on(async {
        tokio::select! {
            errors = async {
                match timeout {
                    Some(limit) => tokio::time::timeout(limit, waiting).await.ok(),
                    None => Some(waiting.await),
                }
            } => Ok(errors),
            _ = tokio::signal::ctrl_c() => Err(()),
        }
    });
    let errors = match finished {
        Err(()) => return Ok(EXIT_INTERRUPTED),
        Ok(None) => {
            errln!("quickcmd: {id}: still running after --timeout; its jobs go on");
            return Ok(EXIT_NOT_ENDED);
        }
        Ok(Some(errors)) => errors,
    };
    for (row, error) in errors.into_iter().flatten() {
        errln!(
            "quickcmd: {}: cannot wait for job {}: {error}",
            row.agent,
            row.job_id
        );
    }
    // Read the rows again: they now hold the outcomes.
    let reports = reports_after(&context, &history, &jobs)?;
    let code = if reports.iter().any(|r| r.status == HostStatus::Submitted) {
        super::EXIT_COULD_NOT_RUN
    } else {
        exit_code(single, &reports)
    };
    print_reports(&context, jobs.invocation.as_ref(), &reports, code);
    Ok(code)
}

/// Each target's report from its (re-read) job row; a target without a job was skipped.
fn reports_after(
    context: &Context,
    history: &History,
    jobs: &RunJobs,
) -> Result<Vec<HostReport>, Failure> {
    let mut reports = Vec::new();
    for (target, row) in &jobs.hosts {
        let report = match row {
            Some(row) => {
                let fresh = context
                    .runtime
                    .block_on(history.query(HistoryFilter {
                        limit: 1,
                        job_id: Some(row.job_id.clone()),
                        ..HistoryFilter::default()
                    }))
                    .map_err(failed)?;
                report_from_row(fresh.first().unwrap_or(row))
            }
            None => HostReport {
                reason: Some("no job was sent".into()),
                ..HostReport::empty(&target.name, &target.url, HostStatus::Skipped)
            },
        };
        reports.push(report);
    }
    Ok(reports)
}

/// The outcome of a run or job: a summary table, or JSON objects and a summary object.
fn print_reports(
    context: &Context,
    invocation: Option<&Invocation>,
    reports: &[HostReport],
    code: u8,
) {
    let run_id = invocation.map(|i| i.run_id.as_str());
    if context.json() {
        for report in reports {
            outln!("{}", host_event(run_id, report));
        }
        outln!("{}", summary_json(run_id, reports, code));
    } else {
        out!("{}", summary_table(reports, false));
    }
}

/// `cancel --run RUN`: cancels every job of the run that has not ended.
pub(super) fn cancel_run(context: Context, run: String) -> CliResult {
    let path = context.history_path()?;
    let history = context
        .runtime
        .block_on(History::open(&path))
        .map_err(failed)?;
    let invocation = find_run(&context, &history, &run)?;
    let run_id = invocation.run_id.clone();
    let jobs = run_jobs(&context, &history, invocation)?;
    let open: Vec<HistoryRow> = jobs
        .hosts
        .iter()
        .filter_map(|(_, row)| row.clone())
        .filter(HistoryRow::is_open)
        .collect();
    if open.is_empty() {
        outln!("run {run_id}: no job left to cancel");
        return Ok(0);
    }
    let clients = clients_for_rows(&context, &open);
    let answers = context.runtime.block_on(
        stream::iter(open.into_iter().map(|row| {
            let client = clients.get(&row.agent_url).cloned();
            let history = history.clone();
            async move {
                let client = match client {
                    Some(Ok(client)) => client,
                    Some(Err(reason)) => return (row, Err(reason)),
                    None => return (row, Err("no client".to_string())),
                };
                let answer = match client.cancel(&row.job_id).await {
                    Ok(()) => {
                        let outcome = crate::history::RunOutcome {
                            status: "cancelled".into(),
                            reason: Some("cancelled by quickcmd cancel --run".into()),
                            ..Default::default()
                        };
                        let _ = history
                            .record_outcome(&row.job_id, &row.agent_url, outcome)
                            .await;
                        Ok(true)
                    }
                    // Already ended: the history learns how.
                    Err(error) if error.status() == Some(409) => {
                        if let Ok(view) = client.status(&row.job_id).await {
                            let _ = history
                                .record_outcome(&row.job_id, &row.agent_url, outcome_of_view(&view))
                                .await;
                        }
                        Ok(false)
                    }
                    Err(error) => Err(error.to_string()),
                };
                (row, answer)
            }
        }))
        .buffer_unordered(REFRESH_CONCURRENCY)
        .collect::<Vec<_>>(),
    );
    let mut all_ok = true;
    for (row, answer) in &answers {
        let line = match answer {
            Ok(true) => format!("cancel requested for job {} on {}", row.job_id, row.agent),
            Ok(false) => format!("job {} on {} had already ended", row.job_id, row.agent),
            Err(reason) => {
                all_ok = false;
                errln!(
                    "quickcmd: {}: cannot cancel job {}: {reason}",
                    row.agent,
                    row.job_id
                );
                continue;
            }
        };
        if context.json() {
            outln!(
                "{}",
                json!({"agent": row.agent, "job_id": row.job_id, "run_id": run_id,
                       "cancelled": answer == &Ok(true)})
            );
        } else {
            outln!("{line}");
        }
    }
    Ok(if all_ok { 0 } else { 1 })
}

/// `rerun --failed RUN`.
pub(super) struct RerunArgs {
    pub run: String,
    pub max_concurrency: u32,
    pub max_errors: MaxErrors,
    pub no_stream: bool,
}

pub(super) fn rerun(context: Context, args: RerunArgs) -> CliResult {
    let path = context.history_path()?;
    let history = context
        .runtime
        .block_on(History::open(&path))
        .map_err(failed)?;
    let invocation = find_run(&context, &history, &args.run)?;
    let mut spec = invocation.spec().ok_or_else(|| {
        usage(anyhow!(
            "run {} was recorded without its job (an older or newer quickcmd); run it again \
             with `quickcmd run`",
            invocation.run_id
        ))
    })?;
    // The re-run is for whoever re-runs it. The first run's standard input was not
    // kept, so the re-run gets none.
    spec.requested_by = Some(requester(&context));
    let run_id = invocation.run_id.clone();
    // A job sent with `submit` may have ended since: learn how before choosing.
    let rows = context
        .runtime
        .block_on(history.jobs_of_run(&run_id))
        .map_err(failed)?;
    refresh_open_rows(&context, &history, &rows);
    let jobs = run_jobs(&context, &history, invocation)?;
    let reports = reports_after(&context, &history, &jobs)?;
    let mut again = Vec::new();
    for ((target, _), report) in jobs.hosts.iter().zip(&reports) {
        match report.status {
            HostStatus::Submitted => errln!(
                "quickcmd: {}: job {} has not ended; not re-run",
                target.name,
                report.job_id.as_deref().unwrap_or("-")
            ),
            _ if report.tally() == Tally::Succeeded => {}
            _ => again.push(target.url.clone()),
        }
    }
    if again.is_empty() {
        errln!(
            "quickcmd: run {run_id}: no host to re-run ({})",
            summary_counts(&reports).trim()
        );
        return Ok(0);
    }
    let clients = context.clients(&TargetSelection {
        agents: again,
        ..TargetSelection::default()
    })?;
    let options = RunOptions {
        max_concurrency: args.max_concurrency as usize,
        max_errors: args.max_errors,
        stream: !args.no_stream,
        ..RunOptions::default()
    };
    fan_out(
        &context,
        clients,
        spec,
        options,
        Shape::Fanout,
        ("rerun", Some(run_id)),
    )
}
