//! `agent gen-key`, `agent gen-cert`, `health` and `man`.

use anyhow::anyhow;
use futures_util::stream::{self, StreamExt};
use serde_json::json;

use super::{failed, usage, AgentCommand, Cli, CliResult, Context, TargetArgs};
use crate::client::{AgentEndpoint, Client, ClientError, HealthReport};
use crate::output::{out, outln, table, truncate, write_stdout};
use crate::secret::generate_key;
use crate::target::{
    build_clients, resolve_endpoints, select_agents, trust_for, Overrides, TargetError,
};
use crate::tls::{generate_cert, write_cert_files};
use crate::Secret;

pub(super) fn agent(command: AgentCommand) -> CliResult {
    match command {
        AgentCommand::GenKey => {
            outln!("{}", generate_key());
            Ok(0)
        }
        AgentCommand::GenCert {
            hosts,
            out,
            days,
            force,
        } => {
            if days == 0 {
                return Err(usage(anyhow!("--days must be at least 1")));
            }
            let generated = generate_cert(&hosts, days).map_err(usage)?;
            let (cert, key) = write_cert_files(&out, &generated, force).map_err(failed)?;
            outln!("wrote {} and {}", cert.display(), key.display());
            outln!(
                "agent config: tls_cert_file: {}  tls_key_file: {}",
                cert.display(),
                key.display()
            );
            outln!(
                "controller: pin it with --ca-cert {} (or ca_cert: in controller.yaml)",
                cert.display()
            );
            Ok(0)
        }
    }
}

pub(super) fn man() -> CliResult {
    use clap::CommandFactory;
    let mut page = Vec::new();
    clap_mangen::Man::new(Cli::command())
        .render(&mut page)
        .map_err(|e| failed(anyhow!("cannot render the man page: {e}")))?;
    write_stdout(&page);
    Ok(0)
}

/// What `health` learnt of one agent: its `/health` (no secret needed), and whether our
/// secret works (`GET /api/v1/whoami`; `None` when we have no secret for it).
struct Probe {
    health: Result<HealthReport, ClientError>,
    secret: Option<Result<(), ClientError>>,
}

/// The agents `health` checks: the selected ones, or every inventory agent when none is
/// selected. An agent we hold no secret (or controller id) for is still probed for
/// liveness; `signed` says which can check the secret too.
fn health_clients(
    context: &Context,
    targets: &TargetArgs,
) -> Result<Vec<(Client, bool)>, super::Failure> {
    let mut selection = targets.selection();
    if selection.is_empty() {
        if context.config.agents.is_empty() {
            return Err(usage(anyhow!(
                "no target: give --agent URL|NAME, --group, --label or --all (the inventory is empty)"
            )));
        }
        selection.all = true;
    }
    let agents = select_agents(&context.config, &selection).map_err(usage)?;
    let mut clients = Vec::with_capacity(agents.len());
    for agent in agents {
        let one = std::slice::from_ref(&agent);
        let (endpoints, signed) =
            match resolve_endpoints(&context.config, one, &context.overrides()) {
                Ok(endpoints) => (endpoints, true),
                Err(TargetError::NoSecret { .. } | TargetError::NoControllerId { .. }) => {
                    // Liveness needs no secret: a throwaway one stands in, never used.
                    let unsigned = Overrides {
                        controller_id: Some("quickcmd-health".into()),
                        secret_file: None,
                        ..context.overrides()
                    };
                    let mut endpoints = Vec::new();
                    if let Some(secret) = Secret::from_text(&generate_key()) {
                        let trust = trust_for(&context.config, &agent, &unsigned).map_err(usage)?;
                        endpoints.push(AgentEndpoint {
                            name: agent.name.clone(),
                            url: agent.url.clone(),
                            controller_id: "quickcmd-health".into(),
                            secret,
                            trust,
                        });
                    }
                    (endpoints, false)
                }
                Err(error) => return Err(usage(error)),
            };
        for client in build_clients(endpoints, &context.client_options()).map_err(usage)? {
            clients.push((client, signed));
        }
    }
    Ok(clients)
}

pub(super) fn health(context: Context, targets: TargetArgs) -> CliResult {
    let clients = health_clients(&context, &targets)?;
    let answers = context.runtime.block_on(
        stream::iter(clients.iter().cloned().map(|(client, signed)| async move {
            let health = client.health().await;
            let secret = if signed && health.is_ok() {
                Some(client.whoami().await.map(|_| ()))
            } else {
                None
            };
            (client, Probe { health, secret })
        }))
        .buffered(50)
        .collect::<Vec<_>>(),
    );
    let mut rows = Vec::new();
    let mut all_healthy = true;
    for (client, probe) in &answers {
        let secret = match &probe.secret {
            None => "not checked (no secret)".to_string(),
            Some(Ok(())) => "ok".to_string(),
            // An agent older than protocol v1.1 cannot say.
            Some(Err(error)) if error.status() == Some(404) => {
                "not checked (agent predates whoami)".to_string()
            }
            Some(Err(error)) if error.status() == Some(401) => {
                "REFUSED: the agent does not accept our secret or controller id".to_string()
            }
            Some(Err(error)) => format!("not checked: {error}"),
        };
        let secret_ok = !matches!(&probe.secret, Some(Err(e)) if e.status() != Some(404));
        match &probe.health {
            Ok(report) => {
                let live = report.http_status == 200 && report.health.status == "healthy";
                let healthy = live && secret_ok;
                all_healthy &= healthy;
                if context.json() {
                    outln!(
                        "{}",
                        json!({
                            "agent": client.name(),
                            "url": client.url().as_str(),
                            "healthy": healthy,
                            "live": live,
                            "secret": secret,
                            "health": report.health,
                            "round_trip_ms": report.round_trip.as_secs_f64() * 1000.0,
                        })
                    );
                }
                let checks = report
                    .health
                    .checks
                    .as_ref()
                    .map(|checks| {
                        checks
                            .iter()
                            .map(|(k, v)| format!("{k}: {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                let status = if !secret_ok {
                    "auth-failed".to_string()
                } else {
                    report.health.status.clone()
                };
                rows.push(vec![
                    client.name().to_string(),
                    status,
                    report.health.version.clone().unwrap_or_else(|| "-".into()),
                    report.health.agent_id.clone().unwrap_or_else(|| "-".into()),
                    report
                        .health
                        .running_jobs
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "-".into()),
                    format!("{:.1}ms", report.round_trip.as_secs_f64() * 1000.0),
                    secret,
                    checks,
                ]);
            }
            Err(error) => {
                all_healthy = false;
                if context.json() {
                    outln!(
                        "{}",
                        json!({
                            "agent": client.name(),
                            "url": client.url().as_str(),
                            "healthy": false,
                            "live": false,
                            "error": error.to_string(),
                        })
                    );
                }
                rows.push(vec![
                    client.name().to_string(),
                    "unreachable".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    truncate(&error.to_string(), 120),
                ]);
            }
        }
    }
    if !context.json() {
        out!(
            "{}",
            table(
                &["HOST", "STATUS", "VERSION", "AGENT ID", "RUNNING", "RTT", "SECRET", "DETAILS"],
                &rows,
                None
            )
        );
    }
    Ok(if all_healthy { 0 } else { 1 })
}
