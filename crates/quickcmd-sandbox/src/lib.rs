//! The sandbox layer: each job's shell command runs in its own single-use, locked-down Docker
//! container, driven through the Engine API (bollard).
//!
//! Invariants:
//! - every container is created with all capabilities dropped, no-new-privileges, the default
//!   seccomp profile, a read-only root, size-limited tmpfs for `/tmp` and the workdir, memory
//!   (without extra swap), CPU and PID limits, and no network unless asked;
//! - every container is removed before `run` returns, whatever happened;
//! - every container carries `quickcmd.agent`, `quickcmd.job` and `quickcmd.managed` labels,
//!   so an agent can remove its leftovers at start.
//!
//! One file per engine verb (`image`, `create`, `attach`, `start`, `wait`, `kill`, `inspect`,
//! `remove`); `run` composes them.

mod attach;
mod client;
mod create;
mod error;
mod image;
mod inspect;
mod kill;
mod remove;
mod run;
mod spec;
mod start;
mod wait;

pub use client::{DockerSandbox, DEFAULT_DOCKER_HOST};
pub use create::{LABEL_AGENT, LABEL_JOB, LABEL_MANAGED};
pub use error::SandboxError;
pub use spec::{
    BindMount, EndReason, OutputChunk, SandboxOutcome, SandboxSpec, CANCELLED_EXIT_CODE,
    DEFAULT_WORKDIR, NOT_RUN_EXIT_CODE, TIMEOUT_EXIT_CODE,
};
