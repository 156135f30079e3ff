//! The QuickCMD agent as a library: the binary in `main.rs` only parses flags and calls in.
//! See docs/ARCHITECTURE.md for the path of a job through these modules.
//!
//! The public surface is what `main.rs` uses: [`server::run`], the config, the audit log
//! (for `audit verify` / `audit list`) and the clock's formatting. Everything else is
//! internal to the crate. [`fuzzing`] is a narrow, hidden surface for the targets under
//! `fuzz/` (the output chunker and cap, `since`, the config text), not an API.

mod admission;
mod api;
pub mod audit;
pub mod clock;
pub mod config;
mod connection;
mod db;
mod flood;
#[doc(hidden)]
pub mod fuzzing;
mod metrics;
mod privileges;
mod queue;
mod runner;
pub mod server;

/// The paths the router serves, for the test that holds `docs/openapi.yaml` against them.
pub use api::route_paths;
mod state;
mod store;
mod stream;
mod tls;
