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

use crate::report::{HostReport, HostStatus, RunEvent, Tally};

mod json;
mod stdio;
mod text;

pub use json::{data_fields, host_event, output_event, summary_json};

pub(crate) use stdio::{errln, out, outln};
pub use stdio::{stdout_failed, write_stderr, write_stdout, EXIT_BROKEN_PIPE};
pub use text::{
    describe, format_duration_ms, short_time, summary_counts, summary_table, table, truncate,
};
use text::{single_host_message, RESET};

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
    /// The run the events belong to (in every JSON object).
    pub run_id: Option<String>,
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
            run_id: None,
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

/// Longest partial line held back waiting for its newline.
const MAX_PENDING_LINE: usize = 64 * 1024;

struct Printer {
    config: PrinterConfig,
    width: usize,
    pending: Vec<[Vec<u8>; 2]>,
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
            pending: vec![[Vec::new(), Vec::new()]; config.hosts.len()],
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

    /// One JSON object on its own line.
    fn write_json(&self, value: &serde_json::Value) {
        let line = format!("{value}\n");
        self.write_out(|| write_raw(StreamName::Stdout, line.as_bytes()));
    }

    /// `--output json`: every event is an object (the final report is written by
    /// `finished`).
    fn handle_json(&mut self, event: &RunEvent) {
        let run_id = self.config.run_id.as_deref();
        let value = match event {
            RunEvent::Submitted { host, job_id } => serde_json::json!({
                "event": "submitted", "run_id": run_id, "host": self.name(*host), "job_id": job_id,
            }),
            RunEvent::Output { host, stream, data } => {
                output_event(run_id, self.name(*host), *stream, data)
            }
            RunEvent::Notice { host, message } => serde_json::json!({
                "event": "notice", "run_id": run_id, "host": self.name(*host), "message": message,
            }),
            RunEvent::Message { message } => serde_json::json!({
                "event": "notice", "run_id": run_id, "message": message,
            }),
            RunEvent::Started { .. } | RunEvent::Finished { .. } => return,
        };
        self.write_json(&value);
    }

    fn handle(&mut self, event: RunEvent) {
        if self.config.format == OutputFormat::Json {
            self.handle_json(&event);
        }
        match event {
            RunEvent::Started { .. } => {
                self.running += 1;
                self.update_bar();
            }
            RunEvent::Submitted { host, job_id } => {
                tracing::debug!("{}: submitted job {job_id}", self.name(host));
            }
            RunEvent::Output { host, stream, data } => self.output(host, stream, &data),
            RunEvent::Notice { .. } | RunEvent::Message { .. }
                if self.config.format == OutputFormat::Json => {}
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

    fn output(&mut self, host: usize, stream: StreamName, data: &[u8]) {
        if self.config.format == OutputFormat::Json {
            return;
        }
        if !self.config.multi {
            self.write_out(|| write_raw(stream, data));
            return;
        }
        let slot = stream_slot(stream);
        let Some(pending) = self.pending.get_mut(host) else {
            return;
        };
        let buffer = &mut pending[slot];
        buffer.extend_from_slice(data);
        // Whole lines go out now, prefixed; the bytes themselves are kept as they are.
        let mut lines = match buffer.iter().rposition(|b| *b == b'\n') {
            Some(end) => buffer.drain(..=end).collect(),
            None => Vec::new(),
        };
        if buffer.len() > MAX_PENDING_LINE {
            lines.append(buffer);
            lines.push(b'\n');
        }
        if !lines.is_empty() {
            self.write_prefixed(host, stream, &lines);
        }
    }

    fn write_prefixed(&self, host: usize, stream: StreamName, lines: &[u8]) {
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
        let mut text = Vec::with_capacity(lines.len() + 32);
        for line in lines.split_inclusive(|b| *b == b'\n') {
            text.extend_from_slice(prefix.as_bytes());
            text.extend_from_slice(line);
        }
        self.write_out(|| write_raw(stream, &text));
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
                    let mut line = rest;
                    line.push(b'\n');
                    self.write_prefixed(host, stream, &line);
                }
            }
        }
        if report.status != HostStatus::Skipped {
            self.running = self.running.saturating_sub(1);
        }
        if !matches!(report.tally(), Tally::Succeeded | Tally::Skipped) {
            self.failed += 1;
        }
        if let Some(bar) = &self.bar {
            bar.inc(1);
        }
        self.update_bar();
        match self.config.format {
            OutputFormat::Json => {
                self.write_json(&host_event(self.config.run_id.as_deref(), &report));
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
