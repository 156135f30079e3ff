//! The hash chain: how a row's digest and hash are computed, the streaming check of a
//! whole log, and the segments served to controllers.
//!
//! Each row records its chain version (`version` column, schema 2). Rows written before it
//! existed read as version 1 and keep their rule; new rows are version 2. Versions never go
//! down along the chain.
//!
//! ```text
//! v2: digest   = hex(SHA-256("quickcmd-audit-v2\n" fields(HASHED_COLUMNS minus prev_hash)))
//!     row_hash = hex(SHA-256("v2\n" prev_hash "\n" digest))      (quickcmd_protocol::chain_link_hash)
//! v1: row_hash = hex(SHA-256(prev_hash "\n" content))
//!     content  = "quickcmd-audit-v1\n" fields(HASHED_COLUMNS)
//!     digest   = hex(SHA-256(content))   (served only; it does not determine row_hash)
//! prev_hash = the previous row's row_hash; 64 zeros for row 1; all hex is lowercase
//! fields(columns) = (name "=" value "\n") for each column
//! value    = "null"                         SQL NULL
//!          | "int:" decimal                 INTEGER (booleans are 0/1)
//!          | "real:" 16 lowercase hex       REAL, the f64 bits (never written by the agent)
//!          | "text:" byte-length ":" bytes  TEXT, UTF-8
//!          | "blob:" byte-length ":" bytes  BLOB (never written by the agent)
//! ```
//!
//! Every value carries its type and text and blobs their length, so no two different rows
//! share a content (a newline inside `command` cannot pose as the next column). The value
//! is hashed as SQLite stores it, `details` included as its stored JSON text, so verifying
//! does not depend on how a serde_json version orders or escapes anything.
//!
//! A v2 link is checkable from `(seq, prev_hash, digest, row_hash)` without the content,
//! which is what lets a controller check a segment holding other controllers' rows. A v1
//! row's hash needs its content: a segment holder can check only its `prev_hash` link.

use quickcmd_protocol::{chain_link_hash, CHAIN_VERSION_CONTENT, CHAIN_VERSION_DIGEST};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use sha2::{Digest, Sha256};

use super::types::{BadRow, ChainHead, VerifyReport};

/// The columns of a row's content, in hashing order: all but `row_hash` and `version`.
/// A v2 digest covers all but the last (`prev_hash`), which its `row_hash` links instead.
pub(super) const HASHED_COLUMNS: [&str; 15] = [
    "id",
    "time_ms",
    "kind",
    "job_id",
    "controller_id",
    "remote_addr",
    "accepted",
    "code",
    "status",
    "reason",
    "command",
    "prompt",
    "exit_code",
    "details",
    "prev_hash",
];

/// Index of `prev_hash` in [`HASHED_COLUMNS`].
const PREV_HASH: usize = 14;

/// Index of `controller_id` in [`HASHED_COLUMNS`].
const CONTROLLER_ID: usize = 4;

/// The `prev_hash` of row 1.
pub(super) const GENESIS_HASH: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

const CONTENT_V1: &[u8] = b"quickcmd-audit-v1\n";
const CONTENT_V2: &[u8] = b"quickcmd-audit-v2\n";

/// The version new rows are written with.
pub(super) const CURRENT_VERSION: i64 = CHAIN_VERSION_DIGEST as i64;

/// One row's columns in [`HASHED_COLUMNS`] order.
pub(super) type Columns<'a> = [ValueRef<'a>; 15];

fn hash_fields(hasher: &mut Sha256, names: &[&str], values: &[ValueRef<'_>]) {
    for (name, value) in names.iter().zip(values) {
        hasher.update(name.as_bytes());
        hasher.update(b"=");
        match *value {
            ValueRef::Null => hasher.update(b"null"),
            ValueRef::Integer(number) => {
                hasher.update(b"int:");
                hasher.update(number.to_string().as_bytes());
            }
            ValueRef::Real(number) => {
                hasher.update(b"real:");
                hasher.update(format!("{:016x}", number.to_bits()).as_bytes());
            }
            ValueRef::Text(bytes) => {
                hasher.update(b"text:");
                hasher.update(bytes.len().to_string().as_bytes());
                hasher.update(b":");
                hasher.update(bytes);
            }
            ValueRef::Blob(bytes) => {
                hasher.update(b"blob:");
                hasher.update(bytes.len().to_string().as_bytes());
                hasher.update(b":");
                hasher.update(bytes);
            }
        }
        hasher.update(b"\n");
    }
}

/// The v1 hash of a row whose columns are `values`, chained to `prev_hash`.
pub(super) fn row_hash_v1(prev_hash: &str, values: &Columns<'_>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash.as_bytes());
    hasher.update(b"\n");
    hasher.update(CONTENT_V1);
    hash_fields(&mut hasher, &HASHED_COLUMNS, values);
    hex::encode(hasher.finalize())
}

/// The digest of a row: what its v2 `row_hash` links, or for a v1 row the hash of its
/// content (served so every row has one; it does not determine a v1 `row_hash`).
pub(super) fn digest(version: i64, values: &Columns<'_>) -> String {
    let mut hasher = Sha256::new();
    if version == CURRENT_VERSION {
        hasher.update(CONTENT_V2);
        hash_fields(
            &mut hasher,
            &HASHED_COLUMNS[..PREV_HASH],
            &values[..PREV_HASH],
        );
    } else {
        hasher.update(CONTENT_V1);
        hash_fields(&mut hasher, &HASHED_COLUMNS, values);
    }
    hex::encode(hasher.finalize())
}

/// The hash of a new row (version [`CURRENT_VERSION`]).
pub(super) fn row_hash_current(prev_hash: &str, values: &Columns<'_>) -> String {
    chain_link_hash(prev_hash, &digest(CURRENT_VERSION, values))
}

/// The hash a row of `version` must have, or `None` for a version this agent does not know.
pub(super) fn row_hash(version: i64, prev_hash: &str, values: &Columns<'_>) -> Option<String> {
    match u8::try_from(version) {
        Ok(CHAIN_VERSION_DIGEST) => Some(chain_link_hash(prev_hash, &digest(version, values))),
        Ok(CHAIN_VERSION_CONTENT) => Some(row_hash_v1(prev_hash, values)),
        _ => None,
    }
}

/// The `SELECT` list every chain read uses: the content, `row_hash`, then `version` (a
/// constant 1 for a file still at schema 1, opened read-only before its migration).
pub(super) fn chain_select(has_version: bool) -> String {
    format!(
        "{}, row_hash, {}",
        HASHED_COLUMNS.join(", "),
        if has_version { "version" } else { "1" }
    )
}

fn columns<'a>(row: &'a rusqlite::Row<'_>) -> rusqlite::Result<Columns<'a>> {
    Ok([
        row.get_ref(0)?,
        row.get_ref(1)?,
        row.get_ref(2)?,
        row.get_ref(3)?,
        row.get_ref(4)?,
        row.get_ref(5)?,
        row.get_ref(6)?,
        row.get_ref(7)?,
        row.get_ref(8)?,
        row.get_ref(9)?,
        row.get_ref(10)?,
        row.get_ref(11)?,
        row.get_ref(12)?,
        row.get_ref(13)?,
        row.get_ref(14)?,
    ])
}

/// Reads every row in id order, one at a time, and checks ids, links, versions and hashes.
///
/// Rows are matched against what the chain so far says must come next, so an edited row
/// fails its own hash, an edited row with a recomputed hash breaks the next row's link, a
/// deleted row leaves a gap in the ids, and rows moved to other ids fail their hashes
/// (the id is hashed).
pub(super) fn verify(conn: &Connection, has_version: bool) -> rusqlite::Result<VerifyReport> {
    let mut statement = conn.prepare(&format!(
        "SELECT {} FROM audit_log ORDER BY id",
        chain_select(has_version)
    ))?;
    let mut rows = statement.query([])?;
    let mut count = 0_u64;
    let mut first_bad = None;
    let mut previous: Option<(ChainHead, i64)> = None;
    while let Some(row) = rows.next()? {
        count += 1;
        let values = columns(row)?;
        // `id` is the INTEGER PRIMARY KEY, so SQLite guarantees an integer here.
        let id: i64 = row.get(0)?;
        let stored_hash = row.get_ref(15)?.as_str().unwrap_or_default().to_owned();
        let version = row.get_ref(16)?.as_i64().unwrap_or(0);
        if first_bad.is_none() {
            first_bad = check_row(previous.as_ref(), id, version, &values, &stored_hash);
        }
        previous = Some((
            ChainHead {
                id,
                row_hash: stored_hash,
            },
            version,
        ));
    }
    Ok(VerifyReport {
        rows: count,
        first_bad,
        head: previous.map(|(head, _)| head),
    })
}

/// The problem with one row, given the row before it and its version (`None` for the
/// first row).
fn check_row(
    previous: Option<&(ChainHead, i64)>,
    id: i64,
    version: i64,
    values: &Columns<'_>,
    stored_hash: &str,
) -> Option<BadRow> {
    let (previous_id, expected_prev, previous_version) = match previous {
        Some((head, version)) => (head.id, head.row_hash.as_str(), *version),
        None => (0, GENESIS_HASH, 0),
    };
    let expected_id = previous_id.saturating_add(1);
    if id > expected_id {
        let missing = if id - expected_id == 1 {
            format!("row {expected_id} missing")
        } else {
            format!("rows {expected_id} to {} missing", id - 1)
        };
        return Some(BadRow {
            id: expected_id,
            problem: format!("{missing} (ids jump {previous_id} -> {id})"),
        });
    }
    if id < expected_id {
        return Some(BadRow {
            id,
            problem: format!("unexpected row id {id} (expected {expected_id})"),
        });
    }
    if values[PREV_HASH].as_str().ok() != Some(expected_prev) {
        let problem = match previous {
            Some((head, _)) => format!("prev_hash does not match row {}", head.id),
            None => "prev_hash of the first row is not 64 zeros".to_owned(),
        };
        return Some(BadRow { id, problem });
    }
    if version < previous_version {
        return Some(BadRow {
            id,
            problem: format!(
                "chain version {version} after a version {previous_version} row (versions never go down)"
            ),
        });
    }
    match row_hash(version, expected_prev, values) {
        None => Some(BadRow {
            id,
            problem: format!("unknown chain version {version}"),
        }),
        Some(hash) if hash != stored_hash => Some(BadRow {
            id,
            problem: "row hash does not match its content".to_owned(),
        }),
        Some(_) => None,
    }
}

/// One row of a served segment: its links, digest and version, and its content for
/// `row_json` when `controller_id` is the caller's.
pub(super) struct SegmentRow {
    pub(super) chain: quickcmd_protocol::ChainRow,
    pub(super) controller_id: Option<String>,
}

/// Rows `from..=to` (those that exist), oldest first, each with its digest computed from
/// the content as stored now: a row edited in place serves a digest its stored hash no
/// longer links.
pub(super) fn segment(
    conn: &Connection,
    has_version: bool,
    from: i64,
    to: i64,
) -> rusqlite::Result<Vec<SegmentRow>> {
    let mut statement = conn.prepare_cached(&format!(
        "SELECT {} FROM audit_log WHERE id BETWEEN ?1 AND ?2 ORDER BY id",
        chain_select(has_version)
    ))?;
    let mut rows = statement.query([from, to])?;
    let mut out = Vec::new();
    while let Some(row) = rows.next()? {
        let values = columns(row)?;
        let version = row.get_ref(16)?.as_i64().unwrap_or(0);
        let id: i64 = row.get(0)?;
        out.push(SegmentRow {
            chain: quickcmd_protocol::ChainRow {
                seq: u64::try_from(id).unwrap_or(0),
                prev_hash: values[PREV_HASH].as_str().unwrap_or_default().to_owned(),
                row_hash: row.get_ref(15)?.as_str().unwrap_or_default().to_owned(),
                digest: digest(version, &values),
                // An unknown version is served as 0, which every checker refuses.
                version: u8::try_from(version).unwrap_or(0),
                row: None,
            },
            controller_id: values[CONTROLLER_ID].as_str().ok().map(str::to_owned),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample<'a>(command: &'a str, prompt: &'a str) -> [ValueRef<'a>; 15] {
        [
            ValueRef::Integer(1),
            ValueRef::Integer(1_700_000_000_000),
            ValueRef::Text(b"submission"),
            ValueRef::Text(b"job-1"),
            ValueRef::Text(b"ctl"),
            ValueRef::Null,
            ValueRef::Integer(1),
            ValueRef::Null,
            ValueRef::Null,
            ValueRef::Null,
            ValueRef::Text(command.as_bytes()),
            ValueRef::Text(prompt.as_bytes()),
            ValueRef::Null,
            ValueRef::Text(b"null"),
            ValueRef::Text(GENESIS_HASH.as_bytes()),
        ]
    }

    /// Pins the format: this value was computed independently from the text in the module
    /// docs (Python hashlib over the documented bytes). If it changes, old logs no longer
    /// verify.
    #[test]
    fn known_answer() {
        assert_eq!(
            row_hash_v1(GENESIS_HASH, &sample("ls -la", "list files")),
            "3acf95a56720d162d6fb65b1012725a2ec4341588c42185cc977c5cc87b2794e"
        );
    }

    /// The v2 rule, computed independently (Python hashlib over the documented bytes).
    #[test]
    fn known_answer_v2() {
        let values = sample("ls -la", "list files");
        assert_eq!(
            digest(2, &values),
            "a481f24d8b0fed135bfc5dec4a6dbd93d6c24518f5f35a46b614999f29f73f95"
        );
        assert_eq!(
            row_hash(2, GENESIS_HASH, &values).as_deref(),
            Some("9870ce95f1d9152948d5460397006293ec06b7bee29d9e1cf738abe9faecd0e7")
        );
        assert_eq!(
            row_hash(1, GENESIS_HASH, &values).as_deref(),
            Some("3acf95a56720d162d6fb65b1012725a2ec4341588c42185cc977c5cc87b2794e")
        );
        assert_eq!(row_hash(3, GENESIS_HASH, &values), None);
        assert_eq!(row_hash(0, GENESIS_HASH, &values), None);
    }

    /// The v2 digest leaves `prev_hash` to the link, and covers every other column.
    #[test]
    fn v2_digest_covers_content_not_links() {
        let values = sample("ls", "p");
        let mut relinked = values;
        relinked[PREV_HASH] = ValueRef::Text(b"1111");
        assert_eq!(digest(2, &values), digest(2, &relinked));
        assert_ne!(
            row_hash(2, GENESIS_HASH, &values),
            row_hash(2, &"1".repeat(64), &values)
        );
        for index in 0..PREV_HASH {
            let mut edited = values;
            edited[index] = ValueRef::Text(b"edited");
            assert_ne!(digest(2, &values), digest(2, &edited), "column {index}");
        }
        // A v1 digest is the hash of the v1 content, prev_hash included.
        assert_ne!(digest(1, &values), digest(1, &relinked));
        assert_ne!(digest(1, &values), digest(2, &values));
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = row_hash_v1(GENESIS_HASH, &sample("ls\nprompt=text:1:x", "y"));
        let b = row_hash_v1(GENESIS_HASH, &sample("ls", "x\nprompt=text:1:y"));
        let c = row_hash_v1(GENESIS_HASH, &sample("ls", "y"));
        assert_ne!(a, b);
        assert_ne!(a, c);
        assert_ne!(b, c);
    }

    #[test]
    fn types_are_part_of_the_content() {
        let mut text_code = sample("ls", "p");
        text_code[12] = ValueRef::Text(b"0");
        let mut int_code = sample("ls", "p");
        int_code[12] = ValueRef::Integer(0);
        let mut null_code = sample("ls", "p");
        null_code[12] = ValueRef::Text(b"null");
        let hashes = [
            row_hash_v1(GENESIS_HASH, &text_code),
            row_hash_v1(GENESIS_HASH, &int_code),
            row_hash_v1(GENESIS_HASH, &null_code),
            row_hash_v1(GENESIS_HASH, &sample("ls", "p")),
        ];
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn prev_hash_is_part_of_the_hash() {
        let values = sample("ls", "p");
        assert_ne!(
            row_hash_v1(GENESIS_HASH, &values),
            row_hash_v1(&"1".repeat(64), &values)
        );
    }
}
