//! QuickCMD protocol v1 and its optional v1.1 additions: wire types, the bytes that are
//! signed (raw and Go-canonical), signature checks, read auth, audit witnesses and error
//! codes.
//!
//! Invariant: this crate does no I/O and knows no runtime; agent and controller share it,
//! so the two sides cannot disagree about what was signed.

//! The crate's face is the list of `pub use` below: each item has that one path. `json`
//! (the byte-exact JSON reader), `canonical` (the Go writer) and `reason` (the
//! `result.reason` strings) are namespaces of their own and are reached only through them.

pub mod canonical;
mod error;

mod audit;
mod encoding;
mod extension;
pub mod json;
mod payload;
mod secret;
mod sign;
mod types;

pub use audit::{
    chain_link_hash, chain_range, verify_witness, witness_mac, AuditChain, AuditWitness,
    ChainError, ChainRow, CHAIN_VERSION_CONTENT, CHAIN_VERSION_DIGEST, MAX_CHAIN_ROWS,
    WITNESS_CONTEXT,
};
pub use encoding::{DecodeError, Encoding, EncodingError};
pub use error::{ErrorBody, ErrorCode};
pub use extension::{
    is_valid_requested_by, EXTENSION_FIELDS, MAX_REQUESTED_BY_CHARS, MAX_STDIN_BYTES,
};
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
    SubmitResponse, WhoAmI,
};
