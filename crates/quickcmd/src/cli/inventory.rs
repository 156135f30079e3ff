//! `quickcmd inventory` (agents, groups, labels; `--check` probes each), `--list-hosts`,
//! and shell completions that complete host and group names from the inventory.

use std::collections::BTreeMap;

use futures_util::stream::{self, StreamExt};
use serde_json::json;

use super::{usage, Cli, CliResult, Context, Failure, TargetArgs};
use crate::config::InventoryAgent;
use crate::output::{errln, out, outln, table, truncate, write_stdout};
use crate::target::{select_agents, TargetSelection};

/// `--list-hosts`: the selected agents, one a line (`name url`), or JSON objects.
pub(super) fn list_hosts(context: &Context, selection: &TargetSelection) -> Result<(), Failure> {
    let agents = select_agents(&context.config, selection).map_err(usage)?;
    for agent in &agents {
        if context.json() {
            outln!("{}", agent_json(agent));
        } else {
            outln!("{} {}", agent.name, agent.url);
        }
    }
    Ok(())
}

fn agent_json(agent: &InventoryAgent) -> serde_json::Value {
    json!({
        "name": agent.name,
        "url": agent.url.as_str(),
        "groups": agent.groups,
        "labels": agent.labels,
    })
}

fn labels_text(agent: &InventoryAgent) -> String {
    agent
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Every group and its members, in name order.
fn groups(agents: &[InventoryAgent]) -> BTreeMap<&str, Vec<&str>> {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for agent in agents {
        for group in &agent.groups {
            groups.entry(group).or_default().push(&agent.name);
        }
    }
    groups
}

pub(super) fn inventory(
    context: Context,
    targets: TargetArgs,
    check: bool,
    names: bool,
    group_names: bool,
) -> CliResult {
    let selection = targets.selection();
    let agents = if selection.is_empty() {
        context.config.agents.clone()
    } else {
        select_agents(&context.config, &selection).map_err(usage)?
    };
    if names {
        agents.iter().for_each(|a| outln!("{}", a.name));
        return Ok(0);
    }
    if group_names {
        groups(&agents).keys().for_each(|g| outln!("{g}"));
        return Ok(0);
    }
    if agents.is_empty() {
        errln!(
            "quickcmd: the inventory is empty ({}); add agents under `agents:` (see \
             docs/controller.md)",
            context.config.describe_source()
        );
        return Ok(0);
    }
    let probes = if check {
        let clients = context.clients(&TargetSelection {
            agents: agents.iter().map(|a| a.name.clone()).collect(),
            ..TargetSelection::default()
        })?;
        let answers = context.runtime.block_on(
            stream::iter(clients.into_iter().map(|client| async move {
                let answer = client.health().await;
                (client.name().to_string(), answer)
            }))
            .buffered(50)
            .collect::<Vec<_>>(),
        );
        Some(answers.into_iter().collect::<BTreeMap<_, _>>())
    } else {
        None
    };
    let mut all_healthy = true;
    let mut rows = Vec::new();
    for agent in &agents {
        let mut object = agent_json(agent);
        let mut row = vec![
            agent.name.clone(),
            agent.url.to_string(),
            agent.groups.join(","),
            labels_text(agent),
        ];
        if let Some(probes) = &probes {
            let (status, detail) = match probes.get(&agent.name) {
                Some(Ok(report)) => {
                    let healthy = report.http_status == 200 && report.health.status == "healthy";
                    all_healthy &= healthy;
                    let rtt = format!("{:.1}ms", report.round_trip.as_secs_f64() * 1000.0);
                    object["healthy"] = json!(healthy);
                    object["version"] = json!(report.health.version);
                    object["round_trip_ms"] = json!(report.round_trip.as_secs_f64() * 1000.0);
                    let version = report.health.version.clone().unwrap_or_else(|| "-".into());
                    (report.health.status.clone(), format!("{version} {rtt}"))
                }
                Some(Err(error)) => {
                    all_healthy = false;
                    object["healthy"] = json!(false);
                    object["error"] = json!(error.to_string());
                    ("unreachable".to_string(), truncate(&error.to_string(), 100))
                }
                None => {
                    all_healthy = false;
                    ("-".to_string(), "-".to_string())
                }
            };
            row.push(status);
            row.push(detail);
        }
        if context.json() {
            outln!("{object}");
        }
        rows.push(row);
    }
    if !context.json() {
        let mut header = vec!["NAME", "URL", "GROUPS", "LABELS"];
        if check {
            header.extend(["STATUS", "DETAILS"]);
        }
        out!("{}", table(&header, &rows, None));
        let groups = groups(&agents);
        if !groups.is_empty() {
            outln!("{}", "");
            for (group, members) in groups {
                outln!("group {group}: {}", members.join(" "));
            }
        }
    }
    Ok(if all_healthy { 0 } else { 1 })
}

/// Shell functions that complete agent and group names by asking
/// `quickcmd inventory --names` / `--group-names` (so they follow the config in force).
const BASH_HOSTS: &str = r#"
# Host and group names come from the inventory in force.
_quickcmd_inventory() {
    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}"
    case "$prev" in
        -a|--agent|-x|--exclude|--agent=*)
            COMPREPLY=($(compgen -W "$(quickcmd inventory --names 2>/dev/null)" -- "$cur"))
            return 0 ;;
        -g|--group)
            COMPREPLY=($(compgen -W "$(quickcmd inventory --group-names 2>/dev/null)" -- "$cur"))
            return 0 ;;
    esac
    _quickcmd "$@"
}
complete -F _quickcmd_inventory -o nosort -o bashdefault -o default quickcmd
"#;

const FISH_HOSTS: &str = r#"
# Host and group names come from the inventory in force.
complete -c quickcmd -s a -l agent -x -a '(quickcmd inventory --names 2>/dev/null)'
complete -c quickcmd -s x -l exclude -x -a '(quickcmd inventory --names 2>/dev/null)'
complete -c quickcmd -s g -l group -x -a '(quickcmd inventory --group-names 2>/dev/null)'
"#;

const ZSH_HOSTS: &str = r#"
_quickcmd_hosts() {
    local -a hosts
    hosts=(${(f)"$(quickcmd inventory --names 2>/dev/null)"})
    _describe 'agent' hosts
}
_quickcmd_groups() {
    local -a groups
    groups=(${(f)"$(quickcmd inventory --group-names 2>/dev/null)"})
    _describe 'group' groups
}
"#;

/// `quickcmd completions SHELL`: clap's script from the CLI definition, with host and
/// group names completed from the inventory.
pub(super) fn completions(shell: clap_complete::Shell) -> CliResult {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "quickcmd", &mut script);
    let mut script = String::from_utf8_lossy(&script).into_owned();
    match shell {
        clap_complete::Shell::Bash => script.push_str(BASH_HOSTS),
        clap_complete::Shell::Fish => script.push_str(FISH_HOSTS),
        clap_complete::Shell::Zsh => {
            script = script
                .replace(
                    ":URL|NAME|PATTERN:_default",
                    ":URL|NAME|PATTERN:_quickcmd_hosts",
                )
                .replace(":PATTERN:_default", ":PATTERN:_quickcmd_hosts")
                .replace(":GROUP:_default", ":GROUP:_quickcmd_groups");
            // The functions must exist before compdef runs the main one.
            script = match script.find("\n_quickcmd()") {
                Some(at) => format!("{}{ZSH_HOSTS}{}", &script[..at], &script[at..]),
                None => format!("{script}{ZSH_HOSTS}"),
            };
        }
        _ => {}
    }
    write_stdout(script.as_bytes());
    Ok(0)
}
