//! `--output json`: one JSON object per line, one per event, in the order things
//! happened, and a final `summary` object. Every object has `event` and `run_id`:
//!
//! - `submitted` — `host`, `job_id`;
//! - `output` — `host`, `stream` (`stdout`/`stderr`) and the bytes: `data` when they are
//!   UTF-8, else `data_b64` (standard base64), so nothing is lost or replaced;
//! - `notice` — `host` (or none, about the run) and `message` (retries, queueing, …);
//! - `host` — the host's final report (the fields of `HostReport`: status, exit code,
//!   captured `stdout`/`stderr`, and when the capture was cut, `stdout_truncated: true`
//!   with the whole stream's `stdout_bytes` and `stdout_sha256`);
//! - `summary` — `hosts`, one count per tally, and the `exit_code` the command ends with.

use base64::Engine as _;
use quickcmd_protocol::StreamName;
use serde_json::{json, Value};

use crate::report::{HostReport, Tally};

/// The bytes of an output event: `data` when they are UTF-8, else `data_b64`.
pub fn data_fields(bytes: &[u8]) -> (&'static str, Value) {
    match std::str::from_utf8(bytes) {
        Ok(text) => ("data", json!(text)),
        Err(_) => (
            "data_b64",
            json!(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

pub fn output_event(run_id: Option<&str>, host: &str, stream: StreamName, bytes: &[u8]) -> Value {
    let (key, data) = data_fields(bytes);
    let mut event = json!({
        "event": "output",
        "run_id": run_id,
        "host": host,
        "stream": stream,
    });
    event[key] = data;
    event
}

pub fn host_event(run_id: Option<&str>, report: &HostReport) -> Value {
    let mut event = serde_json::to_value(report).unwrap_or_else(|_| json!({}));
    event["event"] = json!("host");
    event["run_id"] = json!(run_id);
    event
}

/// The final object: counts per tally and the exit code.
pub fn summary_json(run_id: Option<&str>, reports: &[HostReport], exit_code: u8) -> Value {
    let mut summary = json!({
        "event": "summary",
        "run_id": run_id,
        "hosts": reports.len(),
        "exit_code": exit_code,
    });
    for tally in Tally::ALL {
        summary[tally.as_str()] = json!(reports.iter().filter(|r| r.tally() == tally).count());
    }
    summary
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::HostStatus;

    #[test]
    fn bytes_are_carried_losslessly() {
        let text = output_event(Some("r"), "a", StreamName::Stdout, "héllo\n".as_bytes());
        assert_eq!(text["data"], "héllo\n");
        assert!(text.get("data_b64").is_none());
        let binary = output_event(None, "a", StreamName::Stderr, &[0xff, 0x00, b'x']);
        assert_eq!(binary["data_b64"], "/wB4");
        assert!(binary.get("data").is_none());
        assert_eq!(binary["stream"], "stderr");
    }

    #[test]
    fn summary_counts_every_tally() {
        let ok = HostReport {
            exit_code: Some(0),
            ..HostReport::empty("a", "u", HostStatus::Completed)
        };
        let down = HostReport::empty("b", "u", HostStatus::Unreachable);
        let summary = summary_json(Some("r"), &[ok, down], 255);
        assert_eq!(summary["event"], "summary");
        assert_eq!(summary["hosts"], 2);
        assert_eq!(summary["succeeded"], 1);
        assert_eq!(summary["unreachable"], 1);
        assert_eq!(summary["skipped"], 0);
        assert_eq!(summary["exit_code"], 255);
    }
}
