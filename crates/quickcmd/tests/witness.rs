//! Witnessed audit end to end (protocol-v1 §5): real agents, the real `quickcmd` binary,
//! and the agent's audit SQLite edited on disk (agent stopped) as an attacker holding the
//! file would: one row changed, the last rows deleted, the tail rewritten with recomputed
//! hashes, the database replaced. `quickcmd audit verify` catches each and names the row;
//! an untouched log verifies across a restart and across an upgrade from a v1-only log.
//!
//! The hash rules are written out here from the docs (audit/chain.rs), independently of the
//! agent's code: the v1 log of the upgrade test is made with the old rule, and the rewrite
//! recomputes v2 digests and links as an attacker who read the docs would.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use quickcmd_testkit::*;
use rusqlite::types::Value;
use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The content columns, in hashing order (`prev_hash` last).
const COLUMNS: [&str; 15] = [
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

fn fields(names: &[&str], values: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in names.iter().zip(values) {
        out.extend_from_slice(name.as_bytes());
        out.push(b'=');
        match value {
            Value::Null => out.extend_from_slice(b"null"),
            Value::Integer(n) => out.extend_from_slice(format!("int:{n}").as_bytes()),
            Value::Text(t) => {
                out.extend_from_slice(format!("text:{}:", t.len()).as_bytes());
                out.extend_from_slice(t.as_bytes());
            }
            other => panic!("the agent writes no {other:?}"),
        }
        out.push(b'\n');
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// v1: SHA-256(prev_hash "\n" "quickcmd-audit-v1\n" fields(all 15)).
fn row_hash_v1(values: &[Value]) -> String {
    let Value::Text(prev) = &values[14] else {
        panic!("prev_hash is text")
    };
    let mut bytes = format!("{prev}\nquickcmd-audit-v1\n").into_bytes();
    bytes.extend(fields(&COLUMNS, values));
    sha256_hex(&bytes)
}

/// v2: digest over all but prev_hash; row_hash = SHA-256("v2\n" prev "\n" digest).
fn row_hash_v2(values: &[Value]) -> String {
    let Value::Text(prev) = &values[14] else {
        panic!("prev_hash is text")
    };
    let mut content = b"quickcmd-audit-v2\n".to_vec();
    content.extend(fields(&COLUMNS[..14], &values[..14]));
    let digest = sha256_hex(&content);
    sha256_hex(format!("v2\n{prev}\n{digest}").as_bytes())
}

fn row_values(conn: &Connection, id: i64) -> Vec<Value> {
    conn.query_row(
        &format!("SELECT {} FROM audit_log WHERE id = ?1", COLUMNS.join(", ")),
        [id],
        |row| (0..15).map(|i| row.get::<_, Value>(i)).collect(),
    )
    .expect("read row")
}

/// The file as an attacker opens it: the append-only triggers dropped.
fn attacker(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open the audit log");
    conn.execute_batch(
        "DROP TRIGGER IF EXISTS audit_log_no_update; DROP TRIGGER IF EXISTS audit_log_no_delete;",
    )
    .expect("drop the triggers");
    conn
}

fn stop(agent: &mut TestAgent) {
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    eventually(Duration::from_secs(60), "the agent stops", || {
        (!agent.is_running()).then_some(())
    });
    // Reaps the exited process so the agent can be spawned again.
    agent.kill9();
}

/// Starts the agent again and points the controller at its new port.
fn restart(agent: &mut TestAgent, root: &Path, secret: &str) -> Controller {
    agent.spawn();
    Controller::new(root, secret, &[Entry::of(agent)])
}

fn remove_db(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.as_os_str().to_owned();
        file.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(file));
    }
}

/// Folds the WAL into the file, so the file alone is the whole log.
fn checkpoint(path: &Path) {
    Connection::open(path)
        .and_then(|c| c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())))
        .expect("checkpoint");
}

/// The seqs of the witnesses the controller holds, oldest first.
fn witnessed_seqs(controller: &Controller) -> Vec<i64> {
    let conn = Connection::open(&controller.history).expect("history");
    let mut statement = conn
        .prepare("SELECT seq FROM audit_witnesses ORDER BY seq")
        .expect("witness table");
    statement
        .query_map([], |row| row.get(0))
        .expect("query")
        .collect::<rusqlite::Result<Vec<i64>>>()
        .expect("seqs")
}

fn verify(controller: &Controller) -> Output {
    controller.run(&["audit", "verify", "--agent", "w"])
}

#[track_caller]
fn assert_tampered_at(output: &Output, seq: i64, kind: &str) {
    assert_eq!(output.status.code(), Some(1), "{}", show(output));
    let out = text(&output.stdout);
    assert!(
        out.contains(&format!("w: TAMPERED at row {seq}: {kind}")),
        "expected row {seq} ({kind}): {}",
        show(output)
    );
}

fn run_jobs(controller: &Controller, count: usize) {
    for i in 0..count {
        let out = controller.run(&["run", "--agent", "w", "--", &format!("echo job {i}")]);
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    }
}

#[test]
fn every_edit_of_the_log_is_caught_and_an_untouched_log_verifies() {
    let root = tempfile::tempdir().expect("tempdir");
    let secret = gen_key();
    let mut agent = AgentSpec::new("w", &secret).start(root.path());
    let mut controller = Controller::new(root.path(), &secret, &[Entry::of(&agent)]);
    run_jobs(&controller, 3);
    let seqs = witnessed_seqs(&controller);
    assert_eq!(seqs.len(), 3, "one witness per job");

    let intact = verify(&controller);
    assert_eq!(intact.status.code(), Some(0), "{}", show(&intact));
    assert!(
        text(&intact.stdout).contains("w: intact up to seq")
            && text(&intact.stdout).contains("(3 witnesses)"),
        "{}",
        show(&intact)
    );
    // The JSON form, for scripts.
    let json = controller.run(&["-o", "json", "audit", "verify"]);
    assert_eq!(json.status.code(), Some(0), "{}", show(&json));
    assert_eq!(json_lines(&json)[0]["status"], "intact", "{}", show(&json));

    // Across a restart.
    stop(&mut agent);
    let db = agent.audit_db();
    checkpoint(&db);
    let pristine = root.path().join("pristine.db");
    std::fs::copy(&db, &pristine).expect("keep a copy");
    controller = restart(&mut agent, root.path(), &secret);
    let again = verify(&controller);
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
    stop(&mut agent);

    let restore = || {
        remove_db(&db);
        std::fs::copy(&pristine, &db).expect("restore");
    };
    let (first, second) = (seqs[0], seqs[1]);
    let job_rows = |conn: &Connection, after: i64, kind: &str| -> i64 {
        conn.query_row(
            "SELECT id FROM audit_log WHERE id > ?1 AND kind = ?2 ORDER BY id LIMIT 1",
            params![after, kind],
            |row| row.get(0),
        )
        .expect("a row")
    };

    // One row changed in place: the submission of the second job.
    restore();
    let edited = {
        let conn = attacker(&db);
        let id = job_rows(&conn, first, "submission");
        conn.execute(
            "UPDATE audit_log SET command = 'echo innocent' WHERE id = ?1",
            [id],
        )
        .expect("edit");
        id
    };
    controller = restart(&mut agent, root.path(), &secret);
    assert_tampered_at(&verify(&controller), edited, "edited");
    stop(&mut agent);

    // The last rows deleted, from the second witness on; the restarted agent appends new
    // rows where they were, which cannot carry the witnessed hash.
    restore();
    attacker(&db)
        .execute("DELETE FROM audit_log WHERE id >= ?1", [second])
        .expect("delete");
    controller = restart(&mut agent, root.path(), &secret);
    let cut = verify(&controller);
    assert_eq!(cut.status.code(), Some(1), "{}", show(&cut));
    assert!(
        text(&cut.stdout).contains(&format!("w: TAMPERED at row {second}: ")),
        "{}",
        show(&cut)
    );
    stop(&mut agent);

    // The whole tail rewritten from the second job's submission, every digest and hash
    // recomputed: the agent's own offline check passes, the witness does not.
    restore();
    {
        let conn = attacker(&db);
        let from = job_rows(&conn, first, "submission");
        let last: i64 = conn
            .query_row("SELECT MAX(id) FROM audit_log", [], |row| row.get(0))
            .expect("max");
        conn.execute(
            "UPDATE audit_log SET command = 'echo innocent' WHERE id = ?1",
            [from],
        )
        .expect("edit");
        for id in from..=last {
            if id > from {
                let prev: String = conn
                    .query_row(
                        "SELECT row_hash FROM audit_log WHERE id = ?1",
                        [id - 1],
                        |r| r.get(0),
                    )
                    .expect("prev");
                conn.execute(
                    "UPDATE audit_log SET prev_hash = ?1 WHERE id = ?2",
                    params![prev, id],
                )
                .expect("relink");
            }
            let hash = row_hash_v2(&row_values(&conn, id));
            conn.execute(
                "UPDATE audit_log SET row_hash = ?1 WHERE id = ?2",
                params![hash, id],
            )
            .expect("rehash");
        }
    }
    let (code, offline) = agent.audit_verify();
    assert_eq!(code, 0, "the rewrite fools the offline check: {offline}");
    controller = restart(&mut agent, root.path(), &secret);
    assert_tampered_at(&verify(&controller), second, "rewritten");
    stop(&mut agent);

    // The database replaced by a fresh one: the witnesses are beyond its head.
    restore();
    remove_db(&db);
    controller = restart(&mut agent, root.path(), &secret);
    let fresh = verify(&controller);
    assert_eq!(fresh.status.code(), Some(1), "{}", show(&fresh));
    assert!(
        text(&fresh.stdout).contains(&format!("w: TAMPERED at row {first}: ")),
        "{}",
        show(&fresh)
    );
    stop(&mut agent);

    // A different agent answering under the same name: another agent_id.
    restore();
    agent.agent_id = format!("{}-impostor", agent.agent_id);
    let config = agent.config.clone();
    agent.write_config(config);
    controller = restart(&mut agent, root.path(), &secret);
    let impostor = verify(&controller);
    assert_eq!(impostor.status.code(), Some(1), "{}", show(&impostor));
    assert!(
        text(&impostor.stdout).contains("a different agent answered"),
        "{}",
        show(&impostor)
    );
    // And its results carry witnesses that do not verify for the agent_id on record.
    let forged = controller.run(&["run", "--agent", "w", "--", "echo hi"]);
    assert_ne!(forged.status.code(), Some(0), "{}", show(&forged));
    assert!(
        text(&forged.stderr).contains("does not verify"),
        "{}",
        show(&forged)
    );
}

/// The agent's schema 1, as the pre-change agent created it (crates/quickcmd-agent).
const SCHEMA_V1: &str = include_str!("../../quickcmd-agent/src/audit/schema_v1.sql");

#[test]
fn a_log_written_before_v2_upgrades_and_verifies() {
    let root = tempfile::tempdir().expect("tempdir");
    let secret = gen_key();
    let spec = AgentSpec::new("w", &secret);
    let tls = quickcmd_testkit::controller::gen_cert(&root.path().join("w").join("tls"));
    let mut agent = TestAgent::prepare("w", spec.config(tls));
    // A v1-only log: schema 1 and rows hashed by the old rule, as an older agent wrote.
    let db = agent.audit_db();
    {
        let data = db.parent().expect("a data dir");
        std::fs::create_dir_all(data).expect("data dir");
        std::fs::set_permissions(data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .expect("chmod data dir");
        let conn = Connection::open(&db).expect("create");
        conn.execute_batch(SCHEMA_V1).expect("schema 1");
        conn.pragma_update(None, "user_version", 1)
            .expect("version 1");
        let mut prev = GENESIS.to_string();
        for id in 1..=4_i64 {
            let mut values = vec![
                Value::Integer(id),
                Value::Integer(1_700_000_000_000 + id),
                Value::Text(if id % 2 == 1 { "startup" } else { "shutdown" }.into()),
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Null,
                Value::Text("null".into()),
                Value::Text(prev.clone()),
            ];
            let hash = row_hash_v1(&values);
            values.push(Value::Text(hash.clone()));
            conn.execute(
                &format!(
                    "INSERT INTO audit_log ({}, row_hash) VALUES ({})",
                    COLUMNS.join(", "),
                    (1..=16)
                        .map(|i| format!("?{i}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                rusqlite::params_from_iter(values),
            )
            .expect("v1 row");
            prev = hash;
        }
    }
    let before: Vec<String> = {
        let conn = Connection::open(&db).expect("open");
        let mut statement = conn
            .prepare("SELECT row_hash FROM audit_log ORDER BY id")
            .expect("prepare");
        statement
            .query_map([], |row| row.get(0))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("hashes")
    };
    let (code, offline) = agent.audit_verify();
    assert_eq!(
        code, 0,
        "a v1 log verifies offline before the upgrade: {offline}"
    );

    agent.spawn();
    let mut controller = Controller::new(root.path(), &secret, &[Entry::of(&agent)]);
    run_jobs(&controller, 2);
    let intact = verify(&controller);
    assert_eq!(intact.status.code(), Some(0), "{}", show(&intact));
    stop(&mut agent);
    controller = restart(&mut agent, root.path(), &secret);
    let again = verify(&controller);
    assert_eq!(again.status.code(), Some(0), "{}", show(&again));
    stop(&mut agent);

    // The old rows were not rewritten; versions are 1 then 2, and the mixed log verifies
    // offline, printing its head.
    let conn = Connection::open(&db).expect("open");
    let rows: Vec<(String, i64)> = conn
        .prepare("SELECT row_hash, version FROM audit_log ORDER BY id")
        .and_then(|mut s| {
            s.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))?
                .collect::<rusqlite::Result<_>>()
        })
        .expect("rows");
    assert_eq!(
        rows[..4].iter().map(|(h, _)| h.clone()).collect::<Vec<_>>(),
        before
    );
    assert!(rows[..4].iter().all(|(_, v)| *v == 1));
    assert!(rows[4..].iter().all(|(_, v)| *v == 2), "{rows:?}");
    let (code, offline) = agent.audit_verify();
    assert_eq!(code, 0, "{offline}");
    assert!(
        offline.contains(&format!(
            "head: seq {} hash {}",
            rows.len(),
            rows[rows.len() - 1].0
        )),
        "{offline}"
    );

    // `audit list` has a header row, and ends quietly when its reader goes away (issue 10).
    let table = agent
        .cli()
        .args(["audit", "list"])
        .output()
        .expect("audit list");
    assert!(table.status.success(), "{}", show(&table));
    let first_line = text(&table.stdout)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    assert!(
        first_line
            .split_whitespace()
            .take(3)
            .eq(["SEQ", "TIME", "KIND"]),
        "{first_line}"
    );
    for args in [
        &["audit", "list", "--json"][..],
        &["audit", "list"],
        &["audit", "verify"],
    ] {
        // The reader is gone before the command starts: closing it after the spawn would
        // race a command fast enough to write its few lines into the pipe first.
        let (reader, writer) = std::io::pipe().expect("a pipe");
        drop(reader);
        let mut command = agent.cli();
        command
            .args(args)
            .stdout(writer)
            .stderr(std::process::Stdio::piped());
        let out = command.output().expect("run");
        assert_eq!(out.status.code(), Some(141), "{args:?}: {}", show(&out));
        assert!(out.stderr.is_empty(), "{args:?}: {}", show(&out));
    }
}
