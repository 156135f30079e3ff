#!/usr/bin/env bash
# Fuzzes a real agent against docs/openapi.yaml with schemathesis: fails on any 5xx, any
# status the description does not list, and any response body that breaks its schema.
#
# A real agent (debug build, real TLS with a throw-away self-signed certificate, a temp
# data dir, the real Docker engine) serves /api/v1/openapi.json; schemathesis loads the
# description from there and fuzzes every operation, signing reads and submissions through
# tests/api/quickcmd_hooks.py. What the description marks `x-quickcmd-since: <v>` for a
# version in OPENAPI_EXCLUDE_SINCE (space-separated; default "1.1") is taken out of it
# (operations, parameters, fields) until the agent implements it; what it already serves is
# also marked `x-quickcmd-served: true` and stays in (the witnessed audit of v1.1).
#
# Environment: SCHEMATHESIS_MAX_EXAMPLES (default 40 per operation, about a minute or two),
# SCHEMATHESIS_SEED (reproduce a run), SCHEMATHESIS_ARGS (more `st run` flags, e.g.
# `--include-path /health`), OPENAPI_EXCLUDE_SINCE, SANDBOX_IMAGE, CARGO.
# schemathesis comes from PyPI into target/venv-schemathesis when missing; if it cannot be
# installed the test fails: it is never skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

SCHEMATHESIS_VERSION=4.32.5
VENV=$ROOT/target/venv-schemathesis
MAX_EXAMPLES=${SCHEMATHESIS_MAX_EXAMPLES:-40}
EXCLUDE_SINCE=${OPENAPI_EXCLUDE_SINCE-1.1}
SANDBOX_IMAGE=${SANDBOX_IMAGE:-quickcmd-sandbox:latest}
CARGO=${CARGO:-cargo}
CONTROLLER=fuzz-ctl

fail() { printf '\nschemathesis.sh: FAILED: %s\n' "$*" >&2; exit 1; }

# ---- schemathesis, pinned, in its own venv
if ! "$VENV/bin/st" --version 2>/dev/null | grep -qF "$SCHEMATHESIS_VERSION"; then
    command -v python3 >/dev/null || fail "python3 is needed for schemathesis (apt-get install python3 python3-venv)"
    echo "== installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
    rm -rf "$VENV"
    python3 -m venv "$VENV" || fail "python3 -m venv failed (apt-get install python3-venv)"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION" \
        || fail "pip could not install schemathesis==$SCHEMATHESIS_VERSION from PyPI"
fi
"$VENV/bin/st" --version | grep -qF "$SCHEMATHESIS_VERSION" || fail "schemathesis $SCHEMATHESIS_VERSION is not runnable from $VENV"

# ---- the agent
command -v docker >/dev/null || fail "docker is needed (scripts/ensure-docker.sh)"
docker image inspect "$SANDBOX_IMAGE" >/dev/null 2>&1 \
    || fail "sandbox image $SANDBOX_IMAGE is missing (scripts/build-sandbox-image.sh)"
echo "== building the agent"
"$CARGO" build --locked --quiet -p quickcmd-agent
AGENT_BIN=$ROOT/target/debug/quickcmd-agent

DIR=$(mktemp -d "${TMPDIR:-/tmp}/quickcmd-schemathesis.XXXXXX")
AGENT_ID="schemathesis-$$"
AGENT_PID=
cleanup() {
    local status=$?
    if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
        kill -TERM "$AGENT_PID" 2>/dev/null || true
        for _ in $(seq 1 150); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$AGENT_PID" 2>/dev/null || true
    fi
    local left
    left=$(docker ps -aq --filter "label=quickcmd.agent=$AGENT_ID" 2>/dev/null || true)
    [ -z "$left" ] || docker rm -f $left >/dev/null 2>&1 || true
    if [ "$status" -ne 0 ] && [ -s "$DIR/agent.log" ]; then
        echo "---- agent log (last 40 lines) ----" >&2
        tail -n 40 "$DIR/agent.log" >&2
    fi
    rm -rf "$DIR"
    exit "$status"
}
trap cleanup EXIT

mkdir -p "$DIR/data"
chmod 700 "$DIR"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=localhost" -addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
    -keyout "$DIR/key.pem" -out "$DIR/cert.pem" 2>/dev/null \
    || fail "openssl could not make a self-signed certificate"
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DIR/secret")
(umask 077 && cat > "$DIR/agent-config.yaml" <<YAML
port: 0
bind_address: "127.0.0.1"
agent_id: "$AGENT_ID"
tls_cert_file: "$DIR/cert.pem"
tls_key_file: "$DIR/key.pem"
controllers:
  - id: "$CONTROLLER"
    hmac_secret_file: "$DIR/secret"
allowed_images: ["$SANDBOX_IMAGE"]
max_concurrent_jobs: 2
max_queued_jobs: 4
default_timeout_seconds: 10
max_timeout_seconds: 30
shutdown_grace_seconds: 2
data_dir: "$DIR/data"
audit_db_path: "$DIR/data/agent-audit.db"
YAML
)
echo "== starting the agent"
"$AGENT_BIN" --config="$DIR/agent-config.yaml" >"$DIR/agent.out" 2>"$DIR/agent.log" &
AGENT_PID=$!
URL=
for _ in $(seq 1 150); do
    URL=$(sed -n 's/^listening on //p' "$DIR/agent.out" | head -n 1)
    [ -n "$URL" ] && break
    kill -0 "$AGENT_PID" 2>/dev/null || fail "the agent exited at start"
    sleep 0.2
done
[ -n "$URL" ] || fail "the agent did not start within 30 s"
echo "agent $AGENT_ID at $URL"

export QUICKCMD_URL=$URL QUICKCMD_CA=$DIR/cert.pem QUICKCMD_CONTROLLER=$CONTROLLER
export QUICKCMD_SECRET_FILE=$DIR/secret QUICKCMD_SEEDED=$DIR/seeded QUICKCMD_EXCLUDE_SINCE=$EXCLUDE_SINCE
export PYTHONPATH=$ROOT/tests/api${PYTHONPATH:+:$PYTHONPATH}
echo "== seeding jobs (completed, failed, rejected, running)"
"$VENV/bin/python" tests/api/quickcmd_hooks.py seed || fail "seeding jobs failed"

# ---- schemathesis
seed_args=()
[ -z "${SCHEMATHESIS_SEED:-}" ] || seed_args=(--seed "$SCHEMATHESIS_SEED")
echo "== schemathesis $SCHEMATHESIS_VERSION, $MAX_EXAMPLES examples per operation${EXCLUDE_SINCE:+, leaving out what is new in $EXCLUDE_SINCE}"
status=0
mkdir -p "$ROOT/target/schemathesis"
# From target/schemathesis, so that schemathesis keeps its cache (.schemathesis/) there.
(cd "$ROOT/target/schemathesis" && SCHEMATHESIS_HOOKS=quickcmd_hooks "$VENV/bin/st" run "$URL/api/v1/openapi.json" \
    --url "$URL" \
    --tls-verify "$DIR/cert.pem" \
    --checks not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,ignored_auth \
    --phases examples,coverage,fuzzing \
    --max-examples "$MAX_EXAMPLES" \
    --workers 2 \
    --request-timeout 30 \
    --suppress-health-check all \
    --report junit,har --report-dir . \
    "${seed_args[@]}" ${SCHEMATHESIS_ARGS:-}) || status=$?

# The agent must still be alive and healthy after the run.
kill -0 "$AGENT_PID" 2>/dev/null || fail "the agent died during the run"
curl -fsS --cacert "$DIR/cert.pem" "$URL/health" >/dev/null || fail "the agent is not healthy after the run"
[ "$status" -eq 0 ] || fail "schemathesis found failures (exit $status); report in target/schemathesis/"
echo "schemathesis.sh: passed"
