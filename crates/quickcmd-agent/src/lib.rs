//! The QuickCMD agent as a library: the binary in `main.rs` only parses flags and calls in.
//! See docs/ARCHITECTURE.md for the path of a job through these modules.

pub mod api;
pub mod audit;
pub mod clock;
pub mod config;
pub mod connection;
pub mod jobs;
pub mod metrics;
pub mod privileges;
pub mod server;
pub mod state;
pub mod store;
pub mod stream;
pub mod tls;
