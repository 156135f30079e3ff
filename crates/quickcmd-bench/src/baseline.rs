//! What QuickCMD is measured against: a bare `docker run --rm` through the CLI (what a user
//! would run over ssh), and the raw Engine API life cycle of a fresh container (the floor).

use std::collections::HashMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig};
use bollard::query_parameters::{RemoveContainerOptionsBuilder, WaitContainerOptionsBuilder};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::process::Command;

/// `docker run --rm --network none IMAGE sh -c COMMAND`, output discarded; its wall time.
pub(crate) async fn docker_cli(image: &str, command: &str) -> Result<Duration> {
    let started = Instant::now();
    let status = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            command,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .context("cannot run the docker CLI")?;
    if !status.success() {
        bail!("docker run {image} {command:?} failed: {status}");
    }
    Ok(started.elapsed())
}

/// `docker run … | cat >/dev/null` through a real pipe and a real `cat`.
pub(crate) async fn docker_cli_piped(image: &str, command: &str) -> Result<Duration> {
    let started = Instant::now();
    let pipeline =
        format!("docker run --rm --network none {image} sh -c '{command}' | cat >/dev/null");
    let status = Command::new("sh")
        .args(["-c", &pipeline])
        .status()
        .await
        .context("cannot run sh")?;
    if !status.success() {
        bail!("{pipeline} failed: {status}");
    }
    Ok(started.elapsed())
}

/// The Engine API floor: create, start, wait (and remove, as `--rm` and the agent do) one
/// container running `true`, no network, over one connection pool.
pub(crate) async fn engine_floor(docker: &Docker, image: &str) -> Result<Duration> {
    let started = Instant::now();
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        cmd: Some(vec!["true".to_owned()]),
        labels: Some(HashMap::from([(
            "quickcmd.bench".to_owned(),
            "floor".to_owned(),
        )])),
        host_config: Some(HostConfig {
            network_mode: Some("none".to_owned()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let id = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            body,
        )
        .await
        .context("create")?
        .id;
    docker.start_container(&id, None).await.context("start")?;
    let options = WaitContainerOptionsBuilder::new()
        .condition("not-running")
        .build();
    let mut wait = docker.wait_container(&id, Some(options));
    while let Some(step) = wait.next().await {
        step.context("wait")?;
    }
    let remove = RemoveContainerOptionsBuilder::new().force(true).build();
    docker
        .remove_container(&id, Some(remove))
        .await
        .context("remove")?;
    Ok(started.elapsed())
}
