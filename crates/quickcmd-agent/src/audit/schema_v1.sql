-- One row per event, never changed. ids are assigned by the agent: 1, 2, 3, ... without gaps.
-- row_hash = SHA-256(prev_hash "\n" content), see audit/chain.rs for the exact content.
CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY,
    time_ms       INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    job_id        TEXT,
    controller_id TEXT,
    remote_addr   TEXT,
    accepted      INTEGER CHECK (accepted IN (0, 1)),
    code          TEXT,
    status        TEXT,
    reason        TEXT,
    command       TEXT,
    prompt        TEXT,
    exit_code     INTEGER,
    details       TEXT    NOT NULL,
    prev_hash     TEXT    NOT NULL,
    row_hash      TEXT    NOT NULL
) STRICT;

CREATE INDEX audit_log_by_job ON audit_log (job_id, id);

-- Defence in depth: the agent never updates or deletes. Whoever holds the file can drop
-- these; the hash chain is what catches them.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: UPDATE refused');
END;

CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN
    SELECT RAISE(ABORT, 'audit log is append-only: DELETE refused');
END;
