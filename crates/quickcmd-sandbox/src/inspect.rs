//! Inspect a stopped container for what its exit code alone does not tell: an OOM kill.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::query_parameters::EventsOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use crate::error::SandboxError;

/// Longest wait for the engine's event log when the OOM flag is in doubt.
const EVENTS_QUERY_TIMEOUT: Duration = Duration::from_secs(3);

/// Whether the kernel OOM-killed the job. `State.OOMKilled` first; Docker 20.10 on cgroup
/// v1 sometimes leaves it false for a container that was OOM-killed (seen about 1 run in
/// 40 with concurrent containers) while it did emit an `oom` event, so a kill-like exit
/// (137) with the flag unset is checked against the event log since `started_unix`.
pub(crate) async fn was_oom_killed(
    docker: &Docker,
    container_id: &str,
    job_id: &str,
    exit_code: i64,
    started_unix: i64,
) -> Result<bool, SandboxError> {
    let inspected = docker
        .inspect_container(container_id, None)
        .await
        .map_err(|err| SandboxError::engine("inspect container", job_id, &err))?;
    let flagged = inspected
        .state
        .and_then(|state| state.oom_killed)
        .unwrap_or(false);
    if flagged || exit_code != 137 {
        return Ok(flagged);
    }
    oom_event_seen(docker, container_id, started_unix).await
}

/// Asks the engine's event log for an `oom` event of this container between its start and
/// now; the query is bounded by `until`, so the stream ends by itself.
async fn oom_event_seen(
    docker: &Docker,
    container_id: &str,
    started_unix: i64,
) -> Result<bool, SandboxError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(started_unix);
    let filters = HashMap::from([("container", vec![container_id]), ("event", vec!["oom"])]);
    let options = EventsOptionsBuilder::new()
        .since(&(started_unix - 1).to_string())
        .until(&(now + 1).to_string())
        .filters(&filters)
        .build();
    let mut events = docker.events(Some(options));
    let found = tokio::time::timeout(EVENTS_QUERY_TIMEOUT, async {
        while let Some(event) = events.next().await {
            if event.is_ok() {
                return true;
            }
        }
        false
    })
    .await;
    Ok(found.unwrap_or(false))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a container with the docker CLI and returns its id and start time.
    fn run_container(memory: &str, command: &str) -> (String, i64) {
        let started = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let output = std::process::Command::new("docker")
            .args([
                "run",
                "-d",
                "--network",
                "none",
                "--memory",
                memory,
                "--memory-swap",
                memory,
            ])
            .args(["quickcmd-sandbox:latest", "sh", "-c", command])
            .output()
            .unwrap_or_else(|e| panic!("docker CLI: {e}"));
        assert!(
            output.status.success(),
            "docker run failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let id = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let waited = std::process::Command::new("docker")
            .args(["wait", &id])
            .output();
        assert!(
            waited.is_ok_and(|o| o.status.success()),
            "docker wait failed"
        );
        (id, started)
    }

    fn remove(id: &str) {
        let _ = std::process::Command::new("docker")
            .args(["rm", "-f", id])
            .output();
    }

    /// The event-log fallback finds a real OOM kill and nothing for a clean exit.
    #[tokio::test]
    async fn oom_event_log_tells_oom_from_a_clean_exit() {
        let docker = Docker::connect_with_local_defaults()
            .unwrap_or_else(|e| panic!("docker: {e}"))
            .negotiate_version()
            .await
            .unwrap_or_else(|e| panic!("docker API version: {e}"));
        let (oom_id, oom_started) = run_container("16m", "head -c 64m /dev/zero | tail");
        let (clean_id, clean_started) = run_container("16m", "true");
        let oom = oom_event_seen(&docker, &oom_id, oom_started).await;
        let clean = oom_event_seen(&docker, &clean_id, clean_started).await;
        remove(&oom_id);
        remove(&clean_id);
        assert_eq!(
            oom.ok(),
            Some(true),
            "no oom event found for an OOM-killed container"
        );
        assert_eq!(
            clean.ok(),
            Some(false),
            "an oom event was reported for a clean exit"
        );
    }
}
