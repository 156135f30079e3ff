//! Witnessed audit, the controller's side (protocol-v1 §5): checking the witness an agent
//! attaches to each job result, keeping it, and later holding the agent's audit chain
//! against every witness kept.
//!
//! What a check proves: every row from the oldest witness to the agent's head links to the
//! one before it (v2 rows by their digest, v1 rows by `prev_hash` only), and every
//! witnessed row is still there with the hash the agent vouched for. So an edit of any row
//! in that range, a deletion, a rewrite with recomputed hashes, a truncation below a
//! witness or a different agent answering is caught; rows after the newest witness can
//! still be cut or rewritten unseen until the next witness covers them.

use std::collections::BTreeMap;

use quickcmd_protocol::{AuditChain, AuditWitness, ChainError, ChainRow, MAX_CHAIN_ROWS};

use crate::client::{Client, ClientError};
use crate::history::{now_rfc3339, History, HistoryError, StoredWitness};

/// Why a witness was not kept.
#[derive(Debug, thiserror::Error)]
pub enum WitnessError {
    #[error(
        "agent {agent}: the audit witness of job {job_id} (row {seq}) does not verify for \
         agent_id {agent_id:?} under this controller's secret: a different agent answered or \
         the result was forged"
    )]
    BadMac {
        agent: String,
        agent_id: String,
        job_id: String,
        seq: u64,
    },
    #[error("agent {agent}: cannot learn its agent_id to check the audit witness")]
    NoAgentId {
        agent: String,
        #[source]
        source: Option<ClientError>,
    },
    #[error("cannot keep the audit witness")]
    History(#[from] HistoryError),
}

/// Checks the witness of job `job_id` from `client`'s agent and keeps it in `history`.
///
/// The MAC is checked for the `agent_id` this history last saw under the agent's name, or
/// for a first witness, the one the agent's `/health` gives (trust on first use).
pub async fn accept_witness(
    client: &Client,
    history: &History,
    job_id: &str,
    witness: &AuditWitness,
) -> Result<(), WitnessError> {
    let agent = client.name().to_string();
    let agent_id = match history.witnessed_agent_id(&agent).await? {
        Some(agent_id) => agent_id,
        None => client
            .health()
            .await
            .map_err(|error| WitnessError::NoAgentId {
                agent: agent.clone(),
                source: Some(error),
            })?
            .health
            .agent_id
            .ok_or_else(|| WitnessError::NoAgentId {
                agent: agent.clone(),
                source: None,
            })?,
    };
    if !witness.verify(client.endpoint().secret.as_bytes(), &agent_id) {
        return Err(WitnessError::BadMac {
            agent,
            agent_id,
            job_id: job_id.to_string(),
            seq: witness.seq,
        });
    }
    history
        .record_witness(StoredWitness {
            agent,
            agent_url: client.url().to_string(),
            agent_id,
            job_id: job_id.to_string(),
            seq: witness.seq,
            head: witness.head.to_ascii_lowercase(),
            mac: witness.mac.clone(),
            received_at: now_rfc3339(),
        })
        .await?;
    Ok(())
}

/// What checking one agent's log against the witnesses found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainVerdict {
    /// Every link from the oldest witness to the head holds, and every witness is in it.
    Intact { head_seq: u64, witnesses: usize },
    /// The first row where the log and the witnesses disagree.
    Tampered { seq: u64, problem: String },
}

/// Fetches the chain from the oldest witness to the agent's head, [`MAX_CHAIN_ROWS`] at a
/// time, and holds it against `witnesses` (all of one agent, as [`History::witnesses`]
/// gives them). Errors are only failures to ask; any disagreement is a verdict.
pub async fn check_agent(
    client: &Client,
    witnesses: &[StoredWitness],
) -> Result<ChainVerdict, ClientError> {
    let mut expected: BTreeMap<u64, Vec<&StoredWitness>> = BTreeMap::new();
    for witness in witnesses {
        expected.entry(witness.seq).or_default().push(witness);
    }
    let (Some(&first), Some(newest)) = (expected.keys().next(), witnesses.last()) else {
        return Ok(ChainVerdict::Intact {
            head_seq: 0,
            witnesses: 0,
        });
    };
    let agent_id = newest.agent_id.clone();
    let mut from = first;
    let mut last: Option<ChainRow> = None;
    loop {
        let to = from.saturating_add(MAX_CHAIN_ROWS - 1);
        let page = client.audit_chain(from, to).await?;
        if page.agent_id != agent_id {
            return Ok(ChainVerdict::Tampered {
                seq: from,
                problem: format!(
                    "a different agent answered: agent_id {:?}, but the witnesses are from {:?}",
                    page.agent_id, agent_id
                ),
            });
        }
        if let Some(verdict) = check_page(&page, from, last.as_ref(), &expected) {
            return Ok(verdict);
        }
        let full = page.rows.len() as u64 == to - from + 1;
        if let Some(row) = page.rows.last() {
            last = Some(row.clone());
        }
        if !full || to == u64::MAX {
            break;
        }
        from = to + 1;
    }
    let head_seq = last.as_ref().map_or(first - 1, |row| row.seq);
    if let Some((&seq, _)) = expected.range(head_seq.saturating_add(1)..).next() {
        return Ok(ChainVerdict::Tampered {
            seq,
            problem: format!(
                "truncated: the log ends at seq {head_seq}, below this controller's witness of row {seq}"
            ),
        });
    }
    Ok(ChainVerdict::Intact {
        head_seq,
        witnesses: witnesses.len(),
    })
}

/// The first disagreement in one page that should start at `from`, after `previous`.
fn check_page(
    page: &AuditChain,
    from: u64,
    previous: Option<&ChainRow>,
    expected: &BTreeMap<u64, Vec<&StoredWitness>>,
) -> Option<ChainVerdict> {
    if let Some(first) = page.rows.first() {
        if first.seq != from {
            return Some(deleted(from, first.seq));
        }
    }
    let mut linked = AuditChain {
        agent_id: page.agent_id.clone(),
        rows: previous.into_iter().cloned().collect(),
    };
    linked.rows.extend(page.rows.iter().cloned());
    if let Err(error) = linked.check_links() {
        return Some(link_verdict(error));
    }
    for row in &page.rows {
        for witness in expected.get(&row.seq).into_iter().flatten() {
            if !row.row_hash.eq_ignore_ascii_case(&witness.head) {
                return Some(ChainVerdict::Tampered {
                    seq: row.seq,
                    problem: format!(
                        "rewritten: row {} has hash {}, but the agent vouched for {} \
                         (job {}, received {})",
                        row.seq, row.row_hash, witness.head, witness.job_id, witness.received_at
                    ),
                });
            }
        }
    }
    None
}

fn deleted(expected: u64, found: u64) -> ChainVerdict {
    let missing = if found == expected + 1 {
        format!("row {expected} is missing")
    } else {
        format!("rows {expected} to {} are missing", found.saturating_sub(1))
    };
    ChainVerdict::Tampered {
        seq: expected,
        problem: format!("deleted: {missing} (the log jumps to row {found})"),
    }
}

fn link_verdict(error: ChainError) -> ChainVerdict {
    let seq = match &error {
        ChainError::NotContiguous { previous, seq } => {
            return deleted(previous.saturating_add(1), *seq)
        }
        ChainError::BrokenLink { seq }
        | ChainError::BadRowHash { seq }
        | ChainError::UnknownVersion { seq, .. }
        | ChainError::VersionDowngrade { seq }
        | ChainError::MissingRow { seq }
        | ChainError::HeadMismatch { seq } => *seq,
        ChainError::EmptyRange { from, .. } | ChainError::RangeTooLarge { from, .. } => *from,
    };
    ChainVerdict::Tampered {
        seq,
        problem: format!("edited: {error}"),
    }
}

#[cfg(test)]
mod tests {
    use quickcmd_protocol::{chain_link_hash, CHAIN_VERSION_DIGEST};

    use super::*;

    fn chain(first: u64, count: u64) -> AuditChain {
        let mut prev = "0".repeat(64);
        AuditChain {
            agent_id: "a".into(),
            rows: (first..first + count)
                .map(|seq| {
                    let digest = format!("{seq:064x}");
                    let row_hash = chain_link_hash(&prev, &digest);
                    ChainRow {
                        seq,
                        prev_hash: std::mem::replace(&mut prev, row_hash.clone()),
                        row_hash,
                        digest,
                        version: CHAIN_VERSION_DIGEST,
                        row: None,
                    }
                })
                .collect(),
        }
    }

    fn stored(seq: u64, head: &str) -> StoredWitness {
        StoredWitness {
            agent: "a".into(),
            agent_url: "https://a/".into(),
            agent_id: "a".into(),
            job_id: "j".into(),
            seq,
            head: head.into(),
            mac: String::new(),
            received_at: String::new(),
        }
    }

    #[test]
    fn pages_are_checked_for_gaps_links_and_witnesses() {
        let page = chain(1, 5);
        let good = stored(3, &page.rows[2].row_hash);
        let mut expected = BTreeMap::new();
        expected.insert(3, vec![&good]);
        assert_eq!(check_page(&page, 1, None, &expected), None);
        // The first row is not the one asked for: rows were deleted.
        assert!(matches!(
            check_page(&page, 0, None, &expected),
            Some(ChainVerdict::Tampered { seq: 0, .. })
        ));
        // A page must link to the one before it.
        let next = chain(6, 2);
        assert!(matches!(
            check_page(&next, 6, page.rows.last(), &expected),
            Some(ChainVerdict::Tampered { seq: 6, .. })
        ));
        let bad = stored(3, &"e".repeat(64));
        let mut wrong = BTreeMap::new();
        wrong.insert(3, vec![&bad]);
        match check_page(&page, 1, None, &wrong) {
            Some(ChainVerdict::Tampered { seq: 3, problem }) => {
                assert!(problem.starts_with("rewritten"), "{problem}")
            }
            other => panic!("{other:?}"),
        }
        let mut gap = chain(1, 5);
        gap.rows.remove(2);
        match check_page(&gap, 1, None, &expected) {
            Some(ChainVerdict::Tampered { seq: 3, problem }) => {
                assert!(problem.starts_with("deleted"), "{problem}")
            }
            other => panic!("{other:?}"),
        }
    }
}
