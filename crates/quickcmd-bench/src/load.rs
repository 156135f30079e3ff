//! Throughput at concurrency 8, streaming latency (a line written in the sandbox → its frame
//! at the WebSocket client, same host clock) and bulk output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};

use crate::agent::LocalAgent;
use crate::baseline::{docker_cli, docker_cli_piped};
use crate::latency::agent_true;
use crate::stats::{Row, Summary};

pub(crate) const CONCURRENCY: usize = 8;

/// Jobs completed per second by `CONCURRENCY` workers looping `job` for `duration`.
async fn jobs_per_second<F, Fut>(duration: Duration, job: F) -> Result<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Duration>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let job = job.clone();
        let done = done.clone();
        workers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                job().await?;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

pub(crate) async fn throughput(
    agent: Arc<LocalAgent>,
    image: &str,
    duration: Duration,
) -> Result<Vec<Row>> {
    const SECTION: &str = "throughput";
    let image = image.to_owned();
    let cli = jobs_per_second(duration, move || {
        let image = image.clone();
        async move { docker_cli(&image, "true").await }
    })
    .await?;
    let misses_before = agent
        .metric("quickcmd_agent_warm_pool_misses_total")
        .await?;
    let through_agent = jobs_per_second(duration, {
        let agent = agent.clone();
        move || {
            let agent = agent.clone();
            async move { agent_true(&agent).await }
        }
    })
    .await?;
    let misses = agent
        .metric("quickcmd_agent_warm_pool_misses_total")
        .await?
        - misses_before;
    let baseline = Row::new(
        SECTION,
        format!("docker run loop, concurrency {CONCURRENCY} [baseline]"),
        "jobs/s",
        cli,
    );
    let row = Row::new(
        SECTION,
        format!("agent (warm pool), concurrency {CONCURRENCY}, {misses} pool misses"),
        "jobs/s",
        through_agent,
    )
    .against(&baseline);
    let met = row.ratio.is_some_and(|r| r >= 2.0);
    Ok(vec![baseline, row.target("≥ 2× baseline", met)])
}

/// Microseconds since the epoch, host clock.
fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// The job prints `lines` wall-clock timestamps (µs, from `adjtimex`, which busybox has and
/// an unprivileged container may read), `interval` apart; the client subtracts each from its
/// arrival time. Same kernel, same clock.
pub(crate) async fn streaming(agent: &LocalAgent, lines: usize) -> Result<Vec<Row>> {
    const SECTION: &str = "streaming";
    let command = format!(
        "i=0; while [ $i -lt {lines} ]; do \
         adjtimex | awk '/tv_sec/{{s=$2}} /tv_usec/{{u=$2}} END{{printf \"%d%06d\\n\", s, u}}'; \
         sleep 0.02; i=$((i+1)); done"
    );
    let mut samples = Vec::new();
    let mut bad = 0usize;
    let done = agent
        .run_observed(&command, |frame| {
            let arrived = now_micros();
            for line in frame.data.lines() {
                match line.trim().parse::<i64>() {
                    Ok(sent) if arrived >= sent => {
                        samples.push(Duration::from_micros((arrived - sent) as u64));
                    }
                    _ => bad += 1,
                }
            }
        })
        .await?;
    if done.exit_code != Some(0) || samples.len() < lines / 2 {
        bail!(
            "streaming job: exit {:?}, {} timestamps, {bad} unreadable",
            done.exit_code,
            samples.len()
        );
    }
    let summary = Summary::of(&samples).ok_or_else(|| anyhow!("no samples"))?;
    let p99 = summary.p99_ms;
    let mut row = Row::latency(SECTION, "line in sandbox → WebSocket frame", summary);
    row.unit = "p50 ms";
    Ok(vec![row.target(
        &format!("p99 ≤ 25 ms (p99 {p99:.1})"),
        p99 <= 25.0,
    )])
}

/// `megabytes` MB of stdout through the agent's stream vs `docker run … | cat >/dev/null`,
/// alternating, `rounds` each; MB/s of the median run.
pub(crate) async fn bulk(
    agent: &LocalAgent,
    image: &str,
    megabytes: u64,
    rounds: usize,
) -> Result<Vec<Row>> {
    const SECTION: &str = "bulk";
    let command = format!("head -c {megabytes}m /dev/zero | tr '\\0' a");
    let mut cli = Vec::new();
    let mut through = Vec::new();
    for _ in 0..rounds {
        cli.push(docker_cli_piped(image, &command).await?);
        let done = agent.run(&command).await?;
        let expected = (megabytes * 1024 * 1024) as usize;
        if done.output_bytes != expected {
            bail!(
                "bulk job streamed {} bytes, expected {expected}",
                done.output_bytes
            );
        }
        through.push(done.total);
    }
    let rate = |samples: &[Duration]| -> Result<f64> {
        let summary = Summary::of(samples).ok_or_else(|| anyhow!("no samples"))?;
        Ok(megabytes as f64 * 1.048_576 / (summary.p50_ms / 1e3))
    };
    let baseline = Row::new(
        SECTION,
        format!("docker run | cat, {megabytes} MiB [baseline]"),
        "MB/s",
        rate(&cli)?,
    );
    let row = Row::new(
        SECTION,
        format!("agent stream to a WebSocket client, {megabytes} MiB"),
        "MB/s",
        rate(&through)?,
    )
    .against(&baseline);
    let met = row.ratio.is_some_and(|r| r >= 0.8);
    Ok(vec![baseline, row.target("≥ 0.8× baseline", met)])
}
