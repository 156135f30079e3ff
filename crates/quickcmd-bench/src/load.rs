//! Throughput at concurrency 8, streaming latency (a line written in the sandbox → its frame
//! at the WebSocket client, same host clock) and bulk output.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Result};

use crate::agent::LocalAgent;
use bollard::Docker;

use crate::baseline::{docker_cli, docker_cli_piped, engine_floor};
use crate::latency::agent_true;
use crate::stats::{Row, Summary};

pub(crate) const CONCURRENCY: usize = 8;

/// Busy jiffies of the whole host (user, nice, system, irq, softirq) from `/proc/stat`:
/// the agent, the engine, containerd, the shims, runc and the CLI all count.
fn host_busy_jiffies() -> Result<u64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let cpu = stat
        .lines()
        .next()
        .ok_or_else(|| anyhow!("/proc/stat is empty"))?;
    let fields: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .map(|field| field.parse().unwrap_or(0))
        .collect();
    // user nice system idle iowait irq softirq steal …
    let pick = |i: usize| fields.get(i).copied().unwrap_or(0);
    Ok(pick(0) + pick(1) + pick(2) + pick(5) + pick(6))
}

/// A throughput run: jobs per second, and host CPU spent per job (ms).
struct Throughput {
    jobs_per_second: f64,
    cpu_ms_per_job: f64,
}

/// Jobs completed per second by `CONCURRENCY` workers looping `job` for `duration`.
async fn jobs_per_second<F, Fut>(duration: Duration, job: F) -> Result<Throughput>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<Duration>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let busy_before = host_busy_jiffies()?;
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
    let elapsed = started.elapsed().as_secs_f64();
    // USER_HZ is 100 on Linux: one jiffy is 10 ms.
    let busy_ms = host_busy_jiffies()?.saturating_sub(busy_before) as f64 * 10.0;
    let jobs = done.load(Ordering::Relaxed).max(1) as f64;
    Ok(Throughput {
        jobs_per_second: jobs / elapsed,
        cpu_ms_per_job: busy_ms / jobs,
    })
}

pub(crate) async fn throughput(
    agent: Arc<LocalAgent>,
    docker: &Docker,
    image: &str,
    duration: Duration,
) -> Result<Vec<Row>> {
    const SECTION: &str = "throughput";
    let cli = jobs_per_second(duration, {
        let image = image.to_owned();
        move || {
            let image = image.clone();
            async move { docker_cli(&image, "true").await }
        }
    })
    .await?;
    let floor = jobs_per_second(duration, {
        let (docker, image) = (docker.clone(), image.to_owned());
        move || {
            let (docker, image) = (docker.clone(), image.clone());
            async move { engine_floor(&docker, &image).await }
        }
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
        format!(
            "docker run loop, concurrency {CONCURRENCY}, {:.0} ms host CPU/job [baseline]",
            cli.cpu_ms_per_job
        ),
        "jobs/s",
        cli.jobs_per_second,
    );
    let floor_row = Row::new(
        SECTION,
        format!(
            "Engine API create/start/wait/remove loop, {:.0} ms host CPU/job",
            floor.cpu_ms_per_job
        ),
        "jobs/s",
        floor.jobs_per_second,
    )
    .against(&baseline);
    let row = Row::new(
        SECTION,
        format!(
            "agent (warm pool), concurrency {CONCURRENCY}, {misses} pool misses, {:.0} ms host CPU/job",
            through_agent.cpu_ms_per_job
        ),
        "jobs/s",
        through_agent.jobs_per_second,
    )
    .against(&baseline);
    let met = row.ratio.is_some_and(|r| r >= 2.0);
    Ok(vec![baseline, floor_row, row.target("≥ 2× baseline", met)])
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
