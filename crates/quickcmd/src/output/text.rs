//! Text for people: the summary table of a run, plain tables, durations, and the one
//! phrase that says why a host ended as it did.

use crate::report::{HostReport, HostStatus, Tally};

pub(super) const RESET: &str = "\x1b[0m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";

/// The line a single-host run prints on stderr when the job did not simply run.
pub(super) fn single_host_message(report: &HostReport) -> Option<String> {
    let job = report
        .job_id
        .as_deref()
        .map(|id| format!("job {id} "))
        .unwrap_or_default();
    match report.status {
        HostStatus::Completed | HostStatus::Submitted => None,
        HostStatus::Failed => Some(format!("{job}failed: {}", describe(report))),
        HostStatus::Rejected => Some(format!("{job}rejected: {}", describe(report))),
        // Ctrl-C already said which jobs it cancelled.
        HostStatus::Cancelled if report.reason.as_deref() == Some("interrupted") => None,
        HostStatus::Cancelled => Some(format!("{job}cancelled: {}", describe(report))),
        HostStatus::Unreachable => Some(format!("unreachable: {}", describe(report))),
        HostStatus::Refused => Some(format!("refused: {}", describe(report))),
        HostStatus::Skipped | HostStatus::Error => Some(describe(report)),
    }
}

/// One phrase for why a host ended as it did.
pub fn describe(report: &HostReport) -> String {
    match (&report.reason, &report.error) {
        (Some(reason), Some(error)) if error.starts_with(reason.as_str()) => error.clone(),
        (Some(reason), Some(error)) => format!("{reason}: {error}"),
        (Some(reason), None) => reason.clone(),
        (None, Some(error)) => error.clone(),
        (None, None) => match (report.status, report.exit_code) {
            (HostStatus::Completed, Some(code)) if code != 0 => format!("exit code {code}"),
            _ => String::new(),
        },
    }
}

/// `850ms`, `1.2s`, `2m03s`, `1h02m`.
pub fn format_duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    } else {
        format!("{}h{:02}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    }
}

/// A plain table: a header row and left-aligned columns, two spaces apart. `colors`
/// gives an optional ANSI colour per cell (same shape as `rows`).
pub fn table(
    headers: &[&str],
    rows: &[Vec<String>],
    colors: Option<&[Vec<Option<&str>>]>,
) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (index, cell) in row.iter().enumerate() {
            if let Some(width) = widths.get_mut(index) {
                *width = (*width).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let last = headers.len().saturating_sub(1);
    let mut push_row = |cells: &[String], row_colors: Option<&Vec<Option<&str>>>| {
        for (index, cell) in cells.iter().enumerate() {
            let color = row_colors.and_then(|c| c.get(index).copied().flatten());
            if let Some(color) = color {
                out.push_str(color);
            }
            if index == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}", width = widths[index]));
            }
            if color.is_some() {
                out.push_str(RESET);
            }
            if index != last {
                out.push_str("  ");
            }
        }
        let trimmed = out.trim_end_matches(' ').len();
        out.truncate(trimmed);
        out.push('\n');
    };
    let header_cells: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    push_row(&header_cells, None);
    for (index, row) in rows.iter().enumerate() {
        push_row(row, colors.and_then(|c| c.get(index)));
    }
    out
}

/// The summary table of a multi-host run, and a closing count line.
pub fn summary_table(reports: &[HostReport], color: bool) -> String {
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|report| {
            vec![
                report.agent.clone(),
                report.job_id.clone().unwrap_or_else(|| "-".into()),
                report.status.to_string(),
                report
                    .exit_code
                    .map(|c| c.to_string())
                    .unwrap_or_else(|| "-".into()),
                report
                    .duration_ms
                    .map(format_duration_ms)
                    .unwrap_or_else(|| "-".into()),
                truncate(&describe(report), 160),
            ]
        })
        .collect();
    let colors: Vec<Vec<Option<&str>>> = reports
        .iter()
        .map(|report| {
            let color = if report.succeeded() { GREEN } else { RED };
            vec![None, None, Some(color), Some(color), None, None]
        })
        .collect();
    let mut out = String::from("\n");
    out.push_str(&table(
        &["HOST", "JOB", "STATUS", "EXIT", "DURATION", "REASON"],
        &rows,
        color.then_some(colors.as_slice()),
    ));
    out.push_str(&summary_counts(reports));
    out.push('\n');
    out
}

/// `3 host(s): 2 succeeded, 0 failed, 1 unreachable, 0 refused, 0 cancelled, 0 skipped`.
pub fn summary_counts(reports: &[HostReport]) -> String {
    let counts: Vec<String> = Tally::ALL
        .iter()
        .map(|tally| {
            let count = reports.iter().filter(|r| r.tally() == *tally).count();
            format!("{count} {}", tally.as_str())
        })
        .collect();
    format!("{} host(s): {}", reports.len(), counts.join(", "))
}

/// The one time format of tables (`history`, `list`): an RFC 3339 time as
/// `2026-01-02 03:04:05` in UTC (headers say "(UTC)"). Text that is not RFC 3339 is shown
/// as it is.
pub fn short_time(rfc3339: &str) -> String {
    use time::format_description::well_known::Rfc3339;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    time::OffsetDateTime::parse(rfc3339, &Rfc3339)
        .ok()
        .and_then(|when| when.to_offset(time::UtcOffset::UTC).format(&format).ok())
        .unwrap_or_else(|| rfc3339.to_string())
}

/// At most `max` characters, with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    let single_line = text.trim().replace('\n', " ");
    if single_line.chars().count() <= max {
        return single_line;
    }
    let mut cut: String = single_line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        agent: &str,
        status: HostStatus,
        exit: Option<i64>,
        reason: Option<&str>,
    ) -> HostReport {
        HostReport {
            job_id: Some("j".into()),
            exit_code: exit,
            duration_ms: exit.map(|_| 1500),
            reason: reason.map(str::to_string),
            ..HostReport::empty(agent, &format!("https://{agent}:1/"), status)
        }
    }

    #[test]
    fn times_are_shown_in_utc_to_the_second() {
        for (given, shown) in [
            ("2026-01-02T03:04:05.123456Z", "2026-01-02 03:04:05"),
            ("2026-01-02T03:04:05Z", "2026-01-02 03:04:05"),
            ("2026-01-02T05:04:05+02:00", "2026-01-02 03:04:05"),
            ("yesterday", "yesterday"),
            ("", ""),
        ] {
            assert_eq!(short_time(given), shown, "{given}");
        }
    }

    #[test]
    fn durations() {
        for (ms, text) in [
            (0, "0ms"),
            (999, "999ms"),
            (1500, "1.5s"),
            (61_000, "1m01s"),
            (3_720_000, "1h02m"),
            (-5, "0ms"),
        ] {
            assert_eq!(format_duration_ms(ms), text);
        }
    }

    #[test]
    fn summary_aligns_columns() {
        let text = summary_table(
            &[
                report("a", HostStatus::Completed, Some(0), None),
                report(
                    "long-name",
                    HostStatus::Unreachable,
                    None,
                    Some("connection refused"),
                ),
            ],
            false,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[1],
            "HOST       JOB  STATUS       EXIT  DURATION  REASON"
        );
        assert_eq!(lines[2], "a          j    completed    0     1.5s");
        assert_eq!(
            lines[3],
            "long-name  j    unreachable  -     -         connection refused"
        );
        assert_eq!(
            lines[4],
            "2 host(s): 1 succeeded, 0 failed, 1 unreachable, 0 refused, 0 cancelled, 0 skipped"
        );
    }

    #[test]
    fn descriptions() {
        let mut r = report(
            "a",
            HostStatus::Refused,
            None,
            Some("401 INVALID_SIGNATURE"),
        );
        r.error = Some("401 INVALID_SIGNATURE: bad signature".into());
        assert_eq!(describe(&r), "401 INVALID_SIGNATURE: bad signature");
        let r = report("a", HostStatus::Completed, Some(3), None);
        assert_eq!(describe(&r), "exit code 3");
        let mut r = report("a", HostStatus::Failed, Some(124), Some("timeout"));
        r.error = Some("job ran over 5s".into());
        assert_eq!(describe(&r), "timeout: job ran over 5s");
        assert_eq!(
            single_host_message(&r).as_deref(),
            Some("job j failed: timeout: job ran over 5s")
        );
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
