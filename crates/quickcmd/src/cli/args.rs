//! The command line's definition: every command, flag and value parser. Values are
//! checked here with the agents' own rules where they are known, so a mistake is a usage
//! error (exit 2) that names the flag, not a round trip to every agent.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use super::values::{parse_env, parse_history_limit, parse_memory_limit, parse_positive_duration};
use crate::fanout::MaxErrors;
use crate::history::STATUSES as HISTORY_STATUSES;
use crate::output::OutputFormat;
use crate::target::TargetSelection;

use super::values::MAX_LIST_LIMIT;

const AFTER_HELP: &str = "\
The config file (controller.yaml), every command and flag, and the exit codes are
documented in docs/controller.md. Start a config with `quickcmd config init`.

Exit codes: the job's own for one host; 0 all succeeded, 1 some command failed,
255 some host could not run it (unreachable, TLS, auth, refused) for several hosts;
2 usage or config error; 130 interrupted; 141 stdout closed.";

/// Sign, submit, stream and fan out commands to QuickCMD agents.
#[derive(Debug, Parser)]
#[command(
    name = "quickcmd",
    version,
    propagate_version = true,
    max_term_width = 100,
    after_help = AFTER_HELP
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
    /// Give up connecting to an agent after this long (90, 10s, 1m)
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub connect_timeout: Duration,
    /// Retries of a request after a network error, 5xx or 429 (waits 1s, 2s, 4s, then 8s)
    #[arg(long, global = true, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=10))]
    pub retries: u32,
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
    /// Agent by inventory name, https:// URL, or pattern: web-*, web-[1-3], db-[01-12,20];
    /// !PATTERN excludes (repeatable)
    #[arg(long = "agent", short = 'a', value_name = "URL|NAME|PATTERN")]
    pub agents: Vec<String>,
    /// Inventory agents in this group (repeatable: any of them)
    #[arg(long = "group", short = 'g', value_name = "GROUP")]
    pub groups: Vec<String>,
    /// Inventory agents whose labels match: env=prod,role!=db,canary,!legacy (repeatable:
    /// all of them)
    #[arg(long = "label", short = 'l', value_name = "SELECTOR")]
    pub labels: Vec<String>,
    /// Every inventory agent
    #[arg(long)]
    pub all: bool,
    /// Leave out agents whose name matches (name or pattern; repeatable)
    #[arg(long, short = 'x', value_name = "PATTERN")]
    pub exclude: Vec<String>,
    /// Print the selected agents (name and URL) and stop; nothing is sent
    #[arg(long)]
    pub list_hosts: bool,
}

impl TargetArgs {
    pub(crate) fn selection(&self) -> TargetSelection {
        TargetSelection {
            agents: self.agents.clone(),
            groups: self.groups.clone(),
            labels: self.labels.clone(),
            all: self.all,
            exclude: self.exclude.clone(),
        }
    }
}

/// Output shape of `run` and `submit`.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Output shape")]
pub struct ShapeArgs {
    /// Name-prefixed lines and a summary (and exit 0/1/255) even for one named host
    #[arg(long, conflicts_with = "no_prefix")]
    pub prefix: bool,
    /// The job's own bytes without prefixes or summary, as ssh prints them (a single
    /// host then exits with the job's own code)
    #[arg(long)]
    pub no_prefix: bool,
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
    /// Kill the job after this long (90 = seconds, 5m, 1h); it then exits 124
    #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
    pub timeout: Option<Duration>,
    /// Environment variable for the job (repeatable); NAME as the agent requires it
    #[arg(long = "env", short = 'e', value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
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
    /// Memory limit (bytes, or 512M, 1G; at least 6M)
    #[arg(long, value_name = "SIZE", value_parser = parse_memory_limit)]
    pub memory_limit: Option<u64>,
    /// Working directory inside the sandbox
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// How long the job may wait on the agent before it must start (300 = seconds, 5m)
    #[arg(long, value_name = "DURATION", default_value = "300", value_parser = parse_positive_duration)]
    pub ttl: Duration,
    /// Send no standard input, like `ssh -n` (without it, a stdin that is not a terminal
    /// is sent to the command, at most 512 KiB; every target gets the same bytes)
    #[arg(short = 'n', long = "no-stdin")]
    pub no_stdin: bool,
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
    pub shape: ShapeArgs,
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
    /// Give up on a host (and cancel its job) after this long (seconds, or 10m)
    /// [default: ttl + timeout (or a day) + 2 minutes]
    #[arg(long, help_heading = "Fan-out", value_name = "DURATION", value_parser = parse_positive_duration)]
    pub wait_timeout: Option<Duration>,
}

/// `quickcmd submit`.
#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub targets: TargetArgs,
    #[command(flatten)]
    pub shape: ShapeArgs,
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
    /// The controller's own config file: start one, or show what is in force
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Run a command on agents, stream its output live, wait for the result
    Run(RunArgs),
    /// Submit a job and print its id without waiting
    Submit(SubmitArgs),
    /// Show a job's status and result; exits with the job's outcome
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
        /// Keep following until the job ends, then exit with its outcome
        #[arg(long, short = 'f')]
        follow: bool,
        /// Only frames after this sequence number (resume an earlier read)
        #[arg(long, default_value_t = 0, value_name = "SEQ")]
        since: u64,
    },
    /// Cancel a pending or running job, or every open job of a run (--run)
    Cancel {
        #[command(flatten)]
        targets: TargetArgs,
        /// The job id
        #[arg(required_unless_present = "run", conflicts_with = "run")]
        job_id: Option<String>,
        /// Cancel every job of this run that has not ended (`last`: the latest run)
        #[arg(long, value_name = "RUN_ID")]
        run: Option<String>,
    },
    /// Wait for a job or a whole run to end; exits as `run` would have
    Wait {
        /// A job id or a run id from the history (`last`: the latest run)
        id: String,
        /// Give up after this long (exit 75, the job goes on)
        #[arg(long, value_name = "DURATION", value_parser = parse_positive_duration)]
        timeout: Option<Duration>,
    },
    /// Run a run's command again on the hosts where it did not succeed
    Rerun {
        /// Only the hosts that did not succeed (failed, unreachable, refused, cancelled,
        /// skipped); required, as re-running everywhere is `run` again
        #[arg(long, required = true)]
        failed: bool,
        /// The run to re-run (`last`: the latest run)
        #[arg(value_name = "RUN_ID")]
        run: String,
        /// Hosts running at once
        #[arg(long, help_heading = "Fan-out", value_name = "N", default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        max_concurrency: u32,
        /// Failed hosts tolerated before no new host starts: N or P%
        #[arg(
            long,
            help_heading = "Fan-out",
            default_value = "0",
            value_name = "N|P%"
        )]
        max_errors: MaxErrors,
        /// Poll for the result instead of streaming output live
        #[arg(long, help_heading = "Fan-out")]
        no_stream: bool,
    },
    /// List this controller's jobs on agents, newest first
    List {
        #[command(flatten)]
        targets: TargetArgs,
        /// Only jobs with this status
        #[arg(long, value_parser = ["pending", "running", "completed", "failed", "rejected"])]
        status: Option<String>,
        /// At most this many jobs per agent (1-1000, the agents' limit)
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=MAX_LIST_LIMIT))]
        limit: u32,
    },
    /// Check agents: health, version, running jobs, round-trip time
    Health {
        #[command(flatten)]
        targets: TargetArgs,
    },
    /// Show what this controller ran, from its history database
    History {
        /// At most this many rows (at least 1)
        #[arg(long, default_value_t = 20, value_parser = parse_history_limit)]
        limit: u32,
        /// Only runs on this agent (by name)
        #[arg(long)]
        agent: Option<String>,
        /// Only runs with this status
        #[arg(long, value_parser = HISTORY_STATUSES)]
        status: Option<String>,
        /// Only this job
        #[arg(long = "job", value_name = "JOB_ID")]
        job_id: Option<String>,
        /// Only the jobs of this run (`last`: the latest run)
        #[arg(long = "run", value_name = "RUN_ID")]
        run_id: Option<String>,
        /// Show the rows as stored, without asking agents about jobs that had not ended
        #[arg(long)]
        no_refresh: bool,
    },
    /// The inventory: agents with their URL, groups and labels; --check probes each
    Inventory {
        #[command(flatten)]
        targets: TargetArgs,
        /// Ask each agent's /health (reachable, version, round-trip time)
        #[arg(long, conflicts_with_all = ["names", "group_names"])]
        check: bool,
        /// Print only the agent names, one a line (for shell completion)
        #[arg(long, conflicts_with = "group_names")]
        names: bool,
        /// Print only the group names, one a line (for shell completion)
        #[arg(long)]
        group_names: bool,
    },
    /// Check agents' audit logs against the witnesses this controller kept
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Print shell completions (host and group names are completed from the inventory)
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Fetch each agent's audit chain from the oldest witness to its head and check every
    /// link and witness. Exit 0 intact, 1 tampered, 255 could not check
    Verify {
        /// Only this agent (inventory name or URL, as the history records it)
        #[arg(long, value_name = "NAME", conflicts_with = "all")]
        agent: Option<String>,
        /// Every agent this controller holds witnesses of (the default)
        #[arg(long)]
        all: bool,
    },
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

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Write a commented starting controller.yaml (to --config, or the default path)
    Init {
        /// Replace an existing file
        #[arg(long)]
        force: bool,
        /// Print it on stdout instead of writing a file
        #[arg(long)]
        stdout: bool,
    },
    /// Show the config in force: file, defaults, command-line overrides, every agent
    /// (secrets are never printed; secret files are named, not read)
    Show,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

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
        assert_eq!(args.job.timeout, Some(Duration::from_secs(5)));
        assert_eq!(args.max_errors, MaxErrors::Percent(10));
        assert_eq!(args.max_concurrency, 50);
        assert_eq!(cli.global.output, OutputFormat::Json);
    }

    #[test]
    fn units_and_env() {
        let cli = Cli::try_parse_from([
            "quickcmd",
            "run",
            "-a",
            "a",
            "--timeout",
            "5m",
            "--memory-limit",
            "512M",
            "--ttl",
            "2m",
            "-e",
            "_A1=x=y",
            "-e",
            "EMPTY=",
            "--connect-timeout",
            "3s",
            "--retries",
            "0",
            "--",
            "true",
        ])
        .expect("parses");
        let Command::Run(args) = cli.command else {
            panic!("not run");
        };
        assert_eq!(args.job.timeout, Some(Duration::from_secs(300)));
        assert_eq!(args.job.memory_limit, Some(512 * 1024 * 1024));
        assert_eq!(args.job.ttl, Duration::from_secs(120));
        assert_eq!(
            args.job.env,
            vec![
                ("_A1".into(), "x=y".into()),
                ("EMPTY".into(), String::new())
            ]
        );
        assert_eq!(cli.global.connect_timeout, Duration::from_secs(3));
        assert_eq!(cli.global.retries, 0);
    }

    #[test]
    fn usage_errors() {
        for args in [
            vec!["quickcmd", "run", "--agent", "a"],
            vec!["quickcmd", "run", "--max-concurrency", "0", "--", "true"],
            vec!["quickcmd", "run", "--max-errors", "x", "--", "true"],
            vec!["quickcmd", "agent", "gen-cert", "--out", "/tmp/x"],
            vec!["quickcmd", "history", "--status", "bogus"],
            vec!["quickcmd", "history", "--limit", "0"],
            vec!["quickcmd", "list", "--all", "--limit", "5000"],
            vec!["quickcmd", "list", "--all", "--limit", "0"],
            vec!["quickcmd", "run", "-a", "a", "-e", "1BAD=x", "--", "true"],
            vec!["quickcmd", "run", "-a", "a", "-e", "NOVALUE", "--", "true"],
            vec!["quickcmd", "run", "-a", "a", "--timeout", "0", "--", "true"],
            vec![
                "quickcmd",
                "run",
                "-a",
                "a",
                "--timeout",
                "5x",
                "--",
                "true",
            ],
            vec![
                "quickcmd",
                "run",
                "-a",
                "a",
                "--memory-limit",
                "1M",
                "--",
                "true",
            ],
            vec![
                "quickcmd",
                "run",
                "-a",
                "a",
                "--memory-limit",
                "1.5G",
                "--",
                "true",
            ],
            vec![
                "quickcmd",
                "run",
                "-a",
                "a",
                "--retries",
                "11",
                "--",
                "true",
            ],
            vec![
                "quickcmd",
                "run",
                "-a",
                "a",
                "--connect-timeout",
                "0",
                "--",
                "true",
            ],
        ] {
            let error = Cli::try_parse_from(&args).expect_err("usage error");
            assert_eq!(error.exit_code(), 2, "{args:?}");
        }
    }
}
