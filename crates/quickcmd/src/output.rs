//! What the operator sees: a printer thread that turns run events into live output (raw
//! for one host; name-prefixed, aligned and coloured lines for several; JSON objects for
//! scripts), an optional progress bar on a terminal's stderr, and plain text tables.
//!
//! Writing to a terminal or pipe blocks, so it happens on its own thread, never on the
//! async runtime; the bounded channel in between lets a slow terminal slow the streams
//! rather than grow memory.

use std::io::{IsTerminal, Write};
use std::thread::JoinHandle;

use quickcmd_protocol::StreamName;
use tokio::sync::mpsc;

use crate::fanout::{HostReport, HostStatus, RunEvent};

/// Text for people or JSON for scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// How the printer behaves.
#[derive(Debug, Clone)]
pub struct PrinterConfig {
    /// Host names, by index.
    pub hosts: Vec<String>,
    pub format: OutputFormat,
    /// Several hosts: prefixed lines and a summary table. One host: raw passthrough.
    pub multi: bool,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// ANSI colours on stdout / stderr.
    pub color_stdout: bool,
    pub color_stderr: bool,
}

impl PrinterConfig {
    /// Settings for `hosts` that follow the terminal: colours and progress only when the
    /// stream is a terminal and `NO_COLOR` is unset.
    pub fn for_terminal(hosts: Vec<String>, format: OutputFormat) -> PrinterConfig {
        let multi = hosts.len() > 1;
        let colors_allowed = std::env::var_os("NO_COLOR").is_none()
            && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true);
        PrinterConfig {
            progress: multi && std::io::stderr().is_terminal(),
            color_stdout: colors_allowed && std::io::stdout().is_terminal(),
            color_stderr: colors_allowed && std::io::stderr().is_terminal(),
            hosts,
            format,
            multi,
        }
    }
}

/// The events channel's capacity: enough to absorb bursts, small enough to bound memory.
const EVENT_CAPACITY: usize = 1024;

/// Starts the printer thread. Send events; drop the sender and join the handle to get
/// every host's report (in host order) once everything is printed.
pub fn spawn_printer(
    config: PrinterConfig,
) -> std::io::Result<(mpsc::Sender<RunEvent>, JoinHandle<Vec<HostReport>>)> {
    let (sender, receiver) = mpsc::channel(EVENT_CAPACITY);
    let handle = std::thread::Builder::new()
        .name("quickcmd-printer".into())
        .spawn(move || Printer::new(config).run(receiver))?;
    Ok((sender, handle))
}

const COLORS: [&str; 6] = [
    "\x1b[36m", "\x1b[33m", "\x1b[35m", "\x1b[32m", "\x1b[34m", "\x1b[91m",
];
const RESET: &str = "\x1b[0m";
const RED: &str = "\x1b[31m";
const GREEN: &str = "\x1b[32m";

/// Longest partial line held back waiting for its newline.
const MAX_PENDING_LINE: usize = 64 * 1024;

struct Printer {
    config: PrinterConfig,
    width: usize,
    pending: Vec<[String; 2]>,
    reports: Vec<Option<HostReport>>,
    bar: Option<indicatif::ProgressBar>,
    running: usize,
    failed: usize,
}

impl Printer {
    fn new(config: PrinterConfig) -> Printer {
        let width = config
            .hosts
            .iter()
            .map(|h| h.chars().count())
            .max()
            .unwrap_or(0);
        let bar = config.progress.then(|| {
            let bar = indicatif::ProgressBar::with_draw_target(
                Some(config.hosts.len() as u64),
                indicatif::ProgressDrawTarget::stderr(),
            );
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed}] {bar:30} {pos}/{len} hosts done  {msg}",
            ) {
                bar.set_style(style);
            }
            bar.enable_steady_tick(std::time::Duration::from_millis(200));
            bar
        });
        Printer {
            pending: vec![[String::new(), String::new()]; config.hosts.len()],
            reports: vec![None; config.hosts.len()],
            width,
            config,
            bar,
            running: 0,
            failed: 0,
        }
    }

    fn run(mut self, mut receiver: mpsc::Receiver<RunEvent>) -> Vec<HostReport> {
        while let Some(event) = receiver.blocking_recv() {
            self.handle(event);
        }
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        if self.config.multi && self.config.format == OutputFormat::Text {
            let reports: Vec<HostReport> = self.reports.iter().flatten().cloned().collect();
            let mut stdout = std::io::stdout().lock();
            let _ = stdout.write_all(summary_table(&reports, self.config.color_stdout).as_bytes());
            let _ = stdout.flush();
        }
        self.reports.into_iter().flatten().collect()
    }

    fn name(&self, host: usize) -> &str {
        self.config
            .hosts
            .get(host)
            .map(String::as_str)
            .unwrap_or("?")
    }

    /// Runs `write` with the progress bar out of the way.
    fn write_out(&self, write: impl FnOnce()) {
        match &self.bar {
            Some(bar) => bar.suspend(write),
            None => write(),
        }
    }

    fn update_bar(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(format!("{} running, {} failed", self.running, self.failed));
        }
    }

    fn handle(&mut self, event: RunEvent) {
        match event {
            RunEvent::Started { .. } => {
                self.running += 1;
                self.update_bar();
            }
            RunEvent::Submitted { host, job_id } => {
                tracing::debug!("{}: submitted job {job_id}", self.name(host));
            }
            RunEvent::Output { host, stream, data } => self.output(host, stream, &data),
            RunEvent::Notice { host, message } => {
                let line = format!("quickcmd: {}: {message}\n", self.name(host));
                self.write_out(|| {
                    let _ = std::io::stderr().write_all(line.as_bytes());
                });
            }
            RunEvent::Message { message } => {
                let line = format!("quickcmd: {message}\n");
                self.write_out(|| {
                    let _ = std::io::stderr().write_all(line.as_bytes());
                });
            }
            RunEvent::Finished { host, report } => self.finished(host, report),
        }
    }

    fn output(&mut self, host: usize, stream: StreamName, data: &str) {
        if self.config.format == OutputFormat::Json {
            return;
        }
        if !self.config.multi {
            self.write_out(|| write_raw(stream, data.as_bytes()));
            return;
        }
        let slot = stream_slot(stream);
        let Some(pending) = self.pending.get_mut(host) else {
            return;
        };
        pending[slot].push_str(data);
        let buffer = &mut pending[slot];
        let mut lines = String::new();
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            lines.push_str(&line);
        }
        if buffer.len() > MAX_PENDING_LINE {
            lines.push_str(&std::mem::take(buffer));
            lines.push('\n');
        }
        if !lines.is_empty() {
            self.write_prefixed(host, stream, &lines);
        }
    }

    fn write_prefixed(&self, host: usize, stream: StreamName, lines: &str) {
        let color = match stream {
            StreamName::Stdout => self.config.color_stdout,
            StreamName::Stderr => self.config.color_stderr,
        };
        let name = format!("{:<width$}", self.name(host), width = self.width);
        let prefix = if color {
            format!("{}{name}{RESET} | ", COLORS[host % COLORS.len()])
        } else {
            format!("{name} | ")
        };
        let mut text = String::with_capacity(lines.len() + 32);
        for line in lines.split_inclusive('\n') {
            text.push_str(&prefix);
            text.push_str(line);
        }
        self.write_out(|| write_raw(stream, text.as_bytes()));
    }

    fn finished(&mut self, host: usize, report: HostReport) {
        if self.config.multi && self.config.format == OutputFormat::Text {
            // A last line without its newline.
            for stream in [StreamName::Stdout, StreamName::Stderr] {
                let rest = self
                    .pending
                    .get_mut(host)
                    .map(|p| std::mem::take(&mut p[stream_slot(stream)]))
                    .unwrap_or_default();
                if !rest.is_empty() {
                    self.write_prefixed(host, stream, &format!("{rest}\n"));
                }
            }
        }
        if report.status != HostStatus::Skipped {
            self.running = self.running.saturating_sub(1);
        }
        if !report.succeeded() {
            self.failed += 1;
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        self.update_bar();
        match self.config.format {
            OutputFormat::Json => {
                let line = serde_json::to_string(&report).unwrap_or_default();
                self.write_out(|| {
                    let mut stdout = std::io::stdout().lock();
                    let _ = writeln!(stdout, "{line}");
                    let _ = stdout.flush();
                });
            }
            OutputFormat::Text if !self.config.multi => {
                if report.status == HostStatus::Submitted {
                    // `submit` prints just the id, for `JOB=$(quickcmd submit ...)`.
                    if let Some(job_id) = &report.job_id {
                        let _ = writeln!(std::io::stdout(), "{job_id}");
                    }
                } else if let Some(message) = single_host_message(&report) {
                    let _ = writeln!(std::io::stderr(), "quickcmd: {}: {message}", report.agent);
                }
            }
            OutputFormat::Text => {}
        }
        if let Some(slot) = self.reports.get_mut(host) {
            *slot = Some(report);
        }
    }
}

fn stream_slot(stream: StreamName) -> usize {
    match stream {
        StreamName::Stdout => 0,
        StreamName::Stderr => 1,
    }
}

fn write_raw(stream: StreamName, bytes: &[u8]) {
    // A closed pipe (`| head`) is not our failure; the job goes on.
    match stream {
        StreamName::Stdout => {
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(bytes);
            let _ = out.flush();
        }
        StreamName::Stderr => {
            let mut err = std::io::stderr().lock();
            let _ = err.write_all(bytes);
            let _ = err.flush();
        }
    }
}

/// The line a single-host run prints on stderr when the job did not simply run.
fn single_host_message(report: &HostReport) -> Option<String> {
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
    let succeeded = reports.iter().filter(|r| r.succeeded()).count();
    let mut out = String::from("\n");
    out.push_str(&table(
        &["HOST", "JOB", "STATUS", "EXIT", "DURATION", "REASON"],
        &rows,
        color.then_some(colors.as_slice()),
    ));
    out.push_str(&format!(
        "{} host(s): {} succeeded, {} failed\n",
        reports.len(),
        succeeded,
        reports.len() - succeeded
    ));
    out
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
            agent: agent.into(),
            url: format!("https://{agent}:1/"),
            job_id: Some("j".into()),
            status,
            exit_code: exit,
            duration_ms: exit.map(|_| 1500),
            reason: reason.map(str::to_string),
            error: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_truncated: false,
            stderr_truncated: false,
            stream_reconnects: 0,
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
        assert_eq!(lines[4], "2 host(s): 1 succeeded, 1 failed");
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
