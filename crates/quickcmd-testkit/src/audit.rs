//! The agent's audit trail as the operator reads it: `quickcmd-agent audit list --json` and
//! `audit verify`, run against the test agent's own config.

use std::path::PathBuf;

use serde_json::{json, Value};

use crate::process::TestAgent;

impl TestAgent {
    /// The audit database in the agent's data dir.
    pub fn audit_db(&self) -> PathBuf {
        self.data_dir().join("agent-audit.db")
    }

    /// Every audit row, oldest first, through `quickcmd-agent audit list --json`.
    pub fn audit_rows(&self) -> Vec<Value> {
        let out = self
            .cli()
            .args(["audit", "list", "--json", "--limit", "1000000"])
            .output()
            .expect("run quickcmd-agent audit list");
        assert!(
            out.status.success(),
            "audit list failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line ({e}): {l}")))
            .collect()
    }

    /// Audit rows about one job, oldest first.
    pub fn audit_for(&self, job_id: &str) -> Vec<Value> {
        self.audit_rows()
            .into_iter()
            .filter(|r| r["job_id"] == json!(job_id))
            .collect()
    }

    /// The newest submission row.
    pub fn last_submission(&self) -> Value {
        self.audit_rows()
            .into_iter()
            .rev()
            .find(|r| r["kind"] == "submission")
            .expect("a submission row")
    }

    /// Asserts that the newest submission row is a refusal with this code, job id and
    /// controller (None: unknown, as for bodies that did not parse).
    #[track_caller]
    pub fn assert_refusal_audited(
        &self,
        code: &str,
        job_id: Option<&str>,
        controller_id: Option<&str>,
    ) -> Value {
        let row = self.last_submission();
        assert_eq!(row["accepted"], json!(false), "{row}");
        assert_eq!(row["code"], json!(code), "{row}");
        assert_eq!(row["job_id"], json!(job_id), "{row}");
        assert_eq!(row["controller_id"], json!(controller_id), "{row}");
        assert!(
            row["remote_addr"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{row}"
        );
        row
    }

    /// Runs `quickcmd-agent audit verify`; returns (exit code, stdout + stderr).
    pub fn audit_verify(&self) -> (i32, String) {
        let out = self
            .cli()
            .args(["audit", "verify"])
            .output()
            .expect("run quickcmd-agent audit verify");
        (
            out.status.code().unwrap_or(-1),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }
}
