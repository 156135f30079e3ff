//! The daemon's life: open state, recover from a crash, bind, drop privileges, serve
//! HTTPS, reload on SIGHUP, drain on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use hyper_util::server::graceful::GracefulShutdown;
use quickcmd_protocol::reason;
use quickcmd_sandbox::{DockerSandbox, PoolProfile, DEFAULT_WORKDIR};
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, SignalKind};
use tokio_rustls::TlsAcceptor;

use crate::audit::{AuditEvent, AuditKind, AuditLog};
use crate::config::AgentConfig;
use crate::connection::{self, ConnectionCap, Counted};
use crate::state::Agent;
use crate::store::Store;
use crate::tls::{self, ReloadableCert};
use crate::{api, clock, privileges, runner};

/// Handshake deadline, so idle half-open connections cannot pile up.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often expired jobs and logs are purged.
const PURGE_EVERY: Duration = Duration::from_secs(3600);

/// Runs the agent until SIGTERM/SIGINT has drained it.
pub async fn run(config: AgentConfig) -> Result<()> {
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let data_dir_created = !config.data_dir.exists();
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data_dir {}", config.data_dir.display()))?;
    let store = Store::open(config.data_dir.join("agent.db"))
        .with_context(|| format!("cannot open the job store in {}", config.data_dir.display()))?;
    let audit = AuditLog::open(&config.audit_db_path).with_context(|| {
        format!(
            "cannot open the audit log {}",
            config.audit_db_path.display()
        )
    })?;
    let sandbox = DockerSandbox::connect(config.docker_host.as_deref())
        .await
        .context("cannot reach the Docker engine (is dockerd running, and may this user use its socket?)")?;

    let resolver = match &config.tls {
        Some(files) => Some(ReloadableCert::new(
            tls::load_certified_key(files).context("cannot load the TLS certificate")?,
        )),
        None => None,
    };
    let acceptor = match &resolver {
        Some(resolver) => Some(TlsAcceptor::from(tls::server_config(resolver.clone())?)),
        None => None,
    };
    let listener = TcpListener::bind(config.listen).await.with_context(|| {
        format!(
            "cannot listen on {} (port in use? change `port` in {})",
            config.listen,
            config.path.display()
        )
    })?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;

    // Both databases with their WAL and shared-memory files: all were created by this
    // process, so by root when it started as root.
    // A data_dir this process made is handed over too, or the dropped process could not
    // create files in it.
    let mut owned_files: Vec<PathBuf> = [
        config.data_dir.join("agent.db"),
        config.audit_db_path.clone(),
    ]
    .iter()
    .flat_map(|db| ["", "-wal", "-shm"].map(|suffix| with_suffix(db, suffix)))
    .collect();
    if data_dir_created {
        owned_files.push(config.data_dir.clone());
    }
    privileges::drop_to(
        config.run_as_user.as_deref(),
        config.run_as_group.as_deref(),
        &owned_files,
    )
    .context("cannot drop privileges")?;

    // The pool's containers are spared by the start-up sweep in `recover` (it removes only
    // those of a previous process) and serve jobs of the default sandbox profile.
    let sandbox = sandbox
        .with_warm_pool(config.warm_pool_size, pool_profile(&config))
        .context("cannot start the warm pool (check default_image, sandbox_user and the limits)")?;
    let agent = Agent::new(config, store, audit, sandbox);
    agent.metrics.report_warm_pool(agent.sandbox.clone());
    recover(&agent).await?;

    let scheme = if acceptor.is_some() { "https" } else { "http" };
    let shown = if local.ip().is_unspecified() {
        SocketAddr::new([127, 0, 0, 1].into(), local.port())
    } else {
        local
    };
    tracing::info!(address = %local, agent_id = %agent.config().agent_id, "quickcmd-agent listening");
    println!("listening on {scheme}://{shown}");

    let purge = tokio::spawn(purge_loop(agent.clone()));
    let refusal_summaries = tokio::spawn(refusal_summary_loop(agent.clone()));
    let graceful = GracefulShutdown::new();
    let app = api::router(agent.clone());
    // The cap is fixed at start; a reload that changes it is warned about.
    let cap_size = agent.config().connections.max_connections;
    let cap = ConnectionCap::new(cap_size, agent.clone());
    let mut refused_since_log: u64 = 0;
    let mut last_refusal_log: Option<tokio::time::Instant> = None;
    let mut hangup = signal(SignalKind::hangup()).context("cannot watch SIGHUP")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot watch SIGINT")?;

    // SIGTERM starts the drain; the listener keeps answering (503 SHUTTING_DOWN for new
    // jobs, reads and streams as usual) until the drain is over.
    let drain_started = tokio::sync::Notify::new();
    let mut draining = false;
    let drain_done = async {
        drain_started.notified().await;
        drain(&agent).await;
    };
    tokio::pin!(drain_done);
    loop {
        tokio::select! {
            _ = &mut drain_done => break,
            accepted = listener.accept() => {
                let (tcp, remote) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(slot) = cap.admit() else {
                    // Closing at once frees the socket; the peer sees its connection end.
                    drop(tcp);
                    refused_since_log += 1;
                    if last_refusal_log.is_none_or(|at: tokio::time::Instant| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(%remote, refused = refused_since_log, max_connections = cap_size, "connection refused: max_connections are open");
                        last_refusal_log = Some(tokio::time::Instant::now());
                        refused_since_log = 0;
                    }
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let tcp = Counted::new(tcp, slot);
                let acceptor = acceptor.clone();
                let watcher = graceful.watcher();
                let app = app.clone();
                let agent = agent.clone();
                tokio::spawn(async move {
                    let limits = agent.config().connections;
                    match acceptor {
                        Some(acceptor) => {
                            let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                                Ok(Ok(tls)) => tls,
                                Ok(Err(error)) => {
                                    tracing::debug!(%remote, %error, "TLS handshake failed");
                                    return;
                                }
                                Err(_) => return,
                            };
                            connection::serve(tls, app, remote, limits, watcher, agent).await;
                        }
                        None => connection::serve(tcp, app, remote, limits, watcher, agent).await,
                    }
                });
            }
            _ = hangup.recv() => reload(&agent, resolver.as_deref()),
            _ = terminate.recv(), if !draining => {
                draining = true;
                drain_started.notify_one();
            }
            _ = interrupt.recv(), if !draining => {
                draining = true;
                drain_started.notify_one();
            }
        }
    }

    drop(listener);
    purge.abort();
    // Final frames are out; give streams and in-flight answers a moment to flush.
    if tokio::time::timeout(Duration::from_secs(5), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within 5 s");
    }
    agent.sandbox.shutdown_warm_pool().await;
    refusal_summaries.abort();
    write_refusal_summaries(&agent, agent.refusals.take_all()).await;
    let event = AuditEvent::new(AuditKind::Shutdown);
    if let Err(error) = agent.audit.append(event).await {
        tracing::error!(%error, "could not audit the shutdown");
    }
    tracing::info!("quickcmd-agent stopped");
    Ok(())
}

/// The warm pool's containers: the default sandbox of `config`.
fn pool_profile(config: &AgentConfig) -> PoolProfile {
    PoolProfile {
        agent_id: config.agent_id.clone(),
        image: config.limits.default_image.clone(),
        user: config.limits.sandbox_user.clone(),
        workdir: DEFAULT_WORKDIR.to_owned(),
        tmp_size_bytes: config.limits.tmp_bytes,
        workdir_size_bytes: config.limits.workdir_bytes,
        cpu_limit: config.limits.default_cpu_limit,
        memory_limit_bytes: config.limits.default_memory_limit,
        pids_limit: config.limits.pids_limit,
    }
}

/// `path` with `suffix` appended to its file name (`agent.db` → `agent.db-wal`).
fn with_suffix(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// SIGHUP: re-read the config file (and the certificate); a bad one is refused and the
/// old one stays. A change of the default sandbox or of `warm_pool_size` replaces the warm
/// pool (the old one's idle containers are removed in the background).
fn reload(agent: &Agent, resolver: Option<&ReloadableCert>) {
    let current = agent.config();
    let env_secret = std::env::var("QUICKCMD_HMAC_SECRET").ok();
    let new = match AgentConfig::load(&current.path, env_secret) {
        Ok(new) => new,
        Err(error) => {
            tracing::error!(%error, "config reload refused; the running config stays");
            return;
        }
    };
    if new.listen != current.listen
        || new.data_dir != current.data_dir
        || new.audit_db_path != current.audit_db_path
        || new.connections.max_connections != current.connections.max_connections
    {
        tracing::warn!("port, bind_address, data_dir, audit_db_path and max_connections changes take effect only after a restart");
    }
    let profile = pool_profile(&new);
    if let Err(error) = profile.validate() {
        tracing::error!(%error, "config reload refused: no warm pool container could be made of the default sandbox; the running config stays");
        return;
    }
    match (&new.tls, resolver) {
        (Some(files), Some(resolver)) => match tls::load_certified_key(files) {
            Ok(key) => resolver.replace(key),
            Err(error) => {
                tracing::error!(%error, "config reload refused: the TLS certificate does not load; the running config stays");
                return;
            }
        },
        (None, None) => {}
        _ => {
            tracing::error!(
                "config reload refused: switching between TLS and plain HTTP needs a restart"
            );
            return;
        }
    }
    for warning in &new.warnings {
        tracing::warn!("{warning}");
    }
    // Swapped before the config: a job that starts in between builds its sandbox from the
    // old config, does not fit the new pool and runs cold, which is correct either way.
    if let Err(error) = agent
        .sandbox
        .reconfigure_warm_pool(new.warm_pool_size, profile)
    {
        tracing::error!(%error, "config reload refused: the warm pool could not be replaced; the running config stays");
        return;
    }
    agent.replace_config(new);
    tracing::info!(
        controllers = agent.config().controllers.len(),
        "config reloaded"
    );
}

/// SIGTERM: refuse new jobs, let running ones finish within the grace period, then kill
/// what is left; every job ends with a stored result and a final frame.
async fn drain(agent: &Arc<Agent>) {
    agent.begin_shutdown();
    let grace = agent.config().shutdown_grace;
    tracing::info!(
        grace_seconds = grace.as_secs(),
        running = agent.jobs.running(),
        "shutting down: no new jobs"
    );
    runner::fail_waiting(agent, reason::AGENT_SHUTDOWN).await;
    let deadline = tokio::time::Instant::now() + grace;
    while agent.jobs.live_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if agent.jobs.live_count() > 0 {
        tracing::warn!(
            jobs = agent.jobs.live_count(),
            "grace period over: killing running jobs"
        );
        runner::cancel_all(agent, reason::AGENT_SHUTDOWN).await;
        let hard_deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while agent.jobs.live_count() > 0 && tokio::time::Instant::now() < hard_deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Start-up after a crash: jobs left pending/running failed with `agent_restart`, and
/// containers labelled with this agent's id removed.
async fn recover(agent: &Arc<Agent>) -> Result<()> {
    let config = agent.config();
    let failed = agent
        .store
        .fail_interrupted(reason::AGENT_RESTART, clock::now_ms())
        .await
        .context("cannot mark interrupted jobs")?;
    for job_id in &failed {
        let event = AuditEvent {
            job_id: Some(job_id.clone()),
            status: Some("failed".to_string()),
            reason: Some(reason::AGENT_RESTART.to_string()),
            exit_code: Some(-1),
            ..AuditEvent::new(AuditKind::Recovery)
        };
        agent
            .audit
            .append(event)
            .await
            .context("cannot audit an interrupted job")?;
        tracing::warn!(job_id, "job was interrupted by an agent restart");
    }
    match agent
        .sandbox
        .remove_agent_containers(&config.agent_id)
        .await
    {
        Ok(0) => {}
        Ok(count) => tracing::warn!(count, "removed sandbox containers left by a previous run"),
        Err(error) => tracing::error!(%error, "could not remove leftover sandbox containers"),
    }
    let event = AuditEvent {
        details: serde_json::json!({ "version": env!("CARGO_PKG_VERSION"), "agent_id": config.agent_id, "interrupted_jobs": failed }),
        ..AuditEvent::new(AuditKind::Startup)
    };
    agent
        .audit
        .append(event)
        .await
        .context("cannot write to the audit log")?;
    Ok(())
}

/// Writes the summary row of every refusal window that ended (`flood.rs`).
async fn refusal_summary_loop(agent: Arc<Agent>) {
    let mut timer = tokio::time::interval(Duration::from_secs(10));
    loop {
        timer.tick().await;
        let ended = agent.refusals.take_ended(std::time::Instant::now());
        write_refusal_summaries(&agent, ended).await;
    }
}

async fn write_refusal_summaries(agent: &Agent, summaries: Vec<AuditEvent>) {
    for summary in summaries {
        if let Err(error) = agent.audit.append(summary).await {
            tracing::error!(%error, "could not audit a summary of refused submissions");
        }
    }
}

async fn purge_loop(agent: Arc<Agent>) {
    let mut timer = tokio::time::interval(PURGE_EVERY);
    loop {
        timer.tick().await;
        let days = i64::from(agent.config().job_retention_days);
        let now = clock::now_ms();
        match agent.store.purge(now - days * 86_400_000, now).await {
            Ok(0) => {}
            Ok(count) => tracing::info!(count, "purged old jobs and logs"),
            Err(error) => tracing::error!(%error, "purge failed"),
        }
    }
}
