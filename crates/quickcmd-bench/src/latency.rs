//! Trivial-job latency, variants alternating run by run on the same machine: bare
//! `docker run`, the Engine API floor, the agent cold and with its warm pool, and submit →
//! first output frame.

use std::time::Duration;

use anyhow::{bail, Result};
use bollard::Docker;

use crate::agent::LocalAgent;
use crate::baseline::{docker_cli, engine_floor};
use crate::stats::{Row, Summary};

const SECTION: &str = "latency";

pub(crate) struct Agents<'a> {
    pub(crate) cold: &'a LocalAgent,
    pub(crate) pooled: &'a LocalAgent,
}

pub(crate) async fn run(
    docker: &Docker,
    image: &str,
    agents: Agents<'_>,
    warmup: usize,
    runs: usize,
) -> Result<Vec<Row>> {
    let mut cli = Vec::new();
    let mut floor = Vec::new();
    let mut cold = Vec::new();
    let mut pooled = Vec::new();
    let mut first_frame = Vec::new();
    for round in 0..warmup + runs {
        let measured = round >= warmup;
        // Each variant starts from the same state: the pool full, as between real jobs.
        agents
            .pooled
            .wait_pool_idle(2, Duration::from_secs(30))
            .await?;
        let t = docker_cli(image, "true").await?;
        measured.then(|| cli.push(t));
        let t = engine_floor(docker, image).await?;
        measured.then(|| floor.push(t));
        let t = agent_true(agents.cold).await?;
        measured.then(|| cold.push(t));
        agents
            .pooled
            .wait_pool_idle(2, Duration::from_secs(30))
            .await?;
        let t = agent_true(agents.pooled).await?;
        measured.then(|| pooled.push(t));
        agents
            .pooled
            .wait_pool_idle(2, Duration::from_secs(30))
            .await?;
        let done = agents.pooled.run("echo x").await?;
        if let (true, Some(t)) = (measured, done.first_frame) {
            first_frame.push(t);
        }
        if round % 10 == 9 || round + 1 == warmup + runs {
            let last = |v: &[Duration]| v.last().map_or(0.0, |d| d.as_secs_f64() * 1e3);
            eprintln!(
                "  round {}/{}: last cli {:.0} ms, floor {:.0}, cold {:.0}, pooled {:.0}, first frame {:.0}",
                round + 1,
                warmup + runs,
                last(&cli),
                last(&floor),
                last(&cold),
                last(&pooled),
                last(&first_frame)
            );
        }
    }
    let summary =
        |samples: &[Duration]| Summary::of(samples).ok_or_else(|| anyhow::anyhow!("no samples"));
    let baseline = Row::latency(
        SECTION,
        "docker run --rm --network none (CLI) [baseline]",
        summary(&cli)?,
    );
    let floor = Row::latency(
        SECTION,
        "Engine API create/start/wait/remove [floor]",
        summary(&floor)?,
    )
    .against(&baseline);
    let cold_row = Row::latency(
        SECTION,
        "agent end to end, cold (warm_pool_size 0)",
        summary(&cold)?,
    );
    let cold_vs_floor = cold_row.value / floor.value;
    let cold_row = cold_row.against(&baseline).target(
        &format!("≤ 1.15× floor ({cold_vs_floor:.2}×)"),
        cold_vs_floor <= 1.15,
    );
    let pooled_row =
        Row::latency(SECTION, "agent end to end, warm pool", summary(&pooled)?).against(&baseline);
    let met = pooled_row.ratio.is_some_and(|r| r <= 0.25);
    let pooled_row = pooled_row.target("≤ 0.25× baseline", met);
    let first = Row::latency(
        SECTION,
        "agent submit → first output frame (pool)",
        summary(&first_frame)?,
    );
    let met = first.value <= 15.0;
    let first = first.target("p50 ≤ 15 ms", met);
    Ok(vec![baseline, floor, cold_row, pooled_row, first])
}

/// `true` through the agent, submit to final frame; the job must have completed with 0.
pub(crate) async fn agent_true(agent: &LocalAgent) -> Result<Duration> {
    let done = agent.run("true").await?;
    if done.exit_code != Some(0) {
        bail!(
            "`true` on {} ended {:?} exit {:?}",
            agent.name,
            done.status,
            done.exit_code
        );
    }
    Ok(done.total)
}
