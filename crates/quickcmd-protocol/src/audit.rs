//! Witnessed audit (protocol-v1 §5): the MAC by which an agent vouches for the audit row
//! that recorded a job's result, and the chain segment a controller reads to check it.
//!
//! The agent owns the content of a row (what `digest` covers); this module owns what
//! travels: the witness and its MAC, the segment's shape, its size limit, and the link
//! checks any holder of a segment can run without a secret.
//!
//! Chain versions, recorded per row:
//! ```text
//! v2: row_hash = hex(SHA-256("v2\n" prev_hash "\n" digest))   prev_hash, digest: lowercase hex
//! v1: row_hash = hex(SHA-256(prev_hash "\n" content))          (rows written before v1.1)
//! ```
//! A v2 link can be checked from `(prev_hash, digest, row_hash)` alone; a v1 row's hash
//! needs its whole content, so a segment holder checks only that its `prev_hash` is the
//! previous row's `row_hash`. Versions never go down along a chain.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::sign;

/// The first line of every witness message, so a witness MAC can never be mistaken for a
/// payload or read-auth signature made with the same secret.
pub const WITNESS_CONTEXT: &str = "quickcmd-audit-witness";

/// The chain version whose links are checkable from the digest (see the module docs).
pub const CHAIN_VERSION_DIGEST: u8 = 2;

/// The chain version of rows written before v1.1: the hash covers the content itself.
pub const CHAIN_VERSION_CONTENT: u8 = 1;

/// `row_hash` of a v2 row: lowercase hex SHA-256(`v2\n<prev_hash>\n<digest>`).
pub fn chain_link_hash(prev_hash: &str, digest: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"v2\n");
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(digest.as_bytes());
    hex::encode(hasher.finalize())
}

/// Most rows one `GET /api/v1/audit/chain` answers.
pub const MAX_CHAIN_ROWS: u64 = 10_000;

/// `"audit"` on a job's result and final frame: the audit row that recorded the result,
/// that row's hash, and the agent's MAC over both under the controller's secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditWitness {
    pub seq: u64,
    /// The row's `row_hash`, lowercase hex.
    pub head: String,
    /// [`witness_mac`] of the three, lowercase hex.
    pub mac: String,
}

impl AuditWitness {
    /// The witness an agent attaches for row `seq` whose hash is `head`.
    pub fn new(secret: &[u8], agent_id: &str, seq: u64, head: &str) -> AuditWitness {
        AuditWitness {
            seq,
            head: head.to_string(),
            mac: witness_mac(secret, agent_id, seq, head),
        }
    }

    /// Whether the agent `agent_id` made this witness under `secret`.
    pub fn verify(&self, secret: &[u8], agent_id: &str) -> bool {
        verify_witness(secret, agent_id, self.seq, &self.head, &self.mac)
    }
}

fn witness_message(agent_id: &str, seq: u64, head: &str) -> String {
    format!("{WITNESS_CONTEXT}\n{agent_id}\n{seq}\n{head}")
}

/// Lowercase hex HMAC-SHA256(secret, `quickcmd-audit-witness\n<agent_id>\n<seq>\n<head>`).
pub fn witness_mac(secret: &[u8], agent_id: &str, seq: u64, head: &str) -> String {
    sign::sign(secret, witness_message(agent_id, seq, head).as_bytes())
}

/// Whether `mac_hex` is [`witness_mac`] of the rest; the comparison is constant-time.
pub fn verify_witness(secret: &[u8], agent_id: &str, seq: u64, head: &str, mac_hex: &str) -> bool {
    sign::verify(
        secret,
        witness_message(agent_id, seq, head).as_bytes(),
        mac_hex,
    )
}

/// `GET /api/v1/audit/chain?from=&to=`: a contiguous run of the agent's audit chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditChain {
    pub agent_id: String,
    pub rows: Vec<ChainRow>,
}

/// One row of a chain segment: enough to check its links, and its content only when it
/// concerns the caller's own jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainRow {
    pub seq: u64,
    /// The previous row's `row_hash` (64 zeros before the first row), lowercase hex.
    pub prev_hash: String,
    pub row_hash: String,
    /// SHA-256 of the row's content, lowercase hex: what a v2 `row_hash` links.
    pub digest: String,
    /// The row's chain version: 2 ([`CHAIN_VERSION_DIGEST`]) or 1 ([`CHAIN_VERSION_CONTENT`]).
    pub version: u8,
    /// The full audit row, present only where it concerns the caller's own jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub row: Option<serde_json::Value>,
}

/// Why a requested range or a received segment does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("audit range {from}..={to} is empty: `from` is after `to`")]
    EmptyRange { from: u64, to: u64 },
    #[error("audit range {from}..={to} is over the {MAX_CHAIN_ROWS}-row limit")]
    RangeTooLarge { from: u64, to: u64 },
    #[error("audit row {seq} follows row {previous}: the segment has a gap or is out of order")]
    NotContiguous { previous: u64, seq: u64 },
    #[error("audit row {seq}: prev_hash is not the previous row's row_hash")]
    BrokenLink { seq: u64 },
    #[error("audit row {seq}: row_hash is not the hash of its prev_hash and digest")]
    BadRowHash { seq: u64 },
    #[error("audit row {seq}: chain version {version} is not one this controller knows")]
    UnknownVersion { seq: u64, version: u8 },
    #[error("audit row {seq}: version 1 row after a version 2 row (versions never go down)")]
    VersionDowngrade { seq: u64 },
    #[error("audit row {seq} is not in the segment")]
    MissingRow { seq: u64 },
    #[error("audit row {seq}: row_hash is not the witnessed head")]
    HeadMismatch { seq: u64 },
}

/// Checks a requested `from..=to` (both peer numbers) without overflow: non-empty and at
/// most [`MAX_CHAIN_ROWS`] rows. Returns the number of rows asked for.
pub fn chain_range(from: u64, to: u64) -> Result<u64, ChainError> {
    let span = to
        .checked_sub(from)
        .ok_or(ChainError::EmptyRange { from, to })?;
    if span >= MAX_CHAIN_ROWS {
        return Err(ChainError::RangeTooLarge { from, to });
    }
    Ok(span + 1)
}

impl AuditChain {
    /// Checks that the rows are consecutive, that each row's `prev_hash` is the previous
    /// row's `row_hash`, that each v2 row's `row_hash` is [`chain_link_hash`] of its
    /// `prev_hash` and `digest`, and that versions never go down. A v1 row's `row_hash`
    /// covers its content, which the segment does not carry: only its links are checked.
    pub fn check_links(&self) -> Result<(), ChainError> {
        for row in &self.rows {
            match row.version {
                CHAIN_VERSION_DIGEST => {
                    if !chain_link_hash(&row.prev_hash, &row.digest)
                        .eq_ignore_ascii_case(&row.row_hash)
                    {
                        return Err(ChainError::BadRowHash { seq: row.seq });
                    }
                }
                CHAIN_VERSION_CONTENT => {}
                version => {
                    return Err(ChainError::UnknownVersion {
                        seq: row.seq,
                        version,
                    })
                }
            }
        }
        for pair in self.rows.windows(2) {
            let (previous, row) = (&pair[0], &pair[1]);
            if previous.seq.checked_add(1) != Some(row.seq) {
                return Err(ChainError::NotContiguous {
                    previous: previous.seq,
                    seq: row.seq,
                });
            }
            if row.prev_hash != previous.row_hash {
                return Err(ChainError::BrokenLink { seq: row.seq });
            }
            if row.version < previous.version {
                return Err(ChainError::VersionDowngrade { seq: row.seq });
            }
        }
        Ok(())
    }

    /// Checks the links and that the witnessed row stands in the segment with the
    /// witnessed hash (the witness MAC itself is [`AuditWitness::verify`]).
    pub fn check_witness(&self, witness: &AuditWitness) -> Result<(), ChainError> {
        self.check_links()?;
        let row = self
            .rows
            .iter()
            .find(|row| row.seq == witness.seq)
            .ok_or(ChainError::MissingRow { seq: witness.seq })?;
        if !row.row_hash.eq_ignore_ascii_case(&witness.head) {
            return Err(ChainError::HeadMismatch { seq: witness.seq });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use hmac::{Hmac, Mac};
    use sha2::Sha256;

    use super::*;

    /// The MAC computed here with `hmac` and `sha2` directly, from the spec's text.
    fn independent_mac(secret: &[u8], message: &str) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret)
            .unwrap_or_else(|e| panic!("hmac key: {e}"));
        mac.update(message.as_bytes());
        mac.finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    const HEAD: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn witness_mac_is_hmac_of_the_spec_message() {
        let expected = independent_mac(
            b"controller-secret",
            &format!("quickcmd-audit-witness\nagent-7\n42\n{HEAD}"),
        );
        assert_eq!(
            witness_mac(b"controller-secret", "agent-7", 42, HEAD),
            expected
        );
        assert_eq!(expected.len(), 64);
        assert!(expected
            .bytes()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')));
    }

    #[test]
    fn witness_verifies_only_what_was_witnessed() {
        let witness = AuditWitness::new(b"s", "agent-7", 42, HEAD);
        assert!(witness.verify(b"s", "agent-7"));
        assert!(verify_witness(
            b"s",
            "agent-7",
            42,
            HEAD,
            &witness.mac.to_uppercase()
        ));
        assert!(!witness.verify(b"t", "agent-7"));
        assert!(!witness.verify(b"s", "agent-8"));
        for forged in [
            AuditWitness {
                seq: 41,
                ..witness.clone()
            },
            AuditWitness {
                head: HEAD.replace('9', "8"),
                ..witness.clone()
            },
            AuditWitness {
                mac: witness.mac.replace(&witness.mac[..2], "00"),
                ..witness.clone()
            },
            AuditWitness {
                mac: witness.mac[..62].to_string(),
                ..witness.clone()
            },
            AuditWitness {
                mac: String::new(),
                ..witness.clone()
            },
        ] {
            assert!(!forged.verify(b"s", "agent-7"), "{forged:?}");
        }
        // The fields are separated, so moving text from one to the next changes the MAC.
        assert_ne!(
            witness_mac(b"s", "agent-7\n4", 2, HEAD),
            witness_mac(b"s", "agent-7", 42, HEAD)
        );
        // A witness is not a read-auth signature over the same text without the context.
        assert_ne!(
            witness.mac,
            sign::sign(b"s", format!("agent-7\n42\n{HEAD}").as_bytes())
        );
    }

    #[test]
    fn witness_json_round_trip() {
        let witness = AuditWitness::new(b"s", "a", 3, HEAD);
        let text = serde_json::to_string(&witness).unwrap_or_default();
        assert_eq!(
            text,
            format!(r#"{{"seq":3,"head":"{HEAD}","mac":"{}"}}"#, witness.mac)
        );
        assert_eq!(
            serde_json::from_str::<AuditWitness>(&text).ok(),
            Some(witness)
        );
    }

    fn segment(first: u64, count: u64) -> AuditChain {
        let mut prev = "0".repeat(64);
        let rows = (first..first + count)
            .map(|seq| {
                let digest = format!("{:064x}", seq * 7);
                let row_hash = chain_link_hash(&prev, &digest);
                ChainRow {
                    seq,
                    prev_hash: std::mem::replace(&mut prev, row_hash.clone()),
                    row_hash,
                    digest,
                    version: CHAIN_VERSION_DIGEST,
                    row: (seq % 2 == 0).then(|| serde_json::json!({"job_id": format!("j{seq}")})),
                }
            })
            .collect();
        AuditChain {
            agent_id: "agent-7".into(),
            rows,
        }
    }

    #[test]
    fn chain_json_omits_rows_of_others() {
        let chain = segment(1, 2);
        let text = serde_json::to_string(&chain).unwrap_or_default();
        assert!(text.starts_with(r#"{"agent_id":"agent-7","rows":[{"seq":1,"prev_hash":""#));
        assert_eq!(text.matches(r#""row":"#).count(), 1);
        assert_eq!(serde_json::from_str::<AuditChain>(&text).ok(), Some(chain));
    }

    #[test]
    fn chain_links_and_witness() {
        let chain = segment(5, 10);
        assert_eq!(chain.check_links(), Ok(()));
        let witness = AuditWitness::new(b"s", "agent-7", 9, &chain.rows[4].row_hash);
        assert_eq!(chain.check_witness(&witness), Ok(()));

        let mut gap = chain.clone();
        gap.rows.remove(3);
        assert_eq!(
            gap.check_links(),
            Err(ChainError::NotContiguous {
                previous: 7,
                seq: 9
            })
        );
        let mut edited = chain.clone();
        edited.rows[4].row_hash = "f".repeat(64);
        assert_eq!(edited.check_links(), Err(ChainError::BadRowHash { seq: 9 }));
        let mut truncated = chain.clone();
        truncated.rows.truncate(3);
        assert_eq!(
            truncated.check_witness(&witness),
            Err(ChainError::MissingRow { seq: 9 })
        );
        // Row 7 rewritten with every later hash recomputed: the links hold, the witnessed
        // hash does not.
        let mut rewritten = chain.clone();
        let mut prev = rewritten.rows[1].row_hash.clone();
        for row in &mut rewritten.rows[2..] {
            if row.seq == 7 {
                row.digest = "d".repeat(64);
            }
            row.prev_hash = prev.clone();
            row.row_hash = chain_link_hash(&prev, &row.digest);
            prev = row.row_hash.clone();
        }
        assert_eq!(rewritten.check_links(), Ok(()));
        assert_eq!(
            rewritten.check_witness(&witness),
            Err(ChainError::HeadMismatch { seq: 9 })
        );
        let wrapped = AuditChain {
            agent_id: "a".into(),
            rows: vec![
                ChainRow {
                    seq: u64::MAX,
                    ..segment(1, 1).rows[0].clone()
                },
                ChainRow {
                    seq: 0,
                    ..segment(1, 1).rows[0].clone()
                },
            ],
        };
        assert!(matches!(
            wrapped.check_links(),
            Err(ChainError::NotContiguous { .. })
        ));
    }

    /// Attack: the content of a row changed, so an honest agent serves a new digest; the
    /// stored hashes no longer link to it.
    #[test]
    fn tampered_digest_breaks_the_link() {
        let mut chain = segment(1, 4);
        chain.rows[2].digest = chain.rows[2].digest.replace('0', "1");
        assert_eq!(chain.check_links(), Err(ChainError::BadRowHash { seq: 3 }));
        let mut relinked = segment(1, 4);
        relinked.rows[2].prev_hash = "e".repeat(64);
        assert_eq!(
            relinked.check_links(),
            Err(ChainError::BadRowHash { seq: 3 })
        );
    }

    #[test]
    fn link_hash_known_answer() {
        // Python: hashlib.sha256(b"v2\n" + b"0" * 64 + b"\n" + b"1" * 64).hexdigest()
        assert_eq!(
            chain_link_hash(&"0".repeat(64), &"1".repeat(64)),
            "3ab7d3d3ccacdabd1f91199f14c90a05b5c94c0dfa3cb1107cb8b9d03b324cb4"
        );
    }

    #[test]
    fn mixed_versions() {
        let mut chain = segment(3, 3);
        // Two v1 rows before: only their links are checked, so any row_hash will do.
        let v1 = |seq: u64, prev: &str, hash: &str| ChainRow {
            seq,
            prev_hash: prev.to_string(),
            row_hash: hash.to_string(),
            digest: "a".repeat(64),
            version: CHAIN_VERSION_CONTENT,
            row: None,
        };
        let first = v1(1, &"0".repeat(64), &"1".repeat(64));
        let second = v1(2, &"1".repeat(64), &"0".repeat(64));
        chain.rows.insert(0, second);
        chain.rows.insert(0, first);
        assert_eq!(chain.check_links(), Ok(()));
        let mut broken = chain.clone();
        broken.rows[1].prev_hash = "2".repeat(64);
        assert_eq!(broken.check_links(), Err(ChainError::BrokenLink { seq: 2 }));
        let mut downgraded = chain.clone();
        downgraded.rows[3].version = CHAIN_VERSION_CONTENT;
        assert_eq!(
            downgraded.check_links(),
            Err(ChainError::VersionDowngrade { seq: 4 })
        );
        let mut unknown = chain;
        unknown.rows[2].version = 3;
        assert_eq!(
            unknown.check_links(),
            Err(ChainError::UnknownVersion { seq: 3, version: 3 })
        );
    }

    #[test]
    fn chain_range_bounds() {
        assert_eq!(chain_range(1, 1), Ok(1));
        assert_eq!(chain_range(1, MAX_CHAIN_ROWS), Ok(MAX_CHAIN_ROWS));
        assert_eq!(chain_range(0, MAX_CHAIN_ROWS - 1), Ok(MAX_CHAIN_ROWS));
        assert!(matches!(
            chain_range(1, MAX_CHAIN_ROWS + 1),
            Err(ChainError::RangeTooLarge { .. })
        ));
        assert!(matches!(
            chain_range(0, u64::MAX),
            Err(ChainError::RangeTooLarge { .. })
        ));
        assert!(matches!(
            chain_range(u64::MAX, 0),
            Err(ChainError::EmptyRange { .. })
        ));
        assert_eq!(chain_range(u64::MAX, u64::MAX), Ok(1));
        assert!(matches!(
            chain_range(5, 4),
            Err(ChainError::EmptyRange { .. })
        ));
    }
}
