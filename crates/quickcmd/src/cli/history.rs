//! `quickcmd history`: the rows of the history database, newest first, with rows whose
//! job had not ended refreshed from their agents first.

use super::runs::{find_run, refresh_open_rows};
use super::{failed, CliResult, Context};
use crate::history::{History, HistoryFilter, HistoryRow};
use crate::output::{format_duration_ms, out, outln, short_time, table, truncate};

pub(super) struct HistoryQuery {
    pub limit: u32,
    pub agent: Option<String>,
    pub status: Option<String>,
    pub job_id: Option<String>,
    pub run_id: Option<String>,
    pub refresh: bool,
}

pub(super) fn history(context: &Context, query: HistoryQuery) -> CliResult {
    let path = context.history_path()?;
    let history = context
        .runtime
        .block_on(History::open(&path))
        .map_err(failed)?;
    let run_id = match &query.run_id {
        Some(run) => Some(find_run(context, &history, run)?.run_id),
        None => None,
    };
    let filter = HistoryFilter {
        limit: query.limit,
        agent: query.agent,
        status: query.status,
        job_id: query.job_id,
        run_id,
    };
    let read = |filter: HistoryFilter| {
        context
            .runtime
            .block_on(history.query(filter))
            .map_err(failed)
    };
    let mut rows = read(filter.clone())?;
    if query.refresh && rows.iter().any(HistoryRow::is_open) {
        refresh_open_rows(context, &history, &rows);
        rows = read(filter)?;
    }
    if context.json() {
        for row in &rows {
            outln!("{}", serde_json::to_string(row).unwrap_or_default());
        }
        return Ok(0);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|row| {
            vec![
                short_time(&row.submitted_at),
                row.run_id
                    .as_deref()
                    .map(|r| truncate(r, 13))
                    .unwrap_or_else(|| "-".into()),
                row.agent.clone(),
                row.job_id.clone(),
                row.user.clone(),
                row.requested_by.clone().unwrap_or_else(|| "-".into()),
                row.status.clone(),
                row.exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                row.duration_ms
                    .map(format_duration_ms)
                    .unwrap_or_else(|| "-".into()),
                truncate(&row.command, 60),
            ]
        })
        .collect();
    out!(
        "{}",
        table(
            &[
                "SUBMITTED (UTC)",
                "RUN",
                "AGENT",
                "JOB",
                "USER",
                "REQUESTED BY",
                "STATUS",
                "EXIT",
                "DURATION",
                "COMMAND"
            ],
            &cells,
            None
        )
    );
    Ok(0)
}
