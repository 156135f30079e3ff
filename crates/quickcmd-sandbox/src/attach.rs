//! Attach to a created container's stdout and stderr, and forward the demultiplexed stream to
//! the job's output channel chunk by chunk as the engine delivers it.
//!
//! Attaching happens before start, so even the first byte a fast command writes is seen.

use std::pin::Pin;

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::AttachContainerOptionsBuilder;
use bollard::Docker;
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::error::{engine_message, SandboxError};
use crate::spec::OutputChunk;

/// The container's multiplexed stdout/stderr, decoded into frames.
pub(crate) type AttachedOutput =
    Pin<Box<dyn Stream<Item = Result<LogOutput, BollardError>> + Send>>;

/// What the forwarder saw, for the job's trace.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ForwardSummary {
    pub(crate) stdout_bytes: u64,
    pub(crate) stderr_bytes: u64,
    /// The receiver went away; later output was read (so the container never blocks on a
    /// full pipe) and dropped.
    pub(crate) receiver_dropped: bool,
}

/// The write half of an attach with stdin: what is written reaches the container's stdin;
/// shutting it down closes that stdin for good (the container is `stdin_once`).
pub(crate) type AttachedInput = Pin<Box<dyn AsyncWrite + Send>>;

/// Attaches to `container_id`'s stdout and stderr, and its stdin when `with_stdin`, live only
/// (`logs=false`). Call before start; the output stream ends when the container's output is
/// closed.
pub(crate) async fn attach(
    docker: &Docker,
    container_id: &str,
    job_id: &str,
    with_stdin: bool,
) -> Result<(Option<AttachedInput>, AttachedOutput), SandboxError> {
    let options = AttachContainerOptionsBuilder::new()
        .stream(true)
        .stdout(true)
        .stderr(true)
        .stdin(with_stdin)
        .logs(false)
        .build();
    let attached = docker
        .attach_container(container_id, Some(options))
        .await
        .map_err(|err| SandboxError::engine("attach to container", job_id, &err))?;
    // Without stdin the write half has nothing to say; dropping it closes nothing the job sees.
    let input = with_stdin.then_some(attached.input);
    Ok((input, attached.output))
}

/// Writes `bytes` to the container's stdin, then closes it so the job reads end of file.
/// A job that exits without reading everything makes the write fail; that is its business,
/// so the error is only traced.
pub(crate) async fn write_stdin(mut input: AttachedInput, bytes: Vec<u8>, job_id: String) {
    let written = async {
        input.write_all(&bytes).await?;
        input.flush().await?;
        input.shutdown().await
    };
    if let Err(err) = written.await {
        tracing::debug!(%job_id, error = %err, "stdin not fully delivered");
    }
}

/// Forwards every frame of `attached` into `output` until the stream ends. Awaiting `send` on
/// the bounded channel is the backpressure: a slow reader slows the job's writes down.
pub(crate) async fn forward_output(
    mut attached: AttachedOutput,
    output: mpsc::Sender<OutputChunk>,
    job_id: String,
) -> ForwardSummary {
    let mut summary = ForwardSummary::default();
    while let Some(frame) = attached.next().await {
        let chunk = match frame {
            Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                summary.stdout_bytes += message.len() as u64;
                OutputChunk::Stdout(message)
            }
            Ok(LogOutput::StdErr { message }) => {
                summary.stderr_bytes += message.len() as u64;
                OutputChunk::Stderr(message)
            }
            Ok(LogOutput::StdIn { .. }) => continue,
            Err(err) => {
                tracing::warn!(%job_id, error = %engine_message(&err), "attach stream failed; later output is lost");
                break;
            }
        };
        if summary.receiver_dropped || is_empty(&chunk) {
            continue;
        }
        if output.send(chunk).await.is_err() {
            summary.receiver_dropped = true;
        }
    }
    summary
}

fn is_empty(chunk: &OutputChunk) -> bool {
    match chunk {
        OutputChunk::Stdout(bytes) | OutputChunk::Stderr(bytes) => bytes.is_empty(),
    }
}
