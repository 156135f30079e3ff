//! The sandbox layer: each job's shell command runs in its own single-use, locked-down Docker
//! container, driven through the Engine API (bollard).
//!
//! Invariants:
//! - every container is created with all capabilities dropped, no-new-privileges, the default
//!   seccomp profile, a read-only root, size-limited tmpfs for `/tmp` and the workdir, memory
//!   (without extra swap), CPU and PID limits, and no network unless asked;
//! - every container is removed before `run` returns, whatever happened; `run_keeping`
//!   hands a stopped container back as a [`Removal`] (removed when awaited or dropped), so
//!   the caller can send the result before paying for the removal;
//! - every container carries `quickcmd.agent` and `quickcmd.managed` labels, so an agent can
//!   remove its leftovers at start; cold containers also carry `quickcmd.job`, warm pool
//!   containers (made before their job exists) `quickcmd.pool` instead — the container id
//!   is sent on `started` and returned in the outcome either way.
//!
//! - a container serves one job and is never reused; warm pool containers (`pool`) are only
//!   started ahead of time, and the exit code always comes from the engine's wait.
//!
//! One file per engine verb (`image`, `create`, `attach`, `start`, `update`, `wait`, `kill`,
//! `inspect`, `remove`); `run` composes them for a cold container, `pooled` for a warm one;
//! `pool` keeps the warm pool filled, `pool_config` shares it between clones and replaces it
//! when the config changes, and `script` writes what a warm container reads.
//!
//! Limits of the engines this was built against (Docker Engine 20.10, API 1.41, runc,
//! cgroup v1, inside a container): `docker run --privileged` fails there, while
//! `--cap-add SYS_ADMIN` works; `docker update` changes memory, swap, CPUs and PIDs of a
//! running container, nothing else.

mod attach;
mod client;
mod create;
mod error;
mod image;
mod inspect;
mod kill;
mod pool;
mod pool_config;
mod pooled;
mod remove;
mod run;
mod script;
mod spec;
mod start;
mod update;
mod wait;

pub use client::{DockerSandbox, DEFAULT_DOCKER_HOST};
pub use create::{LABEL_AGENT, LABEL_JOB, LABEL_MANAGED, LABEL_POOL, LABEL_POOL_INSTANCE};
pub use error::SandboxError;
pub use pool::{PoolProfile, WarmPoolStats};
pub use remove::Removal;
pub use spec::{
    BindMount, EndReason, OutputChunk, SandboxOutcome, SandboxSpec, CANCELLED_EXIT_CODE,
    DEFAULT_WORKDIR, NOT_RUN_EXIT_CODE, TIMEOUT_EXIT_CODE,
};
