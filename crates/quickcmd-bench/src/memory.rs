//! The agent's resident memory: idle, with 8 running jobs, with 100 WebSocket subscribers on
//! one noisy job, and after many jobs (growth).

use std::time::Duration;

use anyhow::{anyhow, Result};
use futures_util::future::join_all;

use crate::agent::LocalAgent;
use crate::load::CONCURRENCY;
use crate::stats::Row;

const SECTION: &str = "memory";
const MIB: f64 = 1024.0 * 1024.0;

pub(crate) async fn run(agent: &LocalAgent, subscribers: usize, jobs: usize) -> Result<Vec<Row>> {
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = agent.rss_bytes()? as f64 / MIB;
    let mut rows =
        vec![Row::new(SECTION, "agent RSS idle", "MiB", idle).target("≤ 20 MiB", idle <= 20.0)];

    // Eight jobs running at once, each holding a stream open.
    let mut running = Vec::new();
    for _ in 0..CONCURRENCY {
        running.push(agent.submit("echo up; sleep 4").await?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let busy = agent.rss_bytes()? as f64 / MIB;
    rows.push(Row::new(
        SECTION,
        format!("agent RSS, {CONCURRENCY} running jobs"),
        "MiB",
        busy,
    ));
    for job_id in &running {
        agent
            .client
            .wait(job_id, Some(Duration::from_secs(60)))
            .await
            .map_err(|e| anyhow!("{e}"))?;
    }

    // One noisy job (about 2 MB of numbered lines over ~4 s), `subscribers` clients on it.
    let before = agent.rss_bytes()? as f64 / MIB;
    let noisy = agent
        .submit("i=0; while [ $i -lt 40 ]; do seq 1 5000; sleep 0.1; i=$((i+1)); done")
        .await?;
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        let pid = agent.pid().ok_or_else(|| anyhow!("agent exited"))?;
        let rss_of = crate::agent::rss_of;
        tokio::spawn(async move {
            loop {
                if let Ok(rss) = rss_of(pid) {
                    peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let followers = (0..subscribers).map(|_| {
        let client = agent.client.clone();
        let job_id = noisy.clone();
        async move {
            let mut stream = client.stream(&job_id, 0);
            let mut bytes = 0usize;
            while let Some(frame) = stream.next().await.map_err(|e| anyhow!("{e}"))? {
                bytes += frame.data.len();
                if frame.is_final {
                    break;
                }
            }
            Ok::<_, anyhow::Error>(bytes)
        }
    });
    let results = join_all(followers).await;
    sampler.abort();
    let complete = results.iter().filter(|r| r.is_ok()).count();
    let with_subs = peak.load(std::sync::atomic::Ordering::Relaxed) as f64 / MIB;
    let extra = with_subs - before;
    rows.push(
        Row::new(
            SECTION,
            format!("agent peak RSS, {subscribers} subscribers ({complete} complete)"),
            "MiB",
            with_subs,
        )
        .target(&format!("≤ +30 MiB (+{extra:.1})"), extra <= 30.0),
    );

    // Growth: RSS after a tenth, half and all of the jobs. A leak grows with every job; the
    // SQLite page caches (2 MiB per connection by default) fill as the database grows and
    // then stop, so the verdict is on the second half, and both figures are printed.
    let tenth = (jobs / 10).max(1);
    let half = (jobs / 2).max(tenth);
    let (mut after_tenth, mut after_half) = (0.0, 0.0);
    for done in 0..jobs {
        let finished = agent.run("true").await?;
        if finished.exit_code != Some(0) {
            return Err(anyhow!(
                "job {done} of the growth run failed: {:?}",
                finished.status
            ));
        }
        if done + 1 == tenth {
            after_tenth = agent.rss_bytes()? as f64 / MIB;
        }
        if done + 1 == half {
            after_half = agent.rss_bytes()? as f64 / MIB;
        }
    }
    let after = agent.rss_bytes()? as f64 / MIB;
    let growth = after - after_half;
    rows.push(
        Row::new(
            SECTION,
            format!(
                "agent RSS after {jobs} jobs (+{:.1} since job {tenth}, +{growth:.1} since job {half})",
                after - after_tenth
            ),
            "MiB",
            after,
        )
        .target("no growth (≤ +1 MiB over the second half)", growth <= 1.0),
    );
    Ok(rows)
}
