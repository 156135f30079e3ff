//! QuickCMD protocol v1: wire types, the bytes that are signed (raw and Go-canonical),
//! signature checks, read auth and error codes.
//!
//! Invariant: this crate does no I/O and knows no runtime; agent and controller share it,
//! so the two sides cannot disagree about what was signed.

//! The crate's face is the list of `pub use` below: each item has that one path. `json`
//! (the byte-exact JSON reader), `canonical` (the Go writer) and `reason` (the
//! `result.reason` strings) are namespaces of their own and are reached only through them.

pub mod canonical;
mod error;
pub mod json;
mod payload;
mod secret;
mod sign;
mod types;

pub use error::{ErrorBody, ErrorCode};
pub use payload::{
    is_valid_job_id, parse_submit, JobPayload, PayloadError, SandboxRequest, SubmitRequest,
    MAX_BODY_BYTES,
};
pub use secret::Secret;
pub use sign::{
    sign, verify_submit, ReadAuth, SignatureRefusal, SignedForm, ALGORITHM, AUTH_SCHEME,
};
pub use types::reason;
pub use types::{
    Health, JobList, JobResult, JobStatus, JobSummary, JobView, LogFrame, StreamName,
    SubmitResponse,
};
