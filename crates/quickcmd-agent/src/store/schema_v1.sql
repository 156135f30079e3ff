-- One row per job id ever accepted or rejected (until purged).
-- Booleans are 0/1; times are unix milliseconds except ttl and timestamp (unix seconds, as signed).
CREATE TABLE jobs (
    job_id           TEXT    NOT NULL PRIMARY KEY,
    controller_id    TEXT    NOT NULL,
    command          TEXT    NOT NULL,
    prompt           TEXT    NOT NULL,
    payload_json     TEXT    NOT NULL,
    signature        TEXT    NOT NULL,
    canonical        INTEGER NOT NULL CHECK (canonical IN (0, 1)),
    sandbox_json     TEXT,
    ttl              INTEGER NOT NULL,
    timestamp        INTEGER NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    status           TEXT    NOT NULL
        CHECK (status IN ('pending', 'running', 'completed', 'failed', 'rejected')),
    reason           TEXT,
    error            TEXT,
    started_at_ms    INTEGER,
    ended_at_ms      INTEGER,
    exit_code        INTEGER,
    sandbox_id       TEXT,
    stdout_bytes     INTEGER NOT NULL DEFAULT 0,
    stderr_bytes     INTEGER NOT NULL DEFAULT 0,
    stdout_sha256    TEXT,
    stderr_sha256    TEXT,
    stdout_truncated INTEGER NOT NULL DEFAULT 0 CHECK (stdout_truncated IN (0, 1)),
    stderr_truncated INTEGER NOT NULL DEFAULT 0 CHECK (stderr_truncated IN (0, 1))
) STRICT;

-- GET /api/v1/jobs: one controller's jobs, newest first.
CREATE INDEX jobs_by_controller ON jobs (controller_id, created_at_ms);
-- Startup recovery and metrics look jobs up by status.
CREATE INDEX jobs_by_status ON jobs (status);

-- Stored output, replayed to late WebSocket subscribers in seq order.
CREATE TABLE frames (
    job_id       TEXT    NOT NULL REFERENCES jobs (job_id) ON DELETE CASCADE,
    seq          INTEGER NOT NULL,
    stream       TEXT    NOT NULL CHECK (stream IN ('stdout', 'stderr')),
    data         TEXT    NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
) STRICT, WITHOUT ROWID;
