#!/usr/bin/env bash
# `make demo`: a real agent on loopback (generated secret and certificate), a real
# multi-line job through `quickcmd run` streaming live from a Docker sandbox, the result,
# and the controller's history line. Everything lives under .demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-local-agent.sh

DIR=$(pwd)/.demo
rm -rf "$DIR"
make_local_agent "$DIR" 0 demo-controller demo-agent
start_local_agent "$DIR"
trap 'kill "$AGENT_PID" 2>/dev/null; wait "$AGENT_PID" 2>/dev/null || true' EXIT
write_controller_config "$DIR" demo-controller local "$AGENT_URL"

echo "== agent up at $AGENT_URL (log: $DIR/agent.log)"
"$QC_BIN" health --agent local
echo
echo "== quickcmd run --agent local -- <a multi-line job>   (output streams as it is written)"
set +e
"$QC_BIN" run --agent local --prompt "demo: show the sandbox" -- '
echo "hello from the sandbox: $(uname -sr), uid $(id -u)"
for step in 1 2 3; do echo "step $step of 3"; sleep 1; done
echo "this line goes to stderr" >&2
ls / | head -n 5
echo "network interfaces: $(ls /sys/class/net | tr "\n" " ")(loopback only)"
touch /etc/x 2>/dev/null || echo "root filesystem: read-only"
exit 3'
code=$?
set -e
echo
echo "== quickcmd exited with the job's exit code: $code (the job ran 'exit 3')"
echo
echo "== quickcmd history --limit 1"
"$QC_BIN" history --limit 1
echo
echo "== audit chain on the agent"
"$QC_AGENT_BIN" audit verify --config="$DIR/agent-config.yaml"
[ "$code" -eq 3 ] || die "expected the job's exit code 3, got $code"
