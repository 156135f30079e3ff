//! `quickcmd-load` (`make load`): a real agent (the binary cargo built beside this one, a
//! generated config and certificate, the real Docker engine) under signed submissions over
//! many connections, first alone and then with an unauthenticated flood beside them.
//!
//! Invariants (any violation: exit 1): every 202 reaches a final state with its result and
//! its audit rows; every refusal of a signed job is a 429 with `Retry-After`; no 5xx and no
//! dropped connection for signed traffic; the garbage gets its 4xx (or its connection
//! closed: counted and shown, never a 5xx); the agent's peak RSS stays under
//! `--max-rss-mib`; `quickcmd-agent audit verify` finds the chain intact.
//! Figures (printed, never judged): jobs/s, submit p50/p99 without and with the flood and
//! their ratio, peak RSS.

mod traffic;

use std::collections::{BTreeMap, HashSet};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use quickcmd_protocol::JobStatus;
use quickcmd_testkit::{rss_kib, Config, TestAgent};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "quickcmd-load",
    about = "Load run against a real quickcmd-agent"
)]
struct Args {
    /// Signed submissions in all (half without, half with the flood).
    #[arg(long, default_value_t = 2000)]
    jobs: usize,
    /// The short bounded form CI runs: 200 jobs.
    #[arg(long)]
    quick: bool,
    /// Connections carrying signed submissions.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Connections carrying the unauthenticated flood.
    #[arg(long, default_value_t = 8)]
    flood_connections: usize,
    /// The agent's `max_concurrent_jobs`.
    #[arg(long, default_value_t = 8)]
    max_concurrent_jobs: usize,
    /// The agent's `max_queued_jobs` (the bound the 429s come from).
    #[arg(long, default_value_t = 32)]
    max_queued_jobs: usize,
    /// Peak agent RSS allowed, MiB.
    #[arg(long, default_value_t = 256)]
    max_rss_mib: u64,
    /// How long the run may wait for the accepted jobs to end, seconds.
    #[arg(long, default_value_t = 900)]
    settle_seconds: u64,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Samples the agent's VmRSS every 50 ms into `peak` until `stop` is set.
fn rss_sampler(
    pid: u32,
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if let Some(kib) = rss_kib(pid) {
                peak.fetch_max(kib, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    })
}

/// Waits for every accepted job to end; checks its result. Returns the violations.
async fn settle(agent: &TestAgent, accepted: &[traffic::Accepted], limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut violations = Vec::new();
    for job in accepted {
        loop {
            let reply = agent.get_job(&job.controller_id, &job.job_id).await;
            if reply.status != 200 {
                violations.push(format!(
                    "GET {}: {} {}",
                    job.job_id, reply.status, reply.text
                ));
                break;
            }
            let view: quickcmd_protocol::JobView = match serde_json::from_str(&reply.text) {
                Ok(view) => view,
                Err(error) => {
                    violations.push(format!("GET {}: not a JobView ({error})", job.job_id));
                    break;
                }
            };
            if view.status.is_final() {
                let expected = format!("{}\n", job.job_id);
                match view.result {
                    Some(r) if view.status == JobStatus::Completed && r.stdout == expected => {}
                    other => violations.push(format!(
                        "{} ended {:?} without its output: {other:?}",
                        job.job_id, view.status
                    )),
                }
                break;
            }
            if Instant::now() > deadline {
                violations.push(format!(
                    "{} never ended (last {:?})",
                    job.job_id, view.status
                ));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    violations
}

/// Every accepted job has an accepted submission row and a result row.
fn audit_violations(agent: &TestAgent, accepted: &[traffic::Accepted]) -> (Vec<String>, usize) {
    let rows = agent.audit_rows();
    let mut submitted = HashSet::new();
    let mut resulted = HashSet::new();
    for row in &rows {
        let Some(job_id) = row["job_id"].as_str() else {
            continue;
        };
        match row["kind"].as_str() {
            Some("submission") if row["accepted"] == json!(true) => {
                submitted.insert(job_id.to_string());
            }
            Some("result") if row["status"] == json!("completed") => {
                resulted.insert(job_id.to_string());
            }
            _ => {}
        }
    }
    let mut violations = Vec::new();
    for job in accepted {
        if !submitted.contains(&job.job_id) {
            violations.push(format!("{}: no accepted submission row", job.job_id));
        }
        if !resulted.contains(&job.job_id) {
            violations.push(format!("{}: no completed result row", job.job_id));
        }
    }
    (violations, rows.len())
}

fn report_phase(name: &str, record: &traffic::SignedRecord) -> (Duration, Duration) {
    let mut sorted = record.latencies.clone();
    sorted.sort();
    let (p50, p99) = (percentile(&sorted, 50.0), percentile(&sorted, 99.0));
    println!(
        "  {name:<13} accepted {:>5}  429s {:>5}  submit p50 {:>7.1} ms  p99 {:>7.1} ms",
        record.accepted.len(),
        record.refused_429,
        ms(p50),
        ms(p99)
    );
    (p50, p99)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 4)]
async fn main() -> ExitCode {
    let args = Args::parse();
    let jobs = if args.quick { 200 } else { args.jobs };
    let config = Config::default()
        .set("max_concurrent_jobs", json!(args.max_concurrent_jobs))
        .set("max_queued_jobs", json!(args.max_queued_jobs))
        .set("default_timeout_seconds", json!(120));
    let agent = TestAgent::start("load", config);
    let controllers: Vec<(String, String)> = ["ctl-a", "ctl-b"]
        .iter()
        .map(|id| (id.to_string(), agent.secret_of(id)))
        .collect();
    println!(
        "load: {jobs} signed jobs over {} connections (max_concurrent_jobs {}, max_queued_jobs {}), \
         then the same with {} flood connections; agent pid {}",
        args.connections,
        args.max_concurrent_jobs,
        args.max_queued_jobs,
        args.flood_connections,
        agent.pid()
    );

    let peak_kib = Arc::new(AtomicU64::new(0));
    let sampling = Arc::new(AtomicBool::new(false));
    let sampler = rss_sampler(
        agent.pid().as_raw() as u32,
        peak_kib.clone(),
        sampling.clone(),
    );
    let started = Instant::now();

    let quiet = traffic::signed_phase(
        &agent.base,
        &controllers,
        "quiet",
        jobs / 2,
        args.connections,
    )
    .await;
    let stop_flood = Arc::new(AtomicBool::new(false));
    // The flood runs on its own threads and runtime, as an attacker on another host would:
    // in the signed workers' runtime its tasks would queue beside theirs, and the client's
    // own scheduling would be measured as the agent's latency.
    let flood = {
        let (base, connections, stop) = (
            agent.base.clone(),
            args.flood_connections,
            stop_flood.clone(),
        );
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(traffic::flood(base, connections, stop)),
                Err(error) => traffic::FloodRecord {
                    violations: vec![format!("cannot start the flood's runtime: {error}")],
                    ..Default::default()
                },
            }
        })
    };
    let flooded = traffic::signed_phase(
        &agent.base,
        &controllers,
        "flood",
        jobs - jobs / 2,
        args.connections,
    )
    .await;
    stop_flood.store(true, Ordering::Relaxed);
    let flood = tokio::task::spawn_blocking(move || flood.join())
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    let submitted_in = started.elapsed();

    let accepted: Vec<traffic::Accepted> = quiet
        .accepted
        .iter()
        .chain(&flooded.accepted)
        .cloned()
        .collect();
    let mut violations: Vec<String> = Vec::new();
    violations.extend(quiet.violations.iter().cloned());
    violations.extend(flooded.violations.iter().cloned());
    violations.extend(flood.violations.iter().cloned());
    println!(
        "  submitted in {:.1} s; waiting for the {} accepted jobs to end",
        submitted_in.as_secs_f64(),
        accepted.len()
    );
    violations.extend(settle(&agent, &accepted, Duration::from_secs(args.settle_seconds)).await);
    let all_done_in = started.elapsed();
    sampling.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    let peak_mib = peak_kib.load(Ordering::Relaxed) as f64 / 1024.0;

    let (audit, audit_rows) = audit_violations(&agent, &accepted);
    violations.extend(audit);
    let (verify_code, verify_output) = agent.audit_verify();
    if verify_code != 0 {
        violations.push(format!("audit verify: {}", verify_output.trim()));
    }
    if peak_mib > args.max_rss_mib as f64 {
        violations.push(format!(
            "peak RSS {peak_mib:.1} MiB over --max-rss-mib {}",
            args.max_rss_mib
        ));
    }
    if accepted.len() != jobs {
        violations.push(format!("{} of {jobs} jobs accepted", accepted.len()));
    }

    println!("results:");
    let (quiet_p50, quiet_p99) = report_phase("without flood", &quiet);
    let (flood_p50, flood_p99) = report_phase("with flood", &flooded);
    let ratio = |a: Duration, b: Duration| {
        if b.is_zero() {
            f64::NAN
        } else {
            a.as_secs_f64() / b.as_secs_f64()
        }
    };
    let (r50, r99) = (ratio(flood_p50, quiet_p50), ratio(flood_p99, quiet_p99));
    println!(
        "  flood/quiet   p50 ratio {r50:.2}  p99 ratio {r99:.2}  ({} the 2x target)",
        if r50 <= 2.0 && r99 <= 2.0 {
            "within"
        } else {
            "OUTSIDE"
        }
    );
    let statuses: BTreeMap<u16, usize> = flood.by_status.clone();
    println!(
        "  flood         {} garbage requests, answers {statuses:?}, {} cut off by the agent",
        flood.sent, flood.transport_errors
    );
    for example in &flood.cut_off_examples {
        println!("                e.g. {example}");
    }
    println!(
        "  throughput    {:.2} jobs/s ({} jobs submitted in {:.1} s, all ended after {:.1} s)",
        accepted.len() as f64 / all_done_in.as_secs_f64(),
        accepted.len(),
        submitted_in.as_secs_f64(),
        all_done_in.as_secs_f64()
    );
    println!(
        "  agent RSS     peak {peak_mib:.1} MiB (bound {} MiB)",
        args.max_rss_mib
    );
    println!(
        "  audit         {audit_rows} rows; {}",
        verify_output.trim()
    );
    let summary = json!({
        "jobs": accepted.len(), "jobs_per_second": accepted.len() as f64 / all_done_in.as_secs_f64(),
        "submit_p50_ms": ms(quiet_p50), "submit_p99_ms": ms(quiet_p99),
        "flood_submit_p50_ms": ms(flood_p50), "flood_submit_p99_ms": ms(flood_p99),
        "flood_ratio_p50": r50, "flood_ratio_p99": r99, "peak_rss_mib": peak_mib,
        "refused_429": quiet.refused_429 + flooded.refused_429, "garbage_requests": flood.sent,
        "violations": violations.len(),
    });
    println!("summary {}", Value::to_string(&summary));
    if violations.is_empty() {
        println!("load: every invariant held");
        ExitCode::SUCCESS
    } else {
        eprintln!("load: {} invariant violation(s):", violations.len());
        for violation in violations.iter().take(50) {
            eprintln!("  {violation}");
        }
        ExitCode::FAILURE
    }
}
