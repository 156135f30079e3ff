//! Audit witnesses in the history database: for every job result an agent vouched for, the
//! audit row that recorded it (`seq`) and that row's hash, so `quickcmd audit verify` can
//! later prove the agent's log still holds them.
//!
//! The table is created if missing when the history opens, so a history file written
//! before witnesses existed gains it on first use; it has its own statement, apart from the
//! `runs` schema and its version.

use rusqlite::{params, Connection};
use serde::Serialize;

use super::{now_rfc3339, History, HistoryError};

pub(super) const WITNESS_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_witnesses (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    agent       TEXT    NOT NULL,
    agent_url   TEXT    NOT NULL,
    agent_id    TEXT    NOT NULL,
    job_id      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    head        TEXT    NOT NULL,
    mac         TEXT    NOT NULL,
    received_at TEXT    NOT NULL,
    UNIQUE (agent, seq, head)
);
CREATE INDEX IF NOT EXISTS audit_witnesses_by_agent ON audit_witnesses (agent, seq);
";

/// One witness as the history keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredWitness {
    /// The agent's name in the inventory.
    pub agent: String,
    pub agent_url: String,
    /// The `agent_id` the witness MAC was made for.
    pub agent_id: String,
    pub job_id: String,
    pub seq: u64,
    /// The row's hash, lowercase hex.
    pub head: String,
    pub mac: String,
    /// RFC 3339 UTC, when this controller received it.
    pub received_at: String,
}

fn witness_from_sql(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredWitness> {
    Ok(StoredWitness {
        agent: row.get(0)?,
        agent_url: row.get(1)?,
        agent_id: row.get(2)?,
        job_id: row.get(3)?,
        seq: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
        head: row.get(5)?,
        mac: row.get(6)?,
        received_at: row.get(7)?,
    })
}

pub(super) fn create(connection: &Connection) -> rusqlite::Result<()> {
    connection.execute_batch(WITNESS_SCHEMA)
}

impl History {
    /// Keeps a witness the caller has checked. The same witness twice is kept once.
    pub async fn record_witness(&self, witness: StoredWitness) -> Result<(), HistoryError> {
        self.call(move |connection| {
            connection.execute(
                "INSERT OR IGNORE INTO audit_witnesses (agent, agent_url, agent_id, job_id, \
                 seq, head, mac, received_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    witness.agent,
                    witness.agent_url,
                    witness.agent_id,
                    witness.job_id,
                    i64::try_from(witness.seq).unwrap_or(i64::MAX),
                    witness.head.to_ascii_lowercase(),
                    witness.mac,
                    if witness.received_at.is_empty() {
                        now_rfc3339()
                    } else {
                        witness.received_at
                    },
                ],
            )?;
            Ok(())
        })
        .await
    }

    /// Every witness of `agent`, oldest row first.
    pub async fn witnesses(&self, agent: &str) -> Result<Vec<StoredWitness>, HistoryError> {
        let agent = agent.to_string();
        self.call(move |connection| {
            let mut statement = connection.prepare(
                "SELECT agent, agent_url, agent_id, job_id, seq, head, mac, received_at \
                 FROM audit_witnesses WHERE agent = ?1 ORDER BY seq, id",
            )?;
            let rows = statement.query_map(params![agent], witness_from_sql)?;
            rows.collect()
        })
        .await
    }

    /// The names of the agents this history holds witnesses of, sorted.
    pub async fn witnessed_agents(&self) -> Result<Vec<String>, HistoryError> {
        self.call(|connection| {
            let mut statement =
                connection.prepare("SELECT DISTINCT agent FROM audit_witnesses ORDER BY agent")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            rows.collect()
        })
        .await
    }

    /// The `agent_id` the newest witness of `agent` was made for: whom this controller
    /// expects to answer under that name.
    pub async fn witnessed_agent_id(&self, agent: &str) -> Result<Option<String>, HistoryError> {
        let agent = agent.to_string();
        self.call(move |connection| {
            use rusqlite::OptionalExtension;
            connection
                .query_row(
                    "SELECT agent_id FROM audit_witnesses WHERE agent = ?1 \
                     ORDER BY id DESC LIMIT 1",
                    params![agent],
                    |row| row.get(0),
                )
                .optional()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn witness(agent: &str, seq: u64, head: &str) -> StoredWitness {
        StoredWitness {
            agent: agent.into(),
            agent_url: format!("https://{agent}:8443/"),
            agent_id: format!("{agent}-id"),
            job_id: format!("job-{seq}"),
            seq,
            head: head.into(),
            mac: "ab".into(),
            received_at: String::new(),
        }
    }

    #[tokio::test]
    async fn witnesses_are_kept_per_agent_and_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.db");
        // A history file from before witnesses: the runs table only.
        drop(History::open(&path).await.expect("create"));
        Connection::open(&path)
            .and_then(|old| old.execute_batch("DROP TABLE audit_witnesses;"))
            .expect("make it an older file");
        let history = History::open(&path).await.expect("open adds the table");
        for (agent, seq, head) in [
            ("b", 9, "FF"),
            ("a", 7, "aa"),
            ("a", 3, "cc"),
            ("a", 7, "aa"),
        ] {
            history
                .record_witness(witness(agent, seq, head))
                .await
                .expect("record");
        }
        let a = history.witnesses("a").await.expect("read");
        assert_eq!(
            a.iter()
                .map(|w| (w.seq, w.head.as_str()))
                .collect::<Vec<_>>(),
            [(3, "cc"), (7, "aa")]
        );
        assert!(!a[0].received_at.is_empty());
        assert_eq!(history.witnesses("b").await.expect("read")[0].head, "ff");
        assert_eq!(
            history.witnessed_agents().await.expect("agents"),
            ["a", "b"]
        );
        assert_eq!(
            history
                .witnessed_agent_id("a")
                .await
                .expect("id")
                .as_deref(),
            Some("a-id")
        );
        assert_eq!(history.witnessed_agent_id("z").await.expect("id"), None);
    }
}
