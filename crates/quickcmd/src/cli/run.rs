//! `quickcmd run` and `quickcmd submit`: sign per target, submit, follow, report; Ctrl-C
//! cancels every job we started.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Read};
use std::time::Duration;

use anyhow::anyhow;
use quickcmd_protocol::SandboxRequest;

use super::{
    could_not_run, failed, usage, CliResult, Context, JobArgs, RunArgs, ShapeArgs, SubmitArgs,
    TargetArgs, EXIT_COULD_NOT_RUN, EXIT_INTERRUPTED,
};
use crate::client::Client;
use crate::fanout::{cancel_started, run_all, MaxErrors, RunOptions, StartedJobs};
use crate::history::{default_requested_by, History, Invocation, InvocationTarget};
use crate::job::{new_job_id, JobSpec};
use crate::output::{errln, outln, spawn_printer, summary_json, OutputFormat, PrinterConfig};
use crate::report::{HostReport, HostStatus, RunEvent, Tally};

/// How long Ctrl-C waits for the agents to take the cancels.
const CANCEL_LIMIT: Duration = Duration::from_secs(10);

pub(super) fn run(context: Context, args: RunArgs) -> CliResult {
    let spec = job_spec(&args.job)?;
    let wait_limit = args.wait_timeout.unwrap_or_else(|| {
        args.job.ttl
            + args.job.timeout.unwrap_or(Duration::from_secs(24 * 3600))
            + Duration::from_secs(120)
    });
    let options = RunOptions {
        max_concurrency: args.max_concurrency as usize,
        max_errors: args.max_errors,
        stream: !args.no_stream,
        wait_limit: Some(wait_limit),
        submit_only: false,
        ..RunOptions::default()
    };
    let shape = Shape::of(&args.targets, &args.shape);
    let Some(clients) = targets_or_list(&context, &args.targets)? else {
        return Ok(0);
    };
    let spec = with_requester_and_input(&context, &args.job, spec)?;
    fan_out(&context, clients, spec, options, shape, ("run", None))
}

pub(super) fn submit(context: Context, args: SubmitArgs) -> CliResult {
    let spec = job_spec(&args.job)?;
    let options = RunOptions {
        max_concurrency: args.max_concurrency as usize,
        max_errors: MaxErrors::Percent(100),
        stream: false,
        wait_limit: None,
        submit_only: true,
        ..RunOptions::default()
    };
    let shape = Shape::of(&args.targets, &args.shape);
    let Some(clients) = targets_or_list(&context, &args.targets)? else {
        return Ok(0);
    };
    let spec = with_requester_and_input(&context, &args.job, spec)?;
    fan_out(&context, clients, spec, options, shape, ("submit", None))
}

/// The clients of the selected targets; with `--list-hosts`, prints them and returns
/// `None` (nothing runs).
fn targets_or_list(
    context: &Context,
    targets: &TargetArgs,
) -> Result<Option<Vec<Client>>, super::Failure> {
    if targets.list_hosts {
        super::inventory::list_hosts(context, &targets.selection())?;
        return Ok(None);
    }
    context.clients(&targets.selection()).map(Some)
}

/// How a run's output looks and which exit codes it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shape {
    /// Like ssh: the job's own bytes, no prefix, no summary; one host exits with the
    /// job's own code. Only when exactly one host is named with `-a` (or `--no-prefix`).
    Bare,
    /// Prefixed lines and a summary; exit 0, 1 or 255 (see docs/controller.md). Any
    /// group, label, pattern or `--all` selector, even when it matches one host.
    Fanout,
}

impl Shape {
    pub(super) fn of(targets: &TargetArgs, shape: &ShapeArgs) -> Shape {
        if shape.no_prefix {
            return Shape::Bare;
        }
        if shape.prefix {
            return Shape::Fanout;
        }
        let selection = targets.selection();
        if selection.names_one_host() {
            Shape::Bare
        } else {
            Shape::Fanout
        }
    }
}

/// `spec` with who it is for (the config's `requested_by`, else `<login>@<hostname>`) and
/// our standard input, unless `-n` or it is a terminal. Read once every other check has
/// passed but before any target is contacted, so input over the limit is refused with
/// nothing sent.
fn with_requester_and_input(
    context: &Context,
    args: &JobArgs,
    mut spec: JobSpec,
) -> Result<JobSpec, super::Failure> {
    spec.requested_by = Some(requester(context));
    if !args.no_stdin && !std::io::stdin().is_terminal() {
        spec.stdin = read_stdin()?;
    }
    Ok(spec)
}

/// Who a job is for: the config's `requested_by`, else `<login>@<hostname>`.
pub(super) fn requester(context: &Context) -> String {
    context
        .config
        .requested_by
        .clone()
        .unwrap_or_else(default_requested_by)
}

/// Our standard input, up to the protocol's limit: `None` when it is empty.
fn read_stdin() -> Result<Option<Vec<u8>>, super::Failure> {
    let limit = quickcmd_protocol::MAX_STDIN_BYTES;
    let mut bytes = Vec::new();
    std::io::stdin()
        .lock()
        .take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| {
            usage(anyhow!(
                "cannot read standard input: {e}; pass -n to send none"
            ))
        })?;
    if bytes.len() > limit {
        return Err(usage(anyhow!(
            "standard input is more than {limit} bytes (512 KiB), the most an agent takes; \
             nothing was sent (copy large files with a mount, or pass -n to send no input)"
        )));
    }
    Ok((!bytes.is_empty()).then_some(bytes))
}

/// Builds the job from the command line.
pub(super) fn job_spec(args: &JobArgs) -> Result<JobSpec, super::Failure> {
    let command = args.command.join(" ");
    if command.trim().is_empty() {
        return Err(usage(anyhow!("the command after `--` is empty")));
    }
    // Flags are parsed and checked by clap (see `args.rs`); what is left are rules that
    // need no parser.
    let env: BTreeMap<String, String> = args.env.iter().cloned().collect();
    if args.cpu_limit.is_some_and(|c| !c.is_finite() || c <= 0.0) {
        return Err(usage(anyhow!(
            "--cpu-limit must be a positive number of cores"
        )));
    }
    let memory_limit = args
        .memory_limit
        .map(|bytes| {
            i64::try_from(bytes).map_err(|_| usage(anyhow!("--memory-limit is too large")))
        })
        .transpose()?;
    let sandbox = SandboxRequest {
        image: args.image.clone(),
        timeout_seconds: args.timeout.map(|t| t.as_secs()),
        cpu_limit: args.cpu_limit,
        memory_limit,
        network: args.network.then_some(true),
        mounts: (!args.mounts.is_empty()).then(|| args.mounts.clone()),
        env: (!env.is_empty()).then_some(env),
        workdir: args.workdir.clone(),
    };
    Ok(JobSpec {
        command,
        prompt: args.prompt.clone(),
        required_scopes: args.scopes.clone(),
        sandbox: (sandbox != SandboxRequest::default()).then_some(sandbox),
        ttl: args.ttl,
        stdin: None,
        requested_by: None,
    })
}

/// Runs `spec` on `clients` as a new run (`kind`: run, submit or rerun; `rerun_of`: the
/// run it repeats), recorded in the history before anything is sent.
pub(super) fn fan_out(
    context: &Context,
    clients: Vec<Client>,
    spec: JobSpec,
    mut options: RunOptions,
    shape: Shape,
    (kind, rerun_of): (&str, Option<String>),
) -> CliResult {
    let history_path = context.history_path()?;
    let format = context.global.output;
    let single = shape == Shape::Bare && clients.len() == 1;
    let hosts: Vec<String> = clients.iter().map(|c| c.name().to_string()).collect();
    let run_id = new_job_id();
    options.run_id = Some(run_id.clone());
    options.announce_queue = single && format == OutputFormat::Text && !options.submit_only;
    let targets: Vec<InvocationTarget> = clients
        .iter()
        .map(|c| InvocationTarget {
            name: c.name().to_string(),
            url: c.url().to_string(),
        })
        .collect();
    let invocation = Invocation::new(&run_id, kind, &spec, targets, rerun_of);
    context.runtime.block_on(async {
        // Nothing runs unrecorded: without the history, nothing could be run.
        let history = History::open(&history_path).await.map_err(could_not_run)?;
        history
            .record_invocation(&invocation)
            .await
            .map_err(could_not_run)?;
        tracing::info!("run {run_id}");
        let mut printer_config = PrinterConfig::for_terminal(hosts, format);
        printer_config.multi = shape == Shape::Fanout;
        printer_config.progress &= printer_config.multi;
        printer_config.run_id = Some(run_id.clone());
        let (events, printer) = spawn_printer(printer_config)
            .map_err(|e| could_not_run(anyhow!("cannot start the output thread: {e}")))?;
        let started = StartedJobs::default();
        let mut running = Box::pin(run_all(
            &clients,
            &spec,
            &options,
            Some(history.clone()),
            events.clone(),
            started.clone(),
        ));
        let outcome = tokio::select! {
            reports = &mut running => Some(reports),
            _ = tokio::signal::ctrl_c() => None,
        };
        // Dropping the run aborts every host task.
        drop(running);
        let interrupted = outcome.is_none();
        if interrupted {
            interrupt(&clients, &started, &history, &events).await;
        }
        drop(events);
        let reports = tokio::task::spawn_blocking(move || printer.join())
            .await
            .map_err(|e| failed(anyhow!("output thread failed: {e}")))?
            .map_err(|_| failed(anyhow!("output thread panicked")))?;
        let code = if interrupted {
            EXIT_INTERRUPTED
        } else {
            exit_code(single, &reports)
        };
        match format {
            OutputFormat::Json => {
                outln!("{}", summary_json(Some(&run_id), &reports, code));
            }
            OutputFormat::Text if shape == Shape::Fanout => {
                outln!("run {run_id}  (quickcmd history --run {run_id})");
            }
            OutputFormat::Text => {}
        }
        Ok(code)
    })
}

/// The exit code of a finished run: for one host the job's own, as ssh does (255 when it
/// could not run); for several, 0 when all succeeded, 255 when some host could not run
/// it (unreachable, refused), else 1 when some command failed.
pub(super) fn exit_code(single: bool, reports: &[HostReport]) -> u8 {
    if single {
        return reports
            .first()
            .map(HostReport::single_host_exit_code)
            .unwrap_or(EXIT_COULD_NOT_RUN);
    }
    if reports.is_empty() {
        return EXIT_COULD_NOT_RUN;
    }
    let tallies: Vec<Tally> = reports.iter().map(HostReport::tally).collect();
    if tallies
        .iter()
        .any(|t| matches!(t, Tally::Unreachable | Tally::Refused))
    {
        EXIT_COULD_NOT_RUN
    } else if tallies.iter().all(|t| *t == Tally::Succeeded) {
        0
    } else {
        1
    }
}

/// Ctrl-C: cancel every job we started, say which, and let a second Ctrl-C leave at once.
async fn interrupt(
    clients: &[Client],
    started: &StartedJobs,
    history: &History,
    events: &tokio::sync::mpsc::Sender<RunEvent>,
) {
    tokio::spawn(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            errln!("quickcmd: interrupted again; leaving without waiting for the cancels");
            std::process::exit(i32::from(EXIT_INTERRUPTED));
        }
    });
    let open = started.open();
    let _ = events
        .send(RunEvent::Message {
            message: format!(
                "interrupted; cancelling {} job(s) this run started",
                open.len()
            ),
        })
        .await;
    for (job, outcome) in cancel_started(clients, started, Some(history), CANCEL_LIMIT).await {
        let Some(client) = clients.get(job.host) else {
            continue;
        };
        let (message, error) = match &outcome {
            Ok(()) => (format!("cancelled job {}", job.job_id), None),
            Err(error) => (
                format!("could not cancel job {}: {error}", job.job_id),
                Some(error.to_string()),
            ),
        };
        let _ = events
            .send(RunEvent::Notice {
                host: job.host,
                message,
            })
            .await;
        let report = HostReport {
            job_id: Some(job.job_id.clone()),
            reason: Some("interrupted".into()),
            error,
            ..HostReport::new(client, HostStatus::Cancelled)
        };
        let _ = events
            .send(RunEvent::Finished {
                host: job.host,
                report,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn job_args(extra: &[&str]) -> JobArgs {
        let mut argv = vec!["quickcmd", "run", "--agent", "a"];
        argv.extend_from_slice(extra);
        match super::super::Cli::try_parse_from(argv)
            .expect("parses")
            .command
        {
            super::super::Command::Run(args) => args.job,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn spec_from_arguments() {
        let spec = job_spec(&job_args(&[
            "--image",
            "img",
            "--timeout",
            "5",
            "--env",
            "A=1",
            "--env",
            "B=x=y",
            "--network",
            "--mount",
            "data",
            "--scope",
            "s1",
            "--",
            "echo",
            "a b",
        ]))
        .expect("spec");
        assert_eq!(spec.command, "echo a b");
        assert_eq!(spec.required_scopes, vec!["s1"]);
        let sandbox = spec.sandbox.expect("sandbox");
        assert_eq!(sandbox.image.as_deref(), Some("img"));
        assert_eq!(sandbox.timeout_seconds, Some(5));
        assert_eq!(sandbox.network, Some(true));
        assert_eq!(sandbox.mounts, Some(vec!["data".to_string()]));
        let env = sandbox.env.expect("env");
        assert_eq!(env.get("B").map(String::as_str), Some("x=y"));

        let plain = job_spec(&job_args(&["--", "true"])).expect("spec");
        assert_eq!(plain.sandbox, None);
        let sized = job_spec(&job_args(&[
            "--memory-limit",
            "512M",
            "--timeout",
            "2m",
            "--",
            "true",
        ]))
        .expect("spec");
        let sandbox = sized.sandbox.expect("sandbox");
        assert_eq!(sandbox.memory_limit, Some(512 * 1024 * 1024));
        assert_eq!(sandbox.timeout_seconds, Some(120));
    }

    #[test]
    fn exit_codes() {
        let report = |status, exit_code| HostReport {
            exit_code,
            ..HostReport::empty("a", "https://a:1/", status)
        };
        use HostStatus::*;
        for (status, code, expected) in [
            (Completed, Some(0), 0),
            (Completed, Some(3), 3),
            (Failed, Some(124), 124),
            (Failed, Some(137), 137),
            (Failed, None, 255),
            (Completed, Some(300), 1),
            (Unreachable, None, 255),
            (Refused, None, 255),
            (Rejected, None, 255),
            (Error, None, 255),
            (Cancelled, None, 130),
            (Submitted, None, 0),
        ] {
            assert_eq!(
                exit_code(true, &[report(status, code)]),
                expected,
                "{status:?} {code:?}"
            );
        }
        let ok = || report(Completed, Some(0));
        for (others, expected) in [
            (vec![ok()], 0),
            (vec![report(Completed, Some(1))], 1),
            (vec![report(Failed, Some(124))], 1),
            (vec![report(Cancelled, None)], 1),
            (vec![report(Unreachable, None)], 255),
            (vec![report(Completed, Some(1)), report(Refused, None)], 255),
            (vec![report(Rejected, None), report(Skipped, None)], 255),
            (vec![report(Failed, Some(1)), report(Skipped, None)], 1),
        ] {
            let mut reports = vec![ok()];
            reports.extend(others);
            assert_eq!(exit_code(false, &reports), expected, "{reports:?}");
        }
    }
}
