//! Make sure a job's image is present: use the local one, else pull it once, and report a
//! failed pull with the engine's own message.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bollard::query_parameters::CreateImageOptionsBuilder;
use bollard::Docker;
use futures_util::StreamExt;

use crate::client::DockerSandbox;
use crate::error::{engine_message, engine_status, SandboxError};

/// How long an image seen present is trusted without asking the engine again. A job whose
/// image was deleted meanwhile fails at create with the engine's message, and the entry is
/// forgotten at once.
const IMAGE_SEEN_FOR: Duration = Duration::from_secs(30);

/// Images recently seen present, shared by every clone of a `DockerSandbox`: the cold path
/// skips one engine round trip per job.
#[derive(Debug, Default)]
pub(crate) struct SeenImages(Mutex<HashMap<String, Instant>>);

impl SeenImages {
    fn fresh(&self, image: &str) -> bool {
        let seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(image)
            .is_some_and(|at| at.elapsed() < IMAGE_SEEN_FOR)
    }

    fn saw(&self, image: &str) {
        let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
        seen.retain(|_, at| at.elapsed() < IMAGE_SEEN_FOR);
        seen.insert(image.to_owned(), Instant::now());
    }

    fn forget(&self, image: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(image);
    }
}

impl DockerSandbox {
    /// [`ensure_image`], skipped when `image` was seen present in the last
    /// [`IMAGE_SEEN_FOR`].
    pub(crate) async fn ensure_image(&self, image: &str, job_id: &str) -> Result<(), SandboxError> {
        if self.seen_images.fresh(image) {
            return Ok(());
        }
        ensure_image(&self.docker, image, job_id).await?;
        self.seen_images.saw(image);
        Ok(())
    }

    /// Drops `image` from the seen images (a create failed: it may be gone).
    pub(crate) fn forget_image(&self, image: &str) {
        self.seen_images.forget(image);
    }
}

/// A pull that has not finished by then is abandoned; the job fails with `ImageUnavailable`.
const PULL_TIMEOUT: Duration = Duration::from_secs(300);

/// Returns once `image` exists locally, pulling it if needed.
pub(crate) async fn ensure_image(
    docker: &Docker,
    image: &str,
    job_id: &str,
) -> Result<(), SandboxError> {
    if image_present(docker, image, job_id).await? {
        return Ok(());
    }
    tracing::info!(job_id, image, "image not present locally, pulling");
    match tokio::time::timeout(PULL_TIMEOUT, pull(docker, image)).await {
        Ok(Ok(())) => {}
        Ok(Err(message)) => {
            return Err(SandboxError::ImageUnavailable {
                image: image.to_owned(),
                message,
            })
        }
        Err(_) => {
            return Err(SandboxError::ImageUnavailable {
                image: image.to_owned(),
                message: format!("pull did not finish within {} s", PULL_TIMEOUT.as_secs()),
            })
        }
    }
    if image_present(docker, image, job_id).await? {
        Ok(())
    } else {
        Err(SandboxError::ImageUnavailable {
            image: image.to_owned(),
            message: "the pull finished but the image is still not present".to_owned(),
        })
    }
}

async fn image_present(docker: &Docker, image: &str, job_id: &str) -> Result<bool, SandboxError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(true),
        Err(err) if engine_status(&err) == Some(404) => Ok(false),
        Err(err) => Err(SandboxError::engine("inspect image", job_id, &err)),
    }
}

/// Pulls `image`; the error is the engine's message, whether it came as an HTTP error or
/// mid-stream as an `errorDetail`.
async fn pull(docker: &Docker, image: &str) -> Result<(), String> {
    let (repository, tag) = split_reference(image);
    let options = CreateImageOptionsBuilder::new()
        .from_image(repository)
        .tag(tag)
        .build();
    let mut progress = docker.create_image(Some(options), None, None);
    while let Some(step) = progress.next().await {
        step.map_err(|err| engine_message(&err))?;
    }
    Ok(())
}

/// Splits `name[:tag]` or `name@digest` as the engine's pull endpoint wants it. Without a tag
/// the engine would pull every tag of the repository, so `latest` is made explicit.
fn split_reference(image: &str) -> (&str, &str) {
    if let Some((repository, digest)) = image.split_once('@') {
        return (repository, digest);
    }
    let name_start = image.rfind('/').map_or(0, |slash| slash + 1);
    match image[name_start..].rfind(':') {
        Some(colon) => (
            &image[..name_start + colon],
            &image[name_start + colon + 1..],
        ),
        None => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(image: &str, repository: &str, tag: &str) {
        assert_eq!(split_reference(image), (repository, tag), "{image}");
    }

    #[test]
    fn split_reference_table() {
        check("alpine", "alpine", "latest");
        check("alpine:3.20", "alpine", "3.20");
        check("quickcmd-sandbox:latest", "quickcmd-sandbox", "latest");
        check(
            "registry.local:5000/team/tool",
            "registry.local:5000/team/tool",
            "latest",
        );
        check(
            "registry.local:5000/team/tool:v1",
            "registry.local:5000/team/tool",
            "v1",
        );
        check("alpine@sha256:0123abcd", "alpine", "sha256:0123abcd");
    }
}
