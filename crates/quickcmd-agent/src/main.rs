//! `quickcmd-agent`: serve (default), `--check-config`, `audit verify`, `audit list`.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use quickcmd_agent::audit::AuditLog;
use quickcmd_agent::config::{AgentConfig, LogFormat};

const DEFAULT_CONFIG: &str = "/etc/quickcmd/agent-config.yaml";

#[derive(Parser)]
#[command(
    name = "quickcmd-agent",
    version,
    about = "Runs signed QuickCMD jobs in Docker sandboxes, streams their output and audits everything"
)]
struct Cli {
    /// Agent configuration file (YAML).
    #[arg(long, global = true, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Validate the configuration and exit (0 when valid).
    #[arg(long)]
    check_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect the hash-chained audit log.
    Audit {
        #[command(subcommand)]
        action: AuditAction,
    },
}

#[derive(Subcommand)]
enum AuditAction {
    /// Check the whole chain offline; names the first bad row and prints the head (seq and
    /// hash). Exit 0 intact, 1 broken.
    Verify,
    /// Show the most recent rows.
    List {
        /// How many rows.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("QUICKCMD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only for a terminal: a journal or a log file gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match AgentConfig::load(&cli.config, std::env::var("QUICKCMD_HMAC_SECRET").ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("quickcmd-agent: {error}");
            return ExitCode::from(2);
        }
    };
    if cli.check_config {
        for warning in &config.warnings {
            eprintln!("warning: {warning}");
        }
        println!(
            "config {} is valid: {} controller(s), listen {}, images {:?}",
            cli.config.display(),
            config.controllers.len(),
            config.listen,
            config.limits.allowed_images
        );
        return ExitCode::SUCCESS;
    }
    match cli.command {
        Some(Command::Audit { action }) => audit(&config, action),
        None => serve(config),
    }
}

fn serve(config: AgentConfig) -> ExitCode {
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("quickcmd-agent: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(quickcmd_agent::server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("quickcmd-agent: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit code after the reader of our stdout closed the pipe (`audit list | head`): what a
/// shell reports for a tool ended by SIGPIPE (128 + 13), as the controller does.
const EXIT_BROKEN_PIPE: u8 = 141;

fn audit(config: &AgentConfig, action: AuditAction) -> ExitCode {
    let log = match AuditLog::open_read_only(&config.audit_db_path) {
        Ok(log) => log,
        Err(error) => {
            eprintln!("quickcmd-agent: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = match action {
        AuditAction::Verify => audit_verify(&log),
        AuditAction::List { limit, json } => audit_list(&log, limit, json),
    };
    match result {
        Ok(code) => code,
        Err(AuditCliError::Pipe) => ExitCode::from(EXIT_BROKEN_PIPE),
        Err(AuditCliError::Stdout(error)) => {
            eprintln!("quickcmd-agent: cannot write to stdout: {error}");
            ExitCode::FAILURE
        }
        Err(AuditCliError::Log(error)) => {
            eprintln!("quickcmd-agent: {error}");
            ExitCode::FAILURE
        }
    }
}

enum AuditCliError {
    /// The reader of stdout went away: end quietly.
    Pipe,
    Stdout(std::io::Error),
    Log(quickcmd_agent::audit::AuditError),
}

impl From<std::io::Error> for AuditCliError {
    fn from(error: std::io::Error) -> Self {
        if error.kind() == std::io::ErrorKind::BrokenPipe {
            AuditCliError::Pipe
        } else {
            AuditCliError::Stdout(error)
        }
    }
}

impl From<quickcmd_agent::audit::AuditError> for AuditCliError {
    fn from(error: quickcmd_agent::audit::AuditError) -> Self {
        AuditCliError::Log(error)
    }
}

/// `audit verify`: the first bad row, or intact; either way the head (seq and hash), so an
/// operator can record it elsewhere.
fn audit_verify(log: &AuditLog) -> Result<ExitCode, AuditCliError> {
    let report = log.verify()?;
    let mut out = std::io::stdout().lock();
    let code = match &report.first_bad {
        None => {
            writeln!(
                out,
                "audit chain intact: {} rows in {}",
                report.rows,
                log.path().display()
            )?;
            ExitCode::SUCCESS
        }
        Some(bad) => {
            writeln!(
                out,
                "audit chain BROKEN at row {}: {} ({} rows checked)",
                bad.id, bad.problem, report.rows
            )?;
            ExitCode::FAILURE
        }
    };
    match &report.head {
        Some(head) => writeln!(out, "head: seq {} hash {}", head.id, head.row_hash)?,
        None => writeln!(out, "head: none (the log is empty)")?,
    }
    out.flush()?;
    Ok(code)
}

/// `audit list`: JSON lines, or a table under a header row.
fn audit_list(log: &AuditLog, limit: usize, json: bool) -> Result<ExitCode, AuditCliError> {
    let rows = log.list(limit)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if !json {
        writeln!(
            out,
            "{:>6} {:<24} {:<12} {:<24} {:<16} {:<24} {:<10} {:<22} COMMAND",
            "SEQ", "TIME", "KIND", "JOB", "CONTROLLER", "REQUESTED BY", "STATUS", "CODE/REASON"
        )?;
    }
    for row in rows {
        if json {
            writeln!(out, "{}", row.to_json())?;
        } else {
            // v1.1 rows of a job carry the payload's `requested_by` in `details`.
            let requested_by = row
                .details
                .get("requested_by")
                .and_then(|v| v.as_str())
                .unwrap_or("-");
            writeln!(
                out,
                "{:>6} {:<24} {:<12} {:<24} {:<16} {:<24} {:<10} {:<22} {}",
                row.id,
                quickcmd_agent::clock::rfc3339_ms(row.time_ms),
                row.kind,
                row.job_id.as_deref().unwrap_or("-"),
                row.controller_id.as_deref().unwrap_or("-"),
                requested_by,
                row.status.as_deref().unwrap_or("-"),
                row.code.as_deref().or(row.reason.as_deref()).unwrap_or("-"),
                row.command.as_deref().unwrap_or("")
            )?;
        }
    }
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
