//! The `quickcmd` command line: setup shared by the commands, and the mapping of outcomes
//! to the exit codes docs/controller.md documents (the job's own code for one host; 0, 1
//! or 255 for several; 2 for usage and config errors; 130 after Ctrl-C; 141 when the
//! reader of stdout went away).

mod args;
mod audit;
mod config;
mod history;
mod inventory;
mod jobs;
mod misc;
mod run;
mod runs;
mod values;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;

pub use args::{
    AgentCommand, AuditCommand, Cli, Command, ConfigCommand, GlobalArgs, JobArgs, RunArgs,
    ShapeArgs, SubmitArgs, TargetArgs,
};

use crate::client::{Client, ClientOptions, RetryNotice, RetryPolicy};
use crate::config::{default_history_path, ControllerConfig};
use crate::output::{errln, write_stderr, OutputFormat};
use crate::target::{build_clients, resolve_endpoints, select_agents, Overrides, TargetSelection};

/// Exit code for usage and config errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit code after Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;
/// Exit code when the command could not be run or the agent could not be asked:
/// unreachable, TLS, authentication, refused (as ssh uses 255).
pub const EXIT_COULD_NOT_RUN: u8 = 255;
/// `status`: the job has not ended yet (sysexits' EX_TEMPFAIL: ask again later).
pub const EXIT_NOT_ENDED: u8 = 75;

/// A failure with the exit code it maps to.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub error: anyhow::Error,
}

/// Usage or config error: exit 2.
pub(crate) fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_USAGE,
        error: error.into(),
    }
}

/// Runtime error: exit 1.
pub(crate) fn failed(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: error.into(),
    }
}

/// Nothing could be run or asked: exit 255.
pub(crate) fn could_not_run(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: EXIT_COULD_NOT_RUN,
        error: error.into(),
    }
}

pub(crate) type CliResult = Result<u8, Failure>;

/// Parses the process arguments, runs the command, returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);
    match execute(cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            errln!("quickcmd: {}", error_sentence(&failure.error));
            ExitCode::from(failure.code)
        }
    }
}

/// The error and its causes on one line, leaving out a cause that the message before it
/// already quotes (thiserror messages often embed their source).
fn error_sentence(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let part = cause.to_string();
        if part.is_empty() || text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "quickcmd=info",
        _ => "quickcmd=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(stderr_colors())
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Whether stderr may carry ANSI colours: a terminal, `NO_COLOR` unset, `TERM` not dumb.
pub(crate) fn stderr_colors() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var_os("NO_COLOR").is_none()
        && std::env::var("TERM").map(|t| t != "dumb").unwrap_or(true)
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> CliResult {
    let global = cli.global;
    match cli.command {
        Command::Agent(command) => misc::agent(command),
        Command::Config(command) => config::config(global, command),
        Command::Completions { shell } => inventory::completions(shell),
        Command::Inventory {
            targets,
            check,
            names,
            group_names,
        } => inventory::inventory(Context::load(global)?, targets, check, names, group_names),
        Command::Man => misc::man(),
        Command::History {
            limit,
            agent,
            status,
            job_id,
            run_id,
            no_refresh,
        } => {
            let context = Context::load(global)?;
            history::history(
                &context,
                history::HistoryQuery {
                    limit,
                    agent,
                    status,
                    job_id,
                    run_id,
                    refresh: !no_refresh,
                },
            )
        }
        Command::Wait { id, timeout } => runs::wait(Context::load(global)?, id, timeout),
        Command::Rerun {
            failed: _,
            run,
            max_concurrency,
            max_errors,
            no_stream,
        } => runs::rerun(
            Context::load(global)?,
            runs::RerunArgs {
                run,
                max_concurrency,
                max_errors,
                no_stream,
            },
        ),
        Command::Run(args) => run::run(Context::load(global)?, args),
        Command::Submit(args) => run::submit(Context::load(global)?, args),
        Command::Status { targets, job_id } => {
            jobs::status(Context::load(global)?, targets, job_id)
        }
        Command::Logs {
            targets,
            job_id,
            follow,
            since,
        } => jobs::logs(Context::load(global)?, targets, job_id, follow, since),
        Command::Cancel {
            targets,
            job_id,
            run,
        } => match (job_id, run) {
            (_, Some(run)) => runs::cancel_run(Context::load(global)?, run),
            (Some(job_id), None) => jobs::cancel(Context::load(global)?, targets, job_id),
            (None, None) => Err(usage(anyhow::anyhow!("give a JOB_ID or --run RUN_ID"))),
        },
        Command::List {
            targets,
            status,
            limit,
        } => {
            let context = Context::load(global)?;
            if targets.list_hosts {
                return inventory::list_hosts(&context, &targets.selection()).map(|()| 0);
            }
            jobs::list(context, targets, status, limit)
        }
        Command::Health { targets } => {
            let context = Context::load(global)?;
            if targets.list_hosts {
                return inventory::list_hosts(&context, &targets.selection()).map(|()| 0);
            }
            misc::health(context, targets)
        }
        // `--all` is the default; clap refuses it together with `--agent`.
        Command::Audit(AuditCommand::Verify { agent, all: _ }) => {
            audit::verify(Context::load(global)?, agent)
        }
    }
}

/// What every agent-facing command starts from.
pub(crate) struct Context {
    pub(crate) global: GlobalArgs,
    pub(crate) config: ControllerConfig,
    pub(crate) runtime: tokio::runtime::Runtime,
}

impl Context {
    fn load(global: GlobalArgs) -> Result<Context, Failure> {
        let config = ControllerConfig::load_or_default(global.config.as_deref()).map_err(usage)?;
        Context::with_config(global, config)
    }

    fn with_config(global: GlobalArgs, config: ControllerConfig) -> Result<Context, Failure> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|e| failed(anyhow::anyhow!("cannot start the async runtime: {e}")))?;
        Ok(Context {
            global,
            config,
            runtime,
        })
    }

    pub(crate) fn overrides(&self) -> Overrides {
        Overrides {
            controller_id: self.global.controller_id.clone(),
            secret_file: self.global.hmac_secret_file.clone(),
            ca_cert: self.global.ca_cert.clone(),
            insecure: self.global.insecure,
        }
    }

    /// Clients for the selected agents (blocking file reads: call outside `block_on`).
    pub(crate) fn clients(&self, selection: &TargetSelection) -> Result<Vec<Client>, Failure> {
        self.clients_with(selection, self.client_options())
    }

    /// Clients for the selected agents, with `options`.
    pub(crate) fn clients_with(
        &self,
        selection: &TargetSelection,
        options: ClientOptions,
    ) -> Result<Vec<Client>, Failure> {
        let agents = select_agents(&self.config, selection).map_err(usage)?;
        let endpoints =
            resolve_endpoints(&self.config, &agents, &self.overrides()).map_err(usage)?;
        if self.global.insecure {
            errln!(
                "quickcmd: warning: --insecure: agent certificates are not checked; anyone on \
                 the network path can pose as an agent and read the jobs' output"
            );
        }
        build_clients(endpoints, &options).map_err(usage)
    }

    /// Timeouts and retries from the flags; each retry is said on stderr in one line.
    pub(crate) fn client_options(&self) -> ClientOptions {
        ClientOptions {
            connect_timeout: self.global.connect_timeout,
            retry: RetryPolicy::with_retries(self.global.retries as usize),
            on_retry: Some(Arc::new(|notice: &RetryNotice| {
                write_stderr(format!("quickcmd: {notice}\n").as_bytes());
            })),
            ..ClientOptions::default()
        }
    }

    /// The history database path: `--audit-db`, the config's, or the XDG default.
    pub(crate) fn history_path(&self) -> Result<PathBuf, Failure> {
        self.global
            .audit_db
            .clone()
            .or_else(|| self.config.audit_db_path.clone())
            .or_else(default_history_path)
            .ok_or_else(|| {
                usage(anyhow::anyhow!(
                    "no history database path: pass --audit-db, or set HOME or XDG_DATA_HOME"
                ))
            })
    }

    pub(crate) fn json(&self) -> bool {
        self.global.output == OutputFormat::Json
    }
}
