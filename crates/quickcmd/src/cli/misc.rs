//! `agent gen-key`, `agent gen-cert`, `health` and `man`.

use anyhow::anyhow;
use futures_util::stream::{self, StreamExt};
use serde_json::json;

use super::{failed, usage, AgentCommand, Cli, CliResult, Context, TargetArgs};
use crate::output::{out, outln, table, truncate, write_stdout};
use crate::secret::generate_key;
use crate::tls::{generate_cert, write_cert_files};

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

pub(super) fn health(context: Context, targets: TargetArgs) -> CliResult {
    let clients = context.clients(&targets.selection())?;
    let answers = context.runtime.block_on(
        stream::iter(clients.iter().cloned().map(|client| async move {
            let answer = client.health().await;
            (client, answer)
        }))
        .buffered(50)
        .collect::<Vec<_>>(),
    );
    let mut rows = Vec::new();
    let mut all_healthy = true;
    for (client, answer) in &answers {
        match answer {
            Ok(report) => {
                let healthy = report.http_status == 200 && report.health.status == "healthy";
                all_healthy &= healthy;
                if context.json() {
                    outln!(
                        "{}",
                        json!({
                            "agent": client.name(),
                            "url": client.url().as_str(),
                            "healthy": healthy,
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
                rows.push(vec![
                    client.name().to_string(),
                    report.health.status.clone(),
                    report.health.version.clone().unwrap_or_else(|| "-".into()),
                    report.health.agent_id.clone().unwrap_or_else(|| "-".into()),
                    report
                        .health
                        .running_jobs
                        .map(|n| n.to_string())
                        .unwrap_or_else(|| "-".into()),
                    format!("{:.1}ms", report.round_trip.as_secs_f64() * 1000.0),
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
                    truncate(&error.to_string(), 120),
                ]);
            }
        }
    }
    if !context.json() {
        out!(
            "{}",
            table(
                &["HOST", "STATUS", "VERSION", "AGENT ID", "RUNNING", "RTT", "DETAILS"],
                &rows,
                None
            )
        );
    }
    Ok(if all_healthy { 0 } else { 1 })
}
