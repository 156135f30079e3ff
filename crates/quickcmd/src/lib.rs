//! QuickCMD controller: the client library under the `quickcmd` command.
//!
//! A job is signed per agent ([`job`]), submitted and followed by a [`Client`] (retries,
//! read auth, WebSocket resume), fanned out over many agents ([`fanout`]), recorded in
//! the controller's own [`history`], described host by host in a [`report`], and shown by
//! [`output`]. [`config`] and [`target`] turn `controller.yaml` and the command line into
//! agents; [`tls`] decides whom we trust. The [`cli`] module is the command line itself; `main.rs` only calls it.
//!
//! Invariants: every submission is in the history before it is sent; a retry resends the
//! exact signed bytes; no agent can stall another; nothing blocks an async thread (SQLite
//! runs on the blocking pool, output on its own thread).

#![forbid(unsafe_code)]

pub mod audit;
pub mod cli;
pub mod client;
pub mod config;
pub mod fanout;
pub mod history;
pub mod job;
pub mod output;
pub mod report;
pub mod secret;
pub mod target;
pub mod tls;
pub mod units;

pub use client::{AgentEndpoint, Client, ClientError, ClientOptions, LogStream, RetryPolicy};
pub use config::{ConfigError, ControllerConfig};
pub use fanout::{MaxErrors, RunOptions};
pub use history::{History, HistoryRow};
pub use job::{JobSpec, SignedJob};
pub use report::{HostReport, HostStatus, RunEvent, Tally};
pub use secret::Secret;
pub use tls::Trust;
