//! `quickcmd audit verify`: holds each agent's audit log against the witnesses this
//! controller kept (see [`crate::audit`]). Exit 0 when every agent checked is intact, 1
//! when any log disagrees with a witness, 255 when some agent could not be checked (and
//! none disagreed).

use anyhow::anyhow;
use serde_json::json;

use super::{could_not_run, failed, CliResult, Context, EXIT_COULD_NOT_RUN};
use crate::audit::{check_agent, ChainVerdict};
use crate::history::History;
use crate::output::outln;
use crate::target::TargetSelection;

/// Exit code when some agent's log disagrees with a witness.
pub(super) const EXIT_TAMPERED: u8 = 1;

/// What came of one agent.
enum Outcome {
    Verdict(ChainVerdict, usize),
    CouldNotCheck(String),
}

pub(super) fn verify(context: Context, agent: Option<String>) -> CliResult {
    let path = context.history_path()?;
    let (history, agents) = context.runtime.block_on(async {
        let history = History::open(&path).await.map_err(failed)?;
        let agents = match &agent {
            Some(name) => vec![name.clone()],
            None => history.witnessed_agents().await.map_err(failed)?,
        };
        Ok::<_, super::Failure>((history, agents))
    })?;
    if agents.is_empty() {
        return Err(could_not_run(anyhow!(
            "no audit witnesses in {}: run a job on an agent first",
            path.display()
        )));
    }
    let mut worst = 0_u8;
    for name in agents {
        let outcome = check_one(&context, &history, &name);
        let code = report(&context, &name, &outcome);
        worst = match (worst, code) {
            (EXIT_TAMPERED, _) | (_, EXIT_TAMPERED) => EXIT_TAMPERED,
            (0, other) | (other, 0) => other,
            (other, _) => other,
        };
    }
    Ok(worst)
}

fn check_one(context: &Context, history: &History, name: &str) -> Outcome {
    let clients = match context.clients(&TargetSelection {
        agents: vec![name.to_string()],
        ..TargetSelection::default()
    }) {
        Ok(clients) => clients,
        Err(failure) => return Outcome::CouldNotCheck(format!("{:#}", failure.error)),
    };
    let Some(client) = clients.into_iter().next() else {
        return Outcome::CouldNotCheck("the agent is not in the config".into());
    };
    context.runtime.block_on(async {
        let witnesses = match history.witnesses(name).await {
            Ok(witnesses) => witnesses,
            Err(error) => return Outcome::CouldNotCheck(error.to_string()),
        };
        if witnesses.is_empty() {
            return Outcome::CouldNotCheck(
                "this controller holds no witness of this agent: run a job on it first".into(),
            );
        }
        match check_agent(&client, &witnesses).await {
            Ok(verdict) => Outcome::Verdict(verdict, witnesses.len()),
            Err(error) => Outcome::CouldNotCheck(error.to_string()),
        }
    })
}

/// Prints one agent's line (or JSON object) and returns its exit code.
fn report(context: &Context, name: &str, outcome: &Outcome) -> u8 {
    let (code, value, line) = match outcome {
        Outcome::Verdict(
            ChainVerdict::Intact {
                head_seq,
                witnesses,
            },
            _,
        ) => (
            0,
            json!({"agent": name, "status": "intact", "head_seq": head_seq, "witnesses": witnesses}),
            format!("{name}: intact up to seq {head_seq} ({witnesses} witnesses)"),
        ),
        Outcome::Verdict(ChainVerdict::Tampered { seq, problem }, witnesses) => (
            EXIT_TAMPERED,
            json!({"agent": name, "status": "tampered", "seq": seq, "problem": problem, "witnesses": witnesses}),
            format!("{name}: TAMPERED at row {seq}: {problem}"),
        ),
        Outcome::CouldNotCheck(error) => (
            EXIT_COULD_NOT_RUN,
            json!({"agent": name, "status": "error", "error": error}),
            format!("{name}: could not check: {error}"),
        ),
    };
    if context.json() {
        outln!("{value}");
    } else {
        outln!("{line}");
    }
    code
}
