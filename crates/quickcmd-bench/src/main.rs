//! `quickcmd-bench` (`make bench`): on one machine, in one run, the agent against a bare
//! `docker run` and the Engine API floor — trivial-job latency (variants alternating run by
//! run), throughput at concurrency 8, streaming latency, bulk output and the agent's memory.
//! Prints a table and writes `target/bench/results.json`. Timings are for this report only,
//! never for tests.

mod agent;
mod baseline;
mod latency;
mod load;
mod memory;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::agent::LocalAgent;
use crate::stats::Row;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Section {
    Latency,
    Throughput,
    Streaming,
    Bulk,
    Memory,
}

/// Benchmark the QuickCMD agent against bare `docker run` on this machine.
#[derive(Debug, Parser)]
#[command(name = "quickcmd-bench", version)]
struct Args {
    /// Measured runs per latency variant (after the warm-up).
    #[arg(long, default_value_t = 50)]
    runs: usize,
    /// Unmeasured runs per variant first.
    #[arg(long, default_value_t = 5)]
    warmup: usize,
    /// Short everything (10 runs, 5 s throughput, 20 MiB bulk, 100 jobs for growth): a
    /// smoke run, not a report.
    #[arg(long)]
    quick: bool,
    /// Sections to run (comma-separated); all by default.
    #[arg(long, value_enum, value_delimiter = ',')]
    sections: Vec<Section>,
    /// Seconds each throughput variant runs.
    #[arg(long, default_value_t = 30)]
    throughput_seconds: u64,
    /// MiB of stdout in the bulk section.
    #[arg(long, default_value_t = 200)]
    bulk_mib: u64,
    /// Jobs in the memory growth run.
    #[arg(long, default_value_t = 1000)]
    growth_jobs: usize,
    /// WebSocket subscribers on the noisy job.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// The agent binary (`make build` puts it here).
    #[arg(long, default_value = "bin/quickcmd-agent")]
    agent_bin: PathBuf,
    #[arg(long, default_value = "quickcmd-sandbox:latest")]
    image: String,
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.runs = args.runs.min(10);
        args.warmup = args.warmup.min(2);
        args.throughput_seconds = args.throughput_seconds.min(5);
        args.bulk_mib = args.bulk_mib.min(20);
        args.growth_jobs = args.growth_jobs.min(100);
    }
    if args.sections.is_empty() {
        args.sections = Section::value_variants().to_vec();
    }
    let wants = |section| args.sections.contains(&section);
    let docker = bollard::Docker::connect_with_local_defaults()
        .context("cannot reach the docker engine")?
        .negotiate_version()
        .await
        .context("docker version handshake")?;

    let cold = LocalAgent::start(&args.agent_bin, "cold", &args.image, 0).await?;
    let pooled = Arc::new(LocalAgent::start(&args.agent_bin, "pooled", &args.image, 2).await?);
    let mut rows: Vec<Row> = Vec::new();
    if wants(Section::Latency) {
        eprintln!(
            "latency: {} warm-up + {} runs per variant, alternating",
            args.warmup, args.runs
        );
        let agents = latency::Agents {
            cold: &cold,
            pooled: &pooled,
        };
        rows.extend(latency::run(&docker, &args.image, agents, args.warmup, args.runs).await?);
    }
    if wants(Section::Throughput) {
        eprintln!(
            "throughput: {} s per variant at concurrency {}",
            args.throughput_seconds,
            load::CONCURRENCY
        );
        let duration = Duration::from_secs(args.throughput_seconds);
        rows.extend(load::throughput(pooled.clone(), &docker, &args.image, duration).await?);
    }
    if wants(Section::Streaming) {
        eprintln!("streaming: timestamped lines through the agent");
        rows.extend(load::streaming(&pooled, if args.quick { 50 } else { 200 }).await?);
    }
    if wants(Section::Bulk) {
        eprintln!("bulk: {} MiB of stdout", args.bulk_mib);
        rows.extend(
            load::bulk(
                &pooled,
                &args.image,
                args.bulk_mib,
                if args.quick { 1 } else { 3 },
            )
            .await?,
        );
    }
    cold.stop().await?;
    if let Ok(pooled) = Arc::try_unwrap(pooled) {
        pooled.stop().await?;
    }
    if wants(Section::Memory) {
        eprintln!("memory: a fresh agent with its warm pool");
        let fresh = LocalAgent::start(&args.agent_bin, "memory", &args.image, 2).await?;
        rows.extend(memory::run(&fresh, args.subscribers, args.growth_jobs).await?);
        fresh.stop().await?;
    }

    let table = stats::table(&rows);
    println!("{table}");
    let report = json!({
        "machine": machine(&docker).await,
        "runs": args.runs,
        "warmup": args.warmup,
        "quick": args.quick,
        "throughput_seconds": args.throughput_seconds,
        "bulk_mib": args.bulk_mib,
        "rows": rows,
    });
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

/// CPU model and count, memory, kernel, engine: what a reader needs to compare runs.
async fn machine(docker: &bollard::Docker) -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, m)| m.trim().to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let engine = docker.version().await.ok();
    json!({
        "cpu_model": model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory_mib": memory_kib.map(|k| k / 1024),
        "kernel": kernel.trim(),
        "docker_version": engine.as_ref().and_then(|v| v.version.clone()),
        "docker_api": engine.as_ref().and_then(|v| v.api_version.clone()),
    })
}
