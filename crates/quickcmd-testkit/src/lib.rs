//! The QuickCMD test kit: what the agent's and the controller's integration tests need to
//! drive the real thing — the real `quickcmd-agent` binary on 127.0.0.1 (port 0), real TLS,
//! the real Docker engine, the real `quickcmd` CLI — and nothing that fakes any of it.
//! Dev-only (`publish = false`): a dev-dependency of `quickcmd-agent` and `quickcmd`.
//!
//! One central type, [`TestAgent`] (a running agent process with its temp dir), and one module
//! per role. The role modules add their methods to `TestAgent` in their own `impl` blocks; the
//! central type never imports them back (linkerd2-proxy's harness is laid out the same way).
//!
//! - [`process`] — finds the binaries cargo built ([`agent_bin`], [`quickcmd_bin`]); starts,
//!   restarts, signals and kills a [`TestAgent`]; waits for log lines; copies child streams
//!   ([`run_bounded`]); polls for a condition ([`eventually`]). Dropping a `TestAgent` stops
//!   it (SIGTERM, then SIGKILL) and removes any sandbox labelled with its agent id.
//! - [`tls`] — one self-signed certificate per test process and the reqwest / rustls clients
//!   whose only trust anchor is that certificate; [`TlsFiles`] for agents started on a
//!   certificate made elsewhere (`quickcmd agent gen-cert`).
//! - [`docker`] — [`ensure_docker`] (fails, never skips; builds the sandbox image if absent)
//!   and [`containers`] (ids of containers matching a label filter).
//! - [`engine`] — [`PrivateEngine`], a `dockerd` of the test's own that it may stop and
//!   start (the shared engine is never stopped).
//! - [`http`] — payloads and signed bodies, `POST /api/v1/jobs`, signed reads, polling a job to
//!   a state, `/metrics`; [`Reply`] keeps an answer as text with `assert_error` /
//!   `assert_accepted`.
//! - [`ws`] — WebSocket subscribe (signed or with any `Authorization`), [`next_frame`],
//!   [`read_to_close`] and the [`Transcript`] of what a subscriber saw.
//! - [`audit`] — audit rows through `quickcmd-agent audit list --json`, the refusal row
//!   assertion, `audit verify`.
//! - [`config`] — the agent's YAML config as a builder ([`Config`]) and the secrets the kit
//!   gives controllers.
//! - [`controller`] — the controller's world for end-to-end tests — an [`AgentSpec`] started
//!   on a `gen-cert` certificate, a [`Controller`] config and inventory, output helpers.
//! - [`proxy`] — [`CutProxy`], a loopback TCP proxy whose live connections can be cut.
//!
//! Nothing waits for a fixed time to pass before asserting: waits poll for a state and only
//! give up after [`PATIENCE`], with the agent's log in the panic message. Async tests run on
//! a multi-threaded runtime so that dropping a `TestAgent` (a blocking graceful stop) never
//! starves the client's connection tasks.

pub mod audit;
pub mod config;
pub mod controller;
pub mod docker;
pub mod engine;
pub mod http;
pub mod process;
pub mod proxy;
pub mod tls;
pub mod ws;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use config::{own_secret, Config, SHARED_SECRET};
pub use controller::{
    gen_key, json_lines, show, text, write_secret, AgentSpec, Controller, Entry, Grant, CONTROLLER,
};
pub use docker::{assert_no_containers_soon, containers, ensure_docker};
pub use engine::PrivateEngine;
pub use http::{body_from, metric, object, payload, replace_once, signed_body, Reply};
pub use process::{agent_bin, eventually, quickcmd_bin, rss_kib, run_bounded, TestAgent};
pub use proxy::CutProxy;
pub use tls::TlsFiles;
pub use ws::{next_frame, read_to_close, Transcript, Ws};

/// The sandbox image every test agent allows.
pub const IMAGE: &str = "quickcmd-sandbox:latest";

/// Longest any single wait may take before the test gives up (a hang guard, not a timing
/// assertion: every wait returns as soon as its condition holds).
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Seconds since the Unix epoch, as payload timestamps count them.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs() as i64
}

/// A name no other test, run or engineer on this Docker engine uses.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .subsec_nanos();
    format!(
        "{prefix}-{}-{}-{:08x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        nanos
    )
}

/// SHA-256 hex, for comparing output hashes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
