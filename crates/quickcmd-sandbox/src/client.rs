//! `DockerSandbox`: the connection to one Docker engine, with the API version negotiated down
//! to what the engine speaks, and the health ping.

use std::sync::Arc;
use std::time::Duration;

use bollard::{Docker, API_DEFAULT_VERSION};

use crate::error::{engine_message, SandboxError};
use crate::image::SeenImages;
use crate::pool_config::PoolSlot;

/// The socket used when neither the caller nor `DOCKER_HOST` names one.
pub const DEFAULT_DOCKER_HOST: &str = "unix:///var/run/docker.sock";

/// Upper bound for the engine to answer one request's headers. Streams (attach, wait) answer
/// their headers at once, so this does not bound a job's run time.
const REQUEST_TIMEOUT_SECONDS: u64 = 60;
/// A health check must answer quickly or report the engine as down.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
const NEGOTIATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle to one Docker engine; cheap to clone, all clones share the connection pool.
#[derive(Debug, Clone)]
pub struct DockerSandbox {
    pub(crate) docker: Docker,
    docker_host: String,
    /// The warm pool (`with_warm_pool`, `reconfigure_warm_pool`), shared by all clones.
    pub(crate) pool: Arc<PoolSlot>,
    /// Images seen present lately (the cold path's image check, cached).
    pub(crate) seen_images: Arc<SeenImages>,
}

impl DockerSandbox {
    /// Connects to `docker_host` (`unix:///path`, a bare `/path`, `tcp://host:port` or
    /// `http://host:port`), or to `DOCKER_HOST`, or to the local socket, and negotiates the
    /// API version down to the engine's.
    pub async fn connect(docker_host: Option<&str>) -> Result<Self, SandboxError> {
        let docker_host = match docker_host {
            Some(host) => host.to_owned(),
            None => std::env::var("DOCKER_HOST")
                .ok()
                .filter(|host| !host.is_empty())
                .unwrap_or_else(|| DEFAULT_DOCKER_HOST.to_owned()),
        };
        let connected = if docker_host.starts_with("unix://") || docker_host.starts_with('/') {
            Docker::connect_with_unix(&docker_host, REQUEST_TIMEOUT_SECONDS, API_DEFAULT_VERSION)
        } else if docker_host.starts_with("tcp://") || docker_host.starts_with("http://") {
            Docker::connect_with_http(&docker_host, REQUEST_TIMEOUT_SECONDS, API_DEFAULT_VERSION)
        } else {
            return Err(SandboxError::UnsupportedDockerHost { docker_host });
        };
        let connect_error = |message: String| SandboxError::Connect {
            docker_host: docker_host.clone(),
            message,
        };
        let docker = connected.map_err(|err| connect_error(engine_message(&err)))?;
        let docker = tokio::time::timeout(NEGOTIATE_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| connect_error("the version handshake timed out".to_owned()))?
            .map_err(|err| connect_error(engine_message(&err)))?;
        let version = docker.client_version();
        tracing::debug!(%docker_host, api_version = %format!("{}.{}", version.major_version, version.minor_version), "connected to docker engine");
        Ok(Self {
            docker,
            docker_host,
            pool: Arc::default(),
            seen_images: Arc::default(),
        })
    }

    /// Succeeds when the engine answers `/_ping` within a few seconds.
    pub async fn ping(&self) -> Result<(), SandboxError> {
        let connect_error = |message: String| SandboxError::Connect {
            docker_host: self.docker_host.clone(),
            message,
        };
        tokio::time::timeout(PING_TIMEOUT, self.docker.ping())
            .await
            .map_err(|_| connect_error("ping timed out".to_owned()))?
            .map_err(|err| connect_error(engine_message(&err)))?;
        Ok(())
    }

    /// The host this handle talks to, as given or defaulted.
    pub fn docker_host(&self) -> &str {
        &self.docker_host
    }

    /// The Engine API version in use after negotiation, e.g. `"1.41"`.
    pub fn api_version(&self) -> String {
        let version = self.docker.client_version();
        format!("{}.{}", version.major_version, version.minor_version)
    }
}
