//! `status`, `logs`, `cancel` and `list`: reads and cancels of jobs on agents. A job
//! command without targets finds the job's agent in the history.

use std::time::Duration;

use anyhow::anyhow;
use futures_util::stream::{self, StreamExt};
use quickcmd_protocol::{JobStatus, JobView, StreamName};
use serde_json::json;

use super::{
    could_not_run, failed, usage, CliResult, Context, Failure, TargetArgs, EXIT_COULD_NOT_RUN,
    EXIT_NOT_ENDED,
};
use crate::client::{Client, ClientError};
use crate::history::{History, RunOutcome};
use crate::output::{
    errln, format_duration_ms, out, outln, short_time, table, truncate, write_stderr, write_stdout,
};
use crate::report::{HostReport, HostStatus};
use crate::target::TargetSelection;

/// Agents asked at once by the read commands.
const READ_CONCURRENCY: usize = 50;

/// The agents to ask about `job_id`: the targets given, or the one the history names.
fn job_clients(
    context: &Context,
    targets: &TargetArgs,
    job_id: &str,
) -> Result<Vec<Client>, Failure> {
    let selection = targets.selection();
    if !selection.is_empty() {
        return context.clients(&selection);
    }
    let path = context.history_path()?;
    let row = context.runtime.block_on(async {
        let history = History::open(&path).await.map_err(failed)?;
        history.find_job(job_id).await.map_err(failed)
    })?;
    let Some(row) = row else {
        return Err(usage(anyhow!(
            "job {job_id} is not in the history ({}); name its agent with --agent",
            path.display()
        )));
    };
    context.clients(&TargetSelection {
        agents: vec![row.agent_url],
        ..TargetSelection::default()
    })
}

/// Runs `work` for every client, at most `READ_CONCURRENCY` at once, results in order.
async fn for_each<T, F, Fut>(clients: &[Client], work: F) -> Vec<T>
where
    F: Fn(Client) -> Fut,
    Fut: std::future::Future<Output = T>,
{
    stream::iter(clients.iter().cloned().map(work))
        .buffered(READ_CONCURRENCY)
        .collect()
        .await
}

pub(super) fn status(context: Context, targets: TargetArgs, job_id: String) -> CliResult {
    let clients = job_clients(&context, &targets, &job_id)?;
    let history_path = context.history_path().ok();
    let answers = context.runtime.block_on(async {
        let answers = for_each(&clients, |client| {
            let job_id = job_id.clone();
            async move {
                let answer = client.status(&job_id).await;
                (client, answer)
            }
        })
        .await;
        // A final status seen here completes a history row that `submit` left open.
        if let Some(path) = history_path {
            if let Ok(history) = History::open(&path).await {
                for (client, answer) in &answers {
                    if let Ok(view) = answer {
                        if view.status.is_final() {
                            let _ = history
                                .record_outcome(
                                    &view.job_id,
                                    client.url().as_str(),
                                    outcome_of_view(view),
                                )
                                .await;
                        }
                    }
                }
            }
        }
        answers
    });
    let mut outcome = None;
    let single = answers.len() == 1;
    for (client, answer) in &answers {
        match answer {
            Ok(view) => {
                outcome = outcome.or(Some(view_exit_code(view)));
                if context.json() {
                    outln!(
                        "{}",
                        json!({"agent": client.name(), "url": client.url().as_str(), "job": view})
                    );
                } else {
                    out!("{}", describe_view(client, view));
                }
            }
            Err(error) => {
                let not_found = error.status() == Some(404);
                if context.json() {
                    outln!(
                        "{}",
                        json!({"agent": client.name(), "url": client.url().as_str(), "error": error.to_string()})
                    );
                } else if single || !not_found {
                    errln!("quickcmd: {}: {error}", client.name());
                }
            }
        }
    }
    if outcome.is_none() && !single && !context.json() {
        errln!(
            "quickcmd: job {job_id} was not found on any of {} agents",
            answers.len()
        );
    }
    Ok(outcome.unwrap_or(EXIT_COULD_NOT_RUN))
}

/// The exit code that a job's status stands for: its outcome as a single-host run would
/// end (its own exit code; 255 if it never ran), or [`EXIT_NOT_ENDED`].
fn view_exit_code(view: &JobView) -> u8 {
    if !view.status.is_final() {
        return EXIT_NOT_ENDED;
    }
    let exit_code = view.result.as_ref().map(|r| r.exit_code);
    outcome_exit_code(view.status, exit_code)
}

/// The single-host exit code of an ended job of `status` and `exit_code` (-1: none).
fn outcome_exit_code(status: JobStatus, exit_code: Option<i64>) -> u8 {
    HostReport {
        exit_code: exit_code.filter(|c| *c >= 0),
        ..HostReport::empty("", "", HostStatus::from(status))
    }
    .single_host_exit_code()
}

pub(super) fn outcome_of_view(view: &JobView) -> RunOutcome {
    let result = view.result.as_ref();
    let non_empty = |s: &String| (!s.is_empty()).then(|| s.clone());
    RunOutcome {
        status: view.status.to_string(),
        exit_code: result.map(|r| r.exit_code).filter(|c| *c >= 0),
        reason: result.and_then(|r| r.reason.clone()),
        error: result.and_then(|r| r.error.clone()),
        started_at: result.and_then(|r| non_empty(&r.start_time)),
        ended_at: result.and_then(|r| non_empty(&r.end_time)),
        duration_ms: result.map(|r| r.duration_ms),
        stdout_bytes: result.map(|r| r.stdout_bytes).filter(|b| *b > 0),
        stderr_bytes: result.map(|r| r.stderr_bytes).filter(|b| *b > 0),
        stdout_sha256: result.and_then(|r| non_empty(&r.stdout_sha256)),
        stderr_sha256: result.and_then(|r| non_empty(&r.stderr_sha256)),
    }
}

fn describe_view(client: &Client, view: &JobView) -> String {
    let mut lines = vec![
        ("agent", format!("{} ({})", client.name(), client.url())),
        ("job", view.job_id.clone()),
        ("status", view.status.to_string()),
    ];
    if let Some(requested_by) = &view.requested_by {
        lines.push(("requested by", requested_by.clone()));
    }
    if let Some(result) = &view.result {
        if result.exit_code >= 0 {
            lines.push(("exit code", result.exit_code.to_string()));
        }
        for (label, value) in [
            ("reason", result.reason.clone()),
            ("error", result.error.clone()),
        ] {
            if let Some(value) = value.filter(|v| !v.is_empty()) {
                lines.push((label, value));
            }
        }
        if !result.start_time.is_empty() {
            lines.push(("started", result.start_time.clone()));
        }
        if !result.end_time.is_empty() {
            lines.push(("ended", result.end_time.clone()));
        }
        lines.push(("duration", format_duration_ms(result.duration_ms)));
        let size = |bytes: u64, text: &str, cut: bool| {
            let bytes = if bytes > 0 { bytes } else { text.len() as u64 };
            format!("{bytes} bytes{}", if cut { " (truncated)" } else { "" })
        };
        lines.push((
            "stdout",
            size(result.stdout_bytes, &result.stdout, result.stdout_truncated),
        ));
        lines.push((
            "stderr",
            size(result.stderr_bytes, &result.stderr, result.stderr_truncated),
        ));
    }
    let mut out = String::new();
    for (label, value) in lines {
        out.push_str(&format!("{:<13} {value}\n", format!("{label}:")));
    }
    out
}

pub(super) fn logs(
    context: Context,
    targets: TargetArgs,
    job_id: String,
    follow: bool,
    since: u64,
) -> CliResult {
    let clients = job_clients(&context, &targets, &job_id)?;
    let json = context.json();
    context.runtime.block_on(async {
        // The first agent that knows the job.
        let mut chosen = None;
        let mut last_error = None;
        for client in &clients {
            match client.status(&job_id).await {
                Ok(view) => {
                    chosen = Some((client.clone(), view));
                    break;
                }
                Err(error) => last_error = Some((client.name().to_string(), error)),
            }
        }
        let Some((client, view)) = chosen else {
            return Err(match last_error {
                Some((agent, error)) => could_not_run(anyhow!("{agent}: {error}")),
                None => could_not_run(anyhow!("no agent to ask")),
            });
        };
        // Without --follow a running job shows what it has written so far: we stop once
        // the stream has been quiet for a moment.
        let quiet_stop = (!follow && !view.status.is_final()).then_some(Duration::from_secs(1));
        let mut stream = client.stream(&job_id, since);
        loop {
            let next = match quiet_stop {
                Some(quiet) => match tokio::time::timeout(quiet, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
                None => stream.next().await,
            };
            match next {
                Ok(Some(frame)) => {
                    if json {
                        outln!("{}", serde_json::to_string(&frame).unwrap_or_default());
                    } else if !frame.is_final {
                        write_frame(frame.stream, &frame.data);
                    }
                    if frame.is_final {
                        // `logs -f` ends as the job did.
                        if follow {
                            if let Some(status) = frame.status {
                                return Ok(outcome_exit_code(status, frame.exit_code));
                            }
                        }
                        break;
                    }
                }
                Ok(None) => break,
                Err(error) => return Err(could_not_run(anyhow!("{}: {error}", client.name()))),
            }
        }
        Ok(0)
    })
}

fn write_frame(stream: StreamName, data: &str) {
    match stream {
        StreamName::Stdout => write_stdout(data.as_bytes()),
        StreamName::Stderr => write_stderr(data.as_bytes()),
    }
}

pub(super) fn cancel(context: Context, targets: TargetArgs, job_id: String) -> CliResult {
    let clients = job_clients(&context, &targets, &job_id)?;
    let history_path = context.history_path().ok();
    let answers: Vec<(Client, Result<(), ClientError>)> = context.runtime.block_on(async {
        let answers = for_each(&clients, |client| {
            let job_id = job_id.clone();
            async move {
                let answer = client.cancel(&job_id).await;
                (client, answer)
            }
        })
        .await;
        if let Some(path) = history_path {
            if let Ok(history) = History::open(&path).await {
                for (client, answer) in &answers {
                    if answer.is_ok() {
                        let _ = history
                            .record_outcome(
                                &job_id,
                                client.url().as_str(),
                                RunOutcome {
                                    status: "cancelled".into(),
                                    reason: Some("cancelled by quickcmd cancel".into()),
                                    ..RunOutcome::default()
                                },
                            )
                            .await;
                    }
                }
            }
        }
        answers
    });
    let single = answers.len() == 1;
    let mut any = false;
    for (client, answer) in &answers {
        any |= answer.is_ok();
        if context.json() {
            outln!(
                "{}",
                json!({
                    "agent": client.name(),
                    "url": client.url().as_str(),
                    "job_id": job_id,
                    "cancelled": answer.is_ok(),
                    "error": answer.as_ref().err().map(|e| e.to_string()),
                })
            );
            continue;
        }
        match answer {
            Ok(()) => outln!("cancel requested for job {job_id} on {}", client.name()),
            Err(error) if single || error.status() != Some(404) => {
                errln!(
                    "quickcmd: {}: cannot cancel job {job_id}: {error}",
                    client.name()
                )
            }
            Err(_) => {}
        }
    }
    Ok(if any { 0 } else { 1 })
}

pub(super) fn list(
    context: Context,
    targets: TargetArgs,
    status: Option<String>,
    limit: u32,
) -> CliResult {
    let status = match status.as_deref() {
        Some(text) => {
            Some(JobStatus::parse(text).ok_or_else(|| usage(anyhow!("unknown status `{text}`")))?)
        }
        None => None,
    };
    let clients = context.clients(&targets.selection())?;
    let answers = context
        .runtime
        .block_on(for_each(&clients, |client| async move {
            let answer = client.list(status, Some(limit)).await;
            (client, answer)
        }));
    let mut rows = Vec::new();
    let mut all_ok = true;
    for (client, answer) in &answers {
        match answer {
            Ok(list) => {
                if context.json() {
                    outln!(
                        "{}",
                        json!({"agent": client.name(), "url": client.url().as_str(), "jobs": list.jobs})
                    );
                }
                for job in &list.jobs {
                    rows.push(vec![
                        short_time(&job.created_at),
                        client.name().to_string(),
                        job.job_id.clone(),
                        job.status.to_string(),
                        job.exit_code
                            .filter(|c| *c >= 0)
                            .map(|c| c.to_string())
                            .unwrap_or_else(|| "-".into()),
                        truncate(&job.command, 60),
                    ]);
                }
            }
            Err(error) => {
                all_ok = false;
                if context.json() {
                    outln!(
                        "{}",
                        json!({"agent": client.name(), "url": client.url().as_str(), "error": error.to_string()})
                    );
                } else {
                    errln!("quickcmd: {}: {error}", client.name());
                }
            }
        }
    }
    if !context.json() {
        out!(
            "{}",
            table(
                &["CREATED (UTC)", "AGENT", "JOB", "STATUS", "EXIT", "COMMAND"],
                &rows,
                None
            )
        );
    }
    Ok(if all_ok { 0 } else { 1 })
}
