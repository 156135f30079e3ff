//! QuickCMD protocol v1: wire types, the bytes that are signed (raw and Go-canonical),
//! signature checks, read auth and error codes.
//!
//! Invariant: this crate does no I/O and knows no runtime; agent and controller share it,
//! so the two sides cannot disagree about what was signed.

pub mod canonical;
pub mod error;
pub mod json;
pub mod payload;
pub mod secret;
pub mod sign;
pub mod types;

pub use error::{ErrorBody, ErrorCode};
pub use payload::{
    parse_submit, JobPayload, PayloadError, SandboxRequest, SubmitRequest, MAX_BODY_BYTES,
};
pub use secret::Secret;
pub use sign::{verify_submit, ReadAuth, SignatureRefusal, SignedForm, ALGORITHM, AUTH_SCHEME};
pub use types::{
    Health, JobList, JobResult, JobStatus, JobSummary, JobView, LogFrame, StreamName,
    SubmitResponse,
};
