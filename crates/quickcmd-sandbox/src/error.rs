//! `SandboxError`, and the one place that turns a bollard error into the engine's own words.

use bollard::errors::Error as BollardError;

/// Why a sandbox operation failed. Messages carry the engine's text, which may name host
/// paths: log and audit them, do not hand them to remote clients verbatim.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The docker host names a transport this crate does not speak.
    #[error("unsupported docker host {docker_host:?}: expected unix://, tcp:// or http://")]
    UnsupportedDockerHost { docker_host: String },
    /// The engine could not be reached, or did not answer the version handshake or a ping.
    #[error("cannot reach the docker engine at {docker_host}: {message}")]
    Connect {
        docker_host: String,
        message: String,
    },
    /// The spec would weaken the sandbox or cannot be expressed to the engine.
    #[error("invalid sandbox spec for job {job_id}: {message}")]
    InvalidSpec { job_id: String, message: String },
    /// The image is not present locally and pulling it failed; `message` is the engine's.
    #[error("image {image} is not available: {message}")]
    ImageUnavailable { image: String, message: String },
    /// An Engine API call for one job failed; `message` is the engine's.
    #[error("docker engine could not {action} for job {job_id}: {message}")]
    Engine {
        action: &'static str,
        job_id: String,
        message: String,
    },
    /// Leftover containers of an agent could not be listed or removed.
    #[error("could not remove the containers of agent {agent_id}: {message}")]
    Cleanup { agent_id: String, message: String },
}

impl SandboxError {
    pub(crate) fn engine(action: &'static str, job_id: &str, err: &BollardError) -> Self {
        Self::Engine {
            action,
            job_id: job_id.to_owned(),
            message: engine_message(err),
        }
    }
}

/// The engine's own message when the engine sent one, else bollard's description of the
/// transport failure. Never the `Debug` form of the wrapper.
pub(crate) fn engine_message(err: &BollardError) -> String {
    match err {
        BollardError::DockerResponseServerError { message, .. } if !message.is_empty() => {
            message.clone()
        }
        BollardError::DockerStreamError { error } => error.clone(),
        BollardError::DockerContainerWaitError { error, .. } if !error.is_empty() => error.clone(),
        other => other.to_string(),
    }
}

/// The HTTP status the engine answered with, if the failure was an engine answer at all.
pub(crate) fn engine_status(err: &BollardError) -> Option<u16> {
    match err {
        BollardError::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_message_is_the_engines_text() {
        let err = BollardError::DockerResponseServerError {
            status_code: 404,
            message: "No such image: nope:latest".to_owned(),
        };
        assert_eq!(engine_message(&err), "No such image: nope:latest");
        assert_eq!(engine_status(&err), Some(404));

        let err = BollardError::DockerStreamError {
            error: "pull access denied".to_owned(),
        };
        assert_eq!(engine_message(&err), "pull access denied");
        assert_eq!(engine_status(&err), None);
    }

    #[test]
    fn empty_engine_message_falls_back_to_the_description() {
        let err = BollardError::DockerResponseServerError {
            status_code: 500,
            message: String::new(),
        };
        assert!(engine_message(&err).contains("500"));
    }
}
