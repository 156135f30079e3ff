#!/usr/bin/env bash
# `make test-install`: the operator's whole life cycle on a real systemd.
#
# Boots a Debian container with systemd as PID 1 and the host's Docker socket, and in it:
# runs scripts/setup-agent.sh, starts the unit, checks /health over TLS with the generated
# certificate, runs a signed job through the host's Docker, finds the job in the journal,
# reloads good and bad configs, stops with jobs running, re-runs setup (nothing may
# change), records `systemd-analyze security`, uninstalls; then installs the .deb in a
# second fresh container and starts it.
#
# Needs (root): Docker answering, bin/quickcmd-agent, target/debian/quickcmd-agent_*.deb,
# the sandbox image quickcmd-sandbox:latest (built with scripts/build-sandbox-image.sh
# when missing). Prints PASS/FAIL lines and "N passed, N failed"; exits 1 on any failure.
#
# Environment: QC_TEST_IMAGE (use this systemd image), QC_MAX_EXPOSURE (default 2.0),
# QC_KEEP=1 (leave the containers running for a look, removed by the next run).
set -uo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
HERE="$REPO_DIR/tests/install"
LABEL="quickcmd-install-test"
SANDBOX_IMAGE="quickcmd-sandbox:latest"
MAX_EXPOSURE="${QC_MAX_EXPOSURE:-2.0}"
GRACE=4
CONF=/etc/quickcmd/agent-config.yaml
CERT=/etc/quickcmd/agent-cert.pem
CLIENT=(python3 /src/tests/install/qc-client.py)
RUN_ID="$(date +%s)-$$"

PASSED=0
FAILED=0
CTR=""
CONTAINERS=()

pass() {
    PASSED=$((PASSED + 1))
    printf 'PASS: %s\n' "$*"
}
fail() {
    FAILED=$((FAILED + 1))
    printf 'FAIL: %s\n' "$*"
}
info() { printf '  .. %s\n' "$*"; }
section() { printf '\n== %s\n' "$*"; }

cleanup() {
    local c
    if [ "${QC_KEEP:-0}" = 1 ]; then
        info "QC_KEEP=1: left running: ${CONTAINERS[*]:-none}"
        return
    fi
    for c in "${CONTAINERS[@]}"; do
        docker rm -f "$c" >/dev/null 2>&1 || true
        # Sandboxes the agent in $c started on the host's engine (agent_id = hostname = $c).
        docker ps -aq --filter "label=quickcmd.agent=$c" | xargs -r docker rm -f >/dev/null 2>&1 || true
    done
}
finish() {
    cleanup
    printf '\n%d passed, %d failed\n' "$PASSED" "$FAILED"
    [ "$FAILED" -eq 0 ]
}
trap 'finish; exit $?' EXIT
trap 'fail "interrupted"; exit 1' INT TERM

# cx CMD... — run in the current container, bounded (QC_T seconds, default 60).
cx() { timeout "${QC_T:-60}" docker exec "$CTR" "$@"; }
# cx_sh 'script' — a shell line in the current container.
cx_sh() { timeout "${QC_T:-60}" docker exec "$CTR" sh -c "$1"; }
# field JSON PATH — a value from a JSON document, PATH like body.result.exit_code.
field() {
    printf '%s' "$1" | timeout 20 docker exec -i "$CTR" python3 -c '
import json, sys
try:
    v = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
for k in sys.argv[1].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("" if v is None else (json.dumps(v) if isinstance(v, (dict, list, bool)) else v))
' "$2"
}
# wait_for SECONDS CMD... — until CMD succeeds; 1 when the time runs out.
wait_for() {
    local limit=$(($(date +%s) + $1))
    shift
    while [ "$(date +%s)" -lt "$limit" ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    return 1
}
client() { cx "${CLIENT[@]}" "$@"; }
submit() { client submit --job-id "$1" --command "$2" "${@:3}"; }
plain() { sed 's/\x1b\[[0-9;]*m//g'; }
journal_tail() { cx_sh "journalctl -u quickcmd-agent --no-pager -n ${1:-40}" | plain | sed 's/^/     | /'; }

boot() {
    local name="$1"
    docker run -d --name "$name" --label "$LABEL=$RUN_ID" --hostname "$name" \
        --cap-add SYS_ADMIN --security-opt seccomp=unconfined \
        -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
        -v /var/run/docker.sock:/var/run/docker.sock \
        -v "$REPO_DIR":/src:ro \
        "$IMAGE" /lib/systemd/systemd >/dev/null || return 1
    CONTAINERS+=("$name")
    CTR="$name"
    # systemd is up when it answers; "degraded" is fine for a container.
    QC_T=70 cx sh -c 'for i in $(seq 1 120); do s=$(systemctl is-system-running 2>/dev/null); case "$s" in running|degraded) exit 0;; esac; sleep 0.5; done; exit 1' || return 1
    # A host with Docker has a docker group owning the socket: give the container the same.
    cx_sh 'getent group docker >/dev/null || groupadd --gid "$(stat -c %g /var/run/docker.sock)" docker'
}

health_ok() { cx curl -fsS --max-time 5 --cacert "$CERT" https://localhost:8443/health; }
main_pid() { cx systemctl show -p MainPID --value quickcmd-agent; }

# ---------------------------------------------------------------------------------------
section "preflight"
if [ "$(id -u)" -ne 0 ]; then
    fail "test-install must run as root (debootstrap, containers)"
    exit 1
fi
if ! timeout 10 docker info >/dev/null 2>&1; then
    fail "docker engine does not answer (run scripts/ensure-docker.sh)"
    exit 1
fi
stale="$(docker ps -aq --filter "label=$LABEL")"
if [ -n "$stale" ]; then
    info "removing containers of an earlier run"
    # shellcheck disable=SC2086
    docker rm -f $stale >/dev/null 2>&1 || true
fi
if [ ! -x "$REPO_DIR/bin/quickcmd-agent" ]; then
    fail "bin/quickcmd-agent is missing (make build-agent)"
    exit 1
fi
if ! "$REPO_DIR/bin/quickcmd-agent" --help >/dev/null 2>&1; then
    fail "bin/quickcmd-agent --help does not run"
    exit 1
fi
DEB="$(ls -t "$REPO_DIR"/target/debian/quickcmd-agent_*.deb 2>/dev/null | head -n1)"
if [ -z "$DEB" ]; then
    fail "no target/debian/quickcmd-agent_*.deb (make deb)"
    exit 1
fi
# The sandbox image lives on the host's engine, which the agent in the container uses.
# build-sandbox-image.sh is idempotent (it rebuilds only when its own script changed).
if [ -f "$REPO_DIR/scripts/build-sandbox-image.sh" ]; then
    if ! timeout 1200 bash "$REPO_DIR/scripts/build-sandbox-image.sh" "$SANDBOX_IMAGE" >/tmp/quickcmd-sandbox-image.log 2>&1; then
        tail -n 20 /tmp/quickcmd-sandbox-image.log
        fail "scripts/build-sandbox-image.sh failed"
        exit 1
    fi
fi
if ! docker image inspect "$SANDBOX_IMAGE" >/dev/null 2>&1; then
    fail "sandbox image $SANDBOX_IMAGE is missing (scripts/build-sandbox-image.sh)"
    exit 1
fi
if ! IMAGE="${QC_TEST_IMAGE:-$(timeout 1200 bash "$HERE/build-image.sh")}"; then
    fail "could not build the systemd test image"
    exit 1
fi
info "systemd image $IMAGE, package $(basename "$DEB")"

# ---------------------------------------------------------------------------------------
section "setup-agent.sh on a fresh Debian with systemd"
if boot "qc-install-a-$RUN_ID"; then
    pass "container boots systemd as PID 1 ($(cx systemctl --version | head -n1))"
else
    fail "container did not boot systemd"
    exit 1
fi

out="$(cx runuser -u nobody -- /src/scripts/setup-agent.sh 2>&1)"
rc=$?
if [ "$rc" -eq 1 ] && grep -q "must run as root" <<<"$out"; then
    pass "refuses a non-root run with exit 1 and a message"
else
    fail "non-root run: exit $rc: $out"
fi
out="$(cx env DOCKER_HOST=unix:///nonexistent.sock /src/scripts/setup-agent.sh 2>&1)"
rc=$?
if [ "$rc" -eq 1 ] && grep -q "Docker is missing" <<<"$out" && ! cx test -e /etc/quickcmd; then
    pass "refuses with exit 1 when Docker is missing, before changing anything"
else
    fail "Docker missing: exit $rc: $out"
fi

out="$(QC_T=120 cx /src/scripts/setup-agent.sh 2>&1)"
rc=$?
printf '%s\n' "$out" | sed 's/^/     | /'
if [ "$rc" -eq 0 ]; then pass "setup-agent.sh exits 0"; else fail "setup-agent.sh exited $rc"; fi

secret="$(cx grep '^hmac_secret:' "$CONF" | sed -E 's/^hmac_secret: *"?([^"]*)"?.*/\1/')"
if [ "${#secret}" -ge 32 ] && ! grep -q CHANGE_ME <<<"$secret" && grep -qF "$secret" <<<"$out"; then
    pass "config has a random ${#secret}-char hmac_secret, printed once by setup"
else
    fail "config secret: '${secret:0:8}...' (${#secret} chars)"
fi

layout="$(cx_sh "stat -c '%n %U:%G %a' /etc/quickcmd /var/lib/quickcmd $CONF /etc/quickcmd/agent-key.pem $CERT /usr/local/bin/quickcmd-agent /etc/systemd/system/quickcmd-agent.service" 2>&1)"
expected="/etc/quickcmd root:quickcmd 750
/var/lib/quickcmd quickcmd:quickcmd 750
$CONF quickcmd:quickcmd 600
/etc/quickcmd/agent-key.pem quickcmd:quickcmd 600
$CERT quickcmd:quickcmd 644
/usr/local/bin/quickcmd-agent root:root 755
/etc/systemd/system/quickcmd-agent.service root:root 644"
if [ "$layout" = "$expected" ]; then
    pass "owners and modes of directories, config, key, certificate, binary, unit"
else
    fail "owners and modes differ:"
    diff <(printf '%s\n' "$expected") <(printf '%s\n' "$layout") | sed 's/^/     | /'
fi
if cx_sh 'id -nG quickcmd' | tr ' ' '\n' | grep -qx docker && cx_sh 'getent passwd quickcmd' | grep -q ':/var/lib/quickcmd:'; then
    pass "system user quickcmd exists and is in the docker group"
else
    fail "user quickcmd: $(cx_sh 'id quickcmd' 2>&1)"
fi
cert_text="$(cx openssl x509 -in "$CERT" -noout -text 2>&1)"
if grep -q 'CA:FALSE' <<<"$cert_text" && grep -q 'DNS:localhost' <<<"$cert_text" &&
    grep -q 'IP Address:127.0.0.1' <<<"$cert_text" && grep -q "DNS:$CTR" <<<"$cert_text"; then
    pass "certificate is a leaf (CA:FALSE) for the hostname, localhost and 127.0.0.1"
else
    fail "certificate extensions: $(grep -A1 -E 'Basic Constraints|Alternative Name' <<<"$cert_text" | tr -s ' ')"
fi
if cx runuser -u quickcmd -- quickcmd-agent --config="$CONF" --check-config >/dev/null 2>&1; then
    pass "installed config passes --check-config as user quickcmd"
else
    fail "--check-config: $(cx runuser -u quickcmd -- quickcmd-agent --config="$CONF" --check-config 2>&1)"
fi

# Test settings: a second shared-secret controller for the reload test, a short grace.
cx_sh "sed -i -e 's/^  - \"controller-1\"\$/  - \"controller-1\"\\n  - \"controller-2\"/' \
    -e 's/^shutdown_grace_seconds: .*/shutdown_grace_seconds: $GRACE/' $CONF"
if cx grep -q '^  - "controller-2"$' "$CONF" && cx grep -q "^shutdown_grace_seconds: $GRACE\$" "$CONF"; then
    info "test config: controllers controller-1 and controller-2, shutdown_grace_seconds $GRACE"
else
    fail "could not edit the test config (examples/agent-config.yaml changed shape?)"
fi

# ---------------------------------------------------------------------------------------
section "systemctl start, /health over TLS, a signed job through the host's Docker"
cx systemctl start quickcmd-agent
if wait_for 30 health_ok; then
    pass "systemctl start quickcmd-agent: active, /health answers over TLS with the generated certificate ($(health_ok))"
else
    fail "agent not healthy within 30 s: $(cx systemctl is-active quickcmd-agent)"
    journal_tail
fi
if [ "$(cx curl -s -o /dev/null -w '%{http_code}' --max-time 5 https://localhost:8443/health)" = 000 ]; then
    pass "a client without the pinned certificate is refused by TLS verification"
else
    fail "the agent's certificate verified without --cacert"
fi

JOB1="install-echo-$RUN_ID"
r="$(submit "$JOB1" "echo hello-from-$JOB1")"
if [ "$(field "$r" http)" = 202 ] && [ "$(field "$r" body.status)" = pending ]; then
    pass "signed job accepted: 202 pending"
else
    fail "submit: $r"
fi
r="$(QC_T=100 client wait --job-id "$JOB1" --wait-seconds 90)"
if [ "$(field "$r" body.status)" = completed ] && [ "$(field "$r" body.result.exit_code)" = 0 ] &&
    grep -q "hello-from-$JOB1" <<<"$(field "$r" body.result.stdout)"; then
    pass "job ran in $SANDBOX_IMAGE on the host's Docker: completed, exit 0, stdout as expected"
else
    fail "job result: $r"
    journal_tail
fi
if wait_for 10 cx_sh "journalctl -u quickcmd-agent --no-pager | grep -q '$JOB1'"; then
    pass "journalctl -u quickcmd-agent has the job's line: $(cx_sh "journalctl -u quickcmd-agent --no-pager -o cat | grep '$JOB1' | tail -n1" | plain | cut -c1-200)"
else
    fail "no journal line with $JOB1"
    journal_tail
fi
if [ -x "$REPO_DIR/bin/quickcmd" ]; then
    out="$(QC_T=90 cx env QUICKCMD_HMAC_SECRET="$secret" /src/bin/quickcmd run --agent https://127.0.0.1:8443 \
        --ca-cert "$CERT" --controller-id controller-1 -- echo "hi-from-the-cli-$RUN_ID" 2>&1)"
    rc=$?
    if [ "$rc" -eq 0 ] && grep -q "hi-from-the-cli-$RUN_ID" <<<"$out"; then
        pass "bin/quickcmd run pins the generated certificate and runs a job"
    else
        fail "bin/quickcmd run (exit $rc): $(tail -n 5 <<<"$out")"
    fi
else
    info "bin/quickcmd not built: the controller CLI check is skipped (python signer used)"
fi
metrics="$(cx curl -fsS --max-time 5 --cacert "$CERT" https://localhost:8443/metrics 2>&1)"
if grep -q '^quickcmd_agent_jobs_total' <<<"$metrics"; then
    pass "/metrics serves quickcmd_agent_jobs_total"
else
    fail "/metrics: $(head -c 300 <<<"$metrics")"
fi

# ---------------------------------------------------------------------------------------
section "systemctl reload: changed allowlist, running job kept, bad config refused"
pid_before="$(main_pid)"
r="$(submit "install-c2-before-$RUN_ID" true --controller controller-2)"
if [ "$(field "$r" http)" = 202 ]; then
    pass "controller-2 is allowed before the reload"
else
    fail "controller-2 before reload: $r"
fi
JOBR="install-reload-$RUN_ID"
submit "$JOBR" "sleep 3; echo survived-reload" >/dev/null
QC_T=40 client wait --job-id "$JOBR" --until running --wait-seconds 30 >/dev/null
cx sed -i '/^  - "controller-2"$/d' "$CONF"
cx systemctl reload quickcmd-agent
n=0
c2_refused() {
    n=$((n + 1))
    local r
    r="$(submit "install-c2-after-$RUN_ID-$n" true --controller controller-2)"
    [ "$(field "$r" http)" = 403 ] && [ "$(field "$r" body.code)" = CONTROLLER_NOT_ALLOWED ]
}
if wait_for 15 c2_refused; then
    pass "after systemctl reload, the removed controller-2 gets 403 CONTROLLER_NOT_ALLOWED"
else
    fail "controller-2 still accepted 15 s after the reload"
    journal_tail 20
fi
if [ "$(main_pid)" = "$pid_before" ] && cx systemctl is-active --quiet quickcmd-agent; then
    pass "reload kept the same process (MainPID $pid_before)"
else
    fail "reload restarted the agent: MainPID $pid_before -> $(main_pid)"
fi
r="$(submit "install-c1-after-$RUN_ID" true)"
if [ "$(field "$r" http)" = 202 ]; then pass "controller-1 still allowed after the reload"; else fail "controller-1 after reload: $r"; fi
r="$(QC_T=60 client wait --job-id "$JOBR" --wait-seconds 50)"
if [ "$(field "$r" body.status)" = completed ] && grep -q survived-reload <<<"$(field "$r" body.result.stdout)"; then
    pass "a job running across the reload completed"
else
    fail "job across reload: $r"
fi

cx cp "$CONF" /root/good-config.yaml
cx_sh "printf 'no_such_key: 1\n' >> $CONF"
since="$(cx date '+%Y-%m-%d %H:%M:%S')"
cx systemctl reload quickcmd-agent
sleep 2
if cx systemctl is-active --quiet quickcmd-agent && [ "$(main_pid)" = "$pid_before" ]; then
    pass "a bad config on reload does not stop the agent"
else
    fail "agent after a bad reload: $(cx systemctl is-active quickcmd-agent), MainPID $(main_pid)"
    journal_tail 20
fi
if cx_sh "journalctl -u quickcmd-agent --no-pager --since '$since' | grep -q no_such_key"; then
    pass "the refused config is logged naming the key: $(cx_sh "journalctl -u quickcmd-agent --no-pager -o cat --since '$since' | grep no_such_key | head -n1" | plain | cut -c1-200)"
else
    fail "no log line naming no_such_key after the bad reload"
    journal_tail 10
fi
r1="$(submit "install-c1-bad-$RUN_ID" true)"
r2="$(submit "install-c2-bad-$RUN_ID" true --controller controller-2)"
if [ "$(field "$r1" http)" = 202 ] && [ "$(field "$r2" body.code)" = CONTROLLER_NOT_ALLOWED ]; then
    pass "the old config stays in force after a refused reload"
else
    fail "after a refused reload: controller-1 $r1, controller-2 $r2"
fi
cx cp /root/good-config.yaml "$CONF"
cx systemctl reload quickcmd-agent

# ---------------------------------------------------------------------------------------
section "secret rotation and certificate renewal as docs/operations.md does them"
cx_sh 'openssl rand -hex 32 | install -o quickcmd -g quickcmd -m 0600 /dev/stdin /etc/quickcmd/controller-1-v2.secret'
cx python3 -c '
import sys
path = sys.argv[1]
text = open(path).read()
entry = "controllers:\n  - id: \"controller-1-v2\"\n    hmac_secret_file: \"/etc/quickcmd/controller-1-v2.secret\"\n    scopes: []"
if "\ncontrollers: []\n" not in text:
    sys.exit("no `controllers: []` line in " + path)
open(path, "w").write(text.replace("\ncontrollers: []\n", "\n" + entry + "\n"))
' "$CONF"
if cx runuser -u quickcmd -- quickcmd-agent --config="$CONF" --check-config >/dev/null 2>&1; then
    cx systemctl reload quickcmd-agent
else
    fail "config with a second controller entry does not pass --check-config"
fi
new_secret="$(cx cat /etc/quickcmd/controller-1-v2.secret)"
n=0
v2_accepted() {
    n=$((n + 1))
    [ "$(field "$(submit "install-v2-$RUN_ID-$n" true --controller controller-1-v2 --secret "$new_secret")" http)" = 202 ]
}
if wait_for 15 v2_accepted && [ "$(field "$(submit "install-v1-$RUN_ID" true)" http)" = 202 ]; then
    pass "rotation: after a reload the new id and secret are accepted and the old ones still are"
else
    fail "rotation: controller-1-v2 with its own secret not accepted after the reload"
    journal_tail 10
fi

fingerprint() {
    cx_sh 'openssl s_client -connect 127.0.0.1:8443 -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -fingerprint -sha256'
}
old_fp="$(fingerprint)"
cx cp "$CERT" /root/old-cert.pem
cx_sh 'cd /etc/quickcmd &&
    openssl req -x509 -key agent-key.pem -sha256 -days 365 -out agent-cert.pem.new \
        -subj "/CN=$(hostname)" \
        -addext "basicConstraints=critical,CA:FALSE" \
        -addext "subjectAltName=DNS:$(hostname),DNS:localhost,IP:127.0.0.1" \
        -addext "extendedKeyUsage=serverAuth" 2>/dev/null &&
    chown quickcmd:quickcmd agent-cert.pem.new && chmod 644 agent-cert.pem.new &&
    mv agent-cert.pem.new agent-cert.pem'
pid_before="$(main_pid)"
cx systemctl reload quickcmd-agent
new_cert_served() { [ "$(fingerprint)" != "$old_fp" ]; }
if [ -n "$old_fp" ] && wait_for 15 new_cert_served && health_ok >/dev/null && [ "$(main_pid)" = "$pid_before" ]; then
    pass "certificate renewal: after a reload the agent serves the new certificate, same process"
else
    fail "certificate renewal: still serving ${old_fp:-nothing} after the reload"
    journal_tail 10
fi

# ---------------------------------------------------------------------------------------
section "audit database while running"
if cx runuser -u quickcmd -- quickcmd-agent audit verify --config="$CONF" >/dev/null 2>&1; then
    pass "quickcmd-agent audit verify: the audit chain holds"
else
    fail "audit verify: $(cx runuser -u quickcmd -- quickcmd-agent audit verify --config="$CONF" 2>&1 | tail -n3)"
fi
backup=/var/lib/quickcmd/agent-audit.db.backup
if cx runuser -u quickcmd -- sqlite3 /var/lib/quickcmd/agent-audit.db ".backup '$backup'" &&
    [ "$(cx runuser -u quickcmd -- sqlite3 "$backup" 'PRAGMA integrity_check;')" = ok ] &&
    [ "$(cx runuser -u quickcmd -- sqlite3 "$backup" 'SELECT count(*) > 0 FROM sqlite_master;')" = 1 ]; then
    cx rm -f "$backup"
    pass "sqlite3 .backup of the live audit DB (docs/operations.md) gives an intact copy"
else
    fail "live backup of the audit DB failed"
fi

# ---------------------------------------------------------------------------------------
section "systemctl stop with jobs running (shutdown_grace_seconds=$GRACE)"
JOBS="install-short-$RUN_ID"
JOBL="install-long-$RUN_ID"
submit "$JOBS" "sleep 2; echo finished-in-grace" >/dev/null
submit "$JOBL" "sleep 30; echo never" >/dev/null
rs="$(QC_T=40 client wait --job-id "$JOBS" --until running --wait-seconds 30)"
rl="$(QC_T=40 client wait --job-id "$JOBL" --until running --wait-seconds 30)"
if [ "$(field "$rs" body.status)" = running ] && [ "$(field "$rl" body.status)" = running ]; then
    info "both jobs running"
else
    fail "jobs did not start: $rs $rl"
fi
t0="$(date +%s%N)"
cx systemctl stop --no-block quickcmd-agent
sleep 0.3
r="$(submit "install-during-stop-$RUN_ID" true)"
if [ "$(field "$r" http)" = 503 ] && [ "$(field "$r" body.code)" = SHUTTING_DOWN ]; then
    pass "a job submitted while stopping gets 503 SHUTTING_DOWN"
else
    fail "submit while stopping: $r"
fi
stopped() { case "$(cx systemctl show -p ActiveState --value quickcmd-agent)" in inactive | failed) return 0 ;; *) return 1 ;; esac; }
if wait_for 70 stopped; then
    elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
    if [ "$elapsed_ms" -ge $((GRACE * 1000 - 500)) ] && [ "$elapsed_ms" -lt $(((GRACE + 20) * 1000)) ]; then
        pass "systemctl stop took ${elapsed_ms} ms (grace ${GRACE} s): the running jobs were waited for, then killed"
    else
        fail "systemctl stop took ${elapsed_ms} ms; with a job longer than the grace of ${GRACE} s it should take about the grace"
    fi
else
    fail "agent still not stopped 70 s after systemctl stop"
fi
result="$(cx systemctl show -p Result --value quickcmd-agent)"
if [ "$result" = success ]; then pass "the agent exited cleanly (Result=success)"; else fail "stop result: $result"; fi
cx systemctl start quickcmd-agent
if wait_for 30 health_ok; then pass "agent starts again"; else fail "agent did not start again"; journal_tail; fi
rs="$(client get --job-id "$JOBS")"
rl="$(client get --job-id "$JOBL")"
if [ "$(field "$rs" body.status)" = completed ] && grep -q finished-in-grace <<<"$(field "$rs" body.result.stdout)"; then
    pass "a job shorter than the grace completed"
else
    fail "short job: $rs"
fi
if [ "$(field "$rl" body.status)" = failed ] && [ "$(field "$rl" body.result.reason)" = agent_shutdown ]; then
    pass "a job longer than the grace ended failed, reason agent_shutdown"
else
    fail "long job: $rl"
fi
no_sandbox_left() { [ -z "$(docker ps -aq --filter "label=quickcmd.job=$JOBL")" ]; }
if wait_for 20 no_sandbox_left; then
    pass "the killed job's sandbox container is gone from the host's engine"
else
    fail "sandbox of $JOBL still on the host: $(docker ps -a --filter "label=quickcmd.job=$JOBL" --format '{{.Names}} {{.Status}}')"
fi
audit="$(cx runuser -u quickcmd -- quickcmd-agent audit list --config="$CONF" 2>&1)"
if grep -q "$JOBL" <<<"$audit"; then
    pass "quickcmd-agent audit list shows the killed job"
else
    fail "audit list lacks $JOBL: $(tail -n 5 <<<"$audit")"
fi

cx cp "$CONF" /root/good-config.yaml
cx_sh "printf 'no_such_key: 1\n' >> $CONF"
cx systemctl restart quickcmd-agent 2>/dev/null
sleep 4
if [ "$(cx systemctl show -p ActiveState --value quickcmd-agent)" = failed ] &&
    [ "$(cx systemctl show -p ExecMainStatus --value quickcmd-agent)" = 2 ] &&
    [ "$(cx systemctl show -p NRestarts --value quickcmd-agent)" = 0 ]; then
    pass "a refused config at start fails the unit with exit status 2 and no restart loop"
else
    fail "bad config at start: $(cx systemctl show -p ActiveState -p ExecMainStatus -p NRestarts quickcmd-agent | tr '\n' ' ')"
fi
cx cp /root/good-config.yaml "$CONF"
cx systemctl start quickcmd-agent
if wait_for 30 health_ok; then pass "fixed config: the agent starts again"; else fail "agent did not start with the fixed config"; journal_tail; fi

# ---------------------------------------------------------------------------------------
section "setup-agent.sh a second time"
FILES="$CONF $CERT /etc/quickcmd/agent-key.pem /usr/local/bin/quickcmd-agent /etc/systemd/system/quickcmd-agent.service"
state() { cx_sh "sha256sum $FILES; stat -c '%n %U:%G %a' $FILES /etc/quickcmd /var/lib/quickcmd; id quickcmd"; }
before="$(state)"
pid_before="$(main_pid)"
out="$(QC_T=120 cx /src/scripts/setup-agent.sh 2>&1)"
rc=$?
after="$(state)"
if [ "$rc" -eq 0 ] && [ "$before" = "$after" ] && grep -q "nothing changed" <<<"$out"; then
    pass "second run changes nothing (config, secret, certificate, key, binary, unit, modes)"
else
    fail "second run (exit $rc) changed something:"
    diff <(printf '%s\n' "$before") <(printf '%s\n' "$after") | sed 's/^/     | /'
    printf '%s\n' "$out" | sed 's/^/     | /'
fi
if ! grep -qF "$secret" <<<"$out" && [ "$(main_pid)" = "$pid_before" ]; then
    pass "second run neither prints the secret again nor restarts the agent"
else
    fail "second run printed the secret or restarted the agent"
fi

# ---------------------------------------------------------------------------------------
section "systemd-analyze security"
sec="$(cx systemd-analyze security --no-pager quickcmd-agent 2>&1)"
grep '^✗' <<<"$sec" | sed 's/^/     | /'
exposure="$(sed -n 's/.*Overall exposure level for quickcmd-agent.service: \([0-9.]*\).*/\1/p' <<<"$sec")"
printf 'systemd-analyze security exposure: %s\n' "${exposure:-unknown}"
if [ -n "$exposure" ] && awk -v e="$exposure" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(e <= m) }'; then
    pass "exposure $exposure (at most $MAX_EXPOSURE)"
else
    fail "exposure ${exposure:-unknown} over $MAX_EXPOSURE"
fi

cx systemctl enable --quiet quickcmd-agent 2>/dev/null
if [ "$(cx systemctl is-enabled quickcmd-agent)" = enabled ]; then
    pass "systemctl enable quickcmd-agent (WantedBy=multi-user.target)"
else
    fail "systemctl enable: $(cx systemctl is-enabled quickcmd-agent 2>&1)"
fi

# ---------------------------------------------------------------------------------------
section "setup-agent.sh --uninstall"
out="$(QC_T=60 cx /src/scripts/setup-agent.sh --uninstall 2>&1)"
rc=$?
left="$(cx_sh 'for p in /usr/local/bin/quickcmd-agent /etc/systemd/system/quickcmd-agent.service /etc/quickcmd /var/lib/quickcmd; do [ -e "$p" ] && echo "$p"; done')"
if [ "$rc" -eq 0 ] && [ -z "$left" ] && ! cx systemctl is-active --quiet quickcmd-agent &&
    ! cx systemctl cat quickcmd-agent >/dev/null 2>&1 &&
    ! cx test -e /etc/systemd/system/multi-user.target.wants/quickcmd-agent.service; then
    pass "--uninstall stops and disables the agent, removes binary, unit, /etc/quickcmd, /var/lib/quickcmd"
else
    fail "--uninstall (exit $rc) left: $left"
    printf '%s\n' "$out" | sed 's/^/     | /'
fi

# ---------------------------------------------------------------------------------------
section "the .deb on a second fresh container"
if boot "qc-install-b-$RUN_ID"; then
    info "container booted"
else
    fail "second container did not boot"
    exit 1
fi
out="$(QC_T=300 cx env DEBIAN_FRONTEND=noninteractive apt-get install -y "/src/${DEB#"$REPO_DIR"/}" 2>&1)"
rc=$?
if [ "$rc" -eq 0 ]; then
    pass "apt-get install ./$(basename "$DEB")"
else
    fail "apt-get install exited $rc"
    printf '%s\n' "$out" | tail -n 20 | sed 's/^/     | /'
fi
if ! grep -q CHANGE_ME <<<"$(cx grep '^hmac_secret' "$CONF" 2>&1)" &&
    [ "$(cx stat -c '%U:%G %a' "$CONF" /etc/quickcmd/agent-key.pem 2>&1 | tr '\n' ' ')" = "quickcmd:quickcmd 600 quickcmd:quickcmd 600 " ] &&
    cx_sh 'id -nG quickcmd' | tr ' ' '\n' | grep -qx docker; then
    pass "postinst created user, config with a random secret, certificate, docker group membership"
else
    fail "package install layout: $(cx_sh "ls -la /etc/quickcmd; id quickcmd" 2>&1 | tr '\n' ';')"
fi
cx systemctl start quickcmd-agent
if wait_for 30 health_ok; then
    pass "systemctl start after apt install: /health answers over TLS"
else
    fail "packaged agent not healthy: $(cx systemctl is-active quickcmd-agent)"
    journal_tail
fi
JOBD="install-deb-$RUN_ID"
submit "$JOBD" "echo from-deb" >/dev/null
r="$(QC_T=100 client wait --job-id "$JOBD" --wait-seconds 90)"
if [ "$(field "$r" body.status)" = completed ] && grep -q from-deb <<<"$(field "$r" body.result.stdout)"; then
    pass "the packaged agent runs a signed job"
else
    fail "packaged agent job: $r"
fi
out="$(QC_T=120 cx env DEBIAN_FRONTEND=noninteractive apt-get purge -y quickcmd-agent 2>&1)"
rc=$?
if [ "$rc" -eq 0 ] && ! cx systemctl is-active --quiet quickcmd-agent && ! cx test -e /etc/quickcmd &&
    ! cx test -e /usr/bin/quickcmd-agent; then
    pass "apt-get purge stops the agent and removes binary and /etc/quickcmd"
else
    fail "apt-get purge (exit $rc)"
    printf '%s\n' "$out" | tail -n 10 | sed 's/^/     | /'
fi
