//! The `quickcmd` command line: argument definitions, setup shared by the commands, and
//! the mapping of failures to the documented exit codes (job's own code for one host,
//! 0/1 for several, 2 for usage and config errors, 130 after Ctrl-C).

mod jobs;
mod misc;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::client::{Client, ClientOptions};
use crate::config::{default_history_path, ControllerConfig};
use crate::fanout::MaxErrors;
use crate::output::OutputFormat;
use crate::target::{build_clients, resolve_endpoints, select_agents, Overrides, TargetSelection};

/// Exit code for usage and config errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit code after Ctrl-C.
pub const EXIT_INTERRUPTED: u8 = 130;

/// Sign, submit, stream and fan out commands to QuickCMD agents.
#[derive(Debug, Parser)]
#[command(
    name = "quickcmd",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// Controller config file [default: $XDG_CONFIG_HOME/quickcmd/controller.yaml]
    #[arg(long, global = true, env = "QUICKCMD_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// History database [default: $XDG_DATA_HOME/quickcmd/controller-audit.db]
    #[arg(long, global = true, value_name = "FILE")]
    pub audit_db: Option<PathBuf>,
    /// Controller id to present (an agent's own setting in the inventory wins)
    #[arg(long, global = true, env = "QUICKCMD_CONTROLLER_ID", value_name = "ID")]
    pub controller_id: Option<String>,
    /// File holding the HMAC secret (an agent's own secret file in the inventory wins)
    #[arg(long, global = true, value_name = "FILE")]
    pub hmac_secret_file: Option<PathBuf>,
    /// Trust exactly the certificates in this PEM file (the agent's own, or its CA)
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Accept any agent certificate (prints a warning every time)
    #[arg(long, global = true)]
    pub insecure: bool,
    /// Output format
    #[arg(long, short = 'o', global = true, value_enum, default_value = "text")]
    pub output: OutputFormat,
    /// More diagnostics on stderr (-v, -vv); RUST_LOG overrides
    #[arg(long, short = 'v', global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

/// Which agents to talk to.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Targets")]
pub struct TargetArgs {
    /// Agent by inventory name or https:// URL (repeatable)
    #[arg(long = "agent", short = 'a', value_name = "URL|NAME")]
    pub agents: Vec<String>,
    /// Inventory agents in this group (repeatable: any of them)
    #[arg(long = "group", short = 'g', value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Inventory agents with this label (repeatable: all of them)
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Every inventory agent
    #[arg(long)]
    pub all: bool,
}

impl TargetArgs {
    fn selection(&self) -> TargetSelection {
        TargetSelection {
            agents: self.agents.clone(),
            groups: self.groups.clone(),
            labels: self.labels.clone(),
            all: self.all,
        }
    }
}

/// What to run and how.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Job")]
pub struct JobArgs {
    /// Why this runs, recorded by the agent [default: the command]
    #[arg(long)]
    pub prompt: Option<String>,
    /// Sandbox image (must be allowed by the agent)
    #[arg(long)]
    pub image: Option<String>,
    /// Kill the job after this many seconds (exit code 124)
    #[arg(long, value_name = "SECONDS")]
    pub timeout: Option<u64>,
    /// Environment variable for the job (repeatable)
    #[arg(long = "env", short = 'e', value_name = "K=V")]
    pub env: Vec<String>,
    /// Give the job network access (needs the agent's sandbox:network grant)
    #[arg(long)]
    pub network: bool,
    /// Mount one of the agent's named mounts (repeatable)
    #[arg(long = "mount", value_name = "NAME")]
    pub mounts: Vec<String>,
    /// Scope the job requires (repeatable)
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// CPU limit in cores
    #[arg(long, value_name = "CORES")]
    pub cpu_limit: Option<f64>,
    /// Memory limit in bytes
    #[arg(long, value_name = "BYTES")]
    pub memory_limit: Option<i64>,
    /// Working directory inside the sandbox
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// Seconds the job may wait on the agent before it must start
    #[arg(long, value_name = "SECONDS", default_value_t = 300)]
    pub ttl: u64,
    /// The command, after `--`; several words are joined with spaces, like ssh does
    #[arg(last = true, required = true, num_args = 1.., value_name = "COMMAND")]
    pub command: Vec<String>,
}

/// `quickcmd run`.
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub job: JobArgs,
    /// Hosts running at once
    #[arg(long, help_heading = "Fan-out", value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_concurrency: u32,
    /// Failed hosts tolerated before no new host starts: N or P%
    #[arg(
        long,
        help_heading = "Fan-out",
        default_value = "0",
        value_name = "N|P%"
    )]
    pub max_errors: MaxErrors,
    /// Poll for the result instead of streaming output live
    #[arg(long, help_heading = "Fan-out")]
    pub no_stream: bool,
    /// Give up on a host (and cancel its job) after this many seconds
    /// [default: ttl + timeout (or a day) + 2 minutes]
    #[arg(long, help_heading = "Fan-out", value_name = "SECONDS")]
    pub wait_timeout: Option<u64>,
}

/// `quickcmd submit`.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub job: JobArgs,
    /// Hosts submitted to at once
    #[arg(long, help_heading = "Fan-out", value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub max_concurrency: u32,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Agent setup helpers: secrets and certificates
    #[command(subcommand)]
    Agent(AgentCommand),
    /// Run a command on agents, stream its output live, wait for the result
    Run(RunArgs),
    /// Submit a job and print its id without waiting
    Submit(SubmitArgs),
    /// Show a job's status and result
    Status {
        #[command(flatten)]
        targets: TargetArgs,
        /// The job id
        job_id: String,
    },
    /// Print a job's output
    Logs {
        #[command(flatten)]
        targets: TargetArgs,
        /// The job id
        job_id: String,
        /// Keep following until the job ends
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only frames after this sequence number (resume an earlier read)
        #[arg(long, default_value_t = 0, value_name = "SEQ")]
        since: u64,
    },
    /// Cancel a pending or running job
    Cancel {
        #[command(flatten)]
        targets: TargetArgs,
        /// The job id
        job_id: String,
    },
    /// List this controller's jobs on agents, newest first
    List {
        #[command(flatten)]
        targets: TargetArgs,
        /// Only jobs with this status
        #[arg(long, value_parser = ["pending", "running", "completed", "failed", "rejected"])]
        status: Option<String>,
        /// At most this many jobs per agent
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Check agents: health, version, running jobs, round-trip time
    Health {
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Show what this controller ran, from its history database
    History {
        /// At most this many rows
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Only runs on this agent (by name)
        #[arg(long)]
        agent: Option<String>,
        /// Only runs with this status
        #[arg(long)]
        status: Option<String>,
        /// Only this job
        #[arg(long = "job", value_name = "JOB_ID")]
        job_id: Option<String>,
    },
    /// Print shell completions
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
}

#[derive(Debug, Subcommand)]
pub enum AgentCommand {
    /// Print a new random HMAC secret (32 bytes as 64 hex characters)
    GenKey,
    /// Write a self-signed certificate and key for an agent (agent-cert.pem, agent-key.pem)
    GenCert {
        /// DNS name or IP address the agent is reached by (repeatable)
        #[arg(long = "host", required = true, value_name = "NAME")]
        hosts: Vec<String>,
        /// Directory to write into
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Days the certificate is valid
        #[arg(long, default_value_t = 825)]
        days: u32,
        /// Replace existing files
        #[arg(long)]
        force: bool,
    },
}

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

pub(crate) type CliResult = Result<u8, Failure>;

/// Parses the process arguments, runs the command, returns the exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);
    match execute(cli) {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("quickcmd: {:#}", failure.error);
            ExitCode::from(failure.code)
        }
    }
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
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

/// Runs a parsed command line.
pub fn execute(cli: Cli) -> CliResult {
    let global = cli.global;
    match cli.command {
        Command::Agent(command) => misc::agent(command),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "quickcmd",
                &mut std::io::stdout(),
            );
            Ok(0)
        }
        Command::Man => misc::man(),
        Command::History {
            limit,
            agent,
            status,
            job_id,
        } => {
            let context = Context::load(global)?;
            misc::history(&context, limit, agent, status, job_id)
        }
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
        Command::Cancel { targets, job_id } => {
            jobs::cancel(Context::load(global)?, targets, job_id)
        }
        Command::List {
            targets,
            status,
            limit,
        } => jobs::list(Context::load(global)?, targets, status, limit),
        Command::Health { targets } => misc::health(Context::load(global)?, targets),
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

    fn overrides(&self) -> Overrides {
        Overrides {
            controller_id: self.global.controller_id.clone(),
            secret_file: self.global.hmac_secret_file.clone(),
            ca_cert: self.global.ca_cert.clone(),
            insecure: self.global.insecure,
        }
    }

    /// Clients for the selected agents (blocking file reads: call outside `block_on`).
    pub(crate) fn clients(&self, selection: &TargetSelection) -> Result<Vec<Client>, Failure> {
        let agents = select_agents(&self.config, selection).map_err(usage)?;
        let endpoints =
            resolve_endpoints(&self.config, &agents, &self.overrides()).map_err(usage)?;
        if self.global.insecure {
            eprintln!(
                "quickcmd: warning: --insecure: agent certificates are not checked; anyone on \
                 the network path can pose as an agent and read the jobs' output"
            );
        }
        build_clients(endpoints, &ClientOptions::default()).map_err(usage)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_parses_targets_options_and_command() {
        let cli = Cli::try_parse_from([
            "quickcmd",
            "run",
            "--agent",
            "a",
            "-g",
            "web",
            "--label",
            "env=prod",
            "--timeout",
            "5",
            "--env",
            "K=V",
            "--max-errors",
            "10%",
            "--output",
            "json",
            "--",
            "echo",
            "hi",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(args.targets.agents, vec!["a"]);
        assert_eq!(args.targets.groups, vec!["web"]);
        assert_eq!(args.job.command, vec!["echo", "hi"]);
        assert_eq!(args.job.timeout, Some(5));
        assert_eq!(args.max_errors, MaxErrors::Percent(10));
        assert_eq!(args.max_concurrency, 50);
        assert_eq!(cli.global.output, OutputFormat::Json);
    }

    #[test]
    fn usage_errors() {
        for args in [
            vec!["quickcmd", "run", "--agent", "a"],
            vec!["quickcmd", "run", "--max-concurrency", "0", "--", "true"],
            vec!["quickcmd", "run", "--max-errors", "x", "--", "true"],
            vec!["quickcmd", "agent", "gen-cert", "--out", "/tmp/x"],
        ] {
            let error = Cli::try_parse_from(&args).expect_err("usage error");
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }
}
