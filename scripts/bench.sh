#!/usr/bin/env bash
# `make bench`: end-to-end time of one sandboxed `true` through the agent (sign, HTTPS,
# container create/attach/start/wait, stream, result) against a bare `docker run`, both
# measured in the same run on the same host, reported as a ratio. Timings here are noisy:
# read the ratio, not the absolute numbers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib-local-agent.sh

RUNS=${BENCH_RUNS:-20}
DIR=$(pwd)/.bench
rm -rf "$DIR"
make_local_agent "$DIR" 0 bench-controller bench-agent
start_local_agent "$DIR"
trap 'kill "$AGENT_PID" 2>/dev/null; wait "$AGENT_PID" 2>/dev/null || true' EXIT
write_controller_config "$DIR" bench-controller local "$AGENT_URL"

ms() { echo $(( $(date +%s%N) / 1000000 )); }
time_runs() { # label command...
    local label=$1; shift
    "$@" >/dev/null 2>&1 || die "$label failed: $*"
    local start end
    start=$(ms)
    for _ in $(seq 1 "$RUNS"); do "$@" >/dev/null 2>&1 || die "$label failed: $*"; done
    end=$(ms)
    echo $(( (end - start) / RUNS ))
}
docker_ms=$(time_runs "docker run" docker run --rm --network none "$SANDBOX_IMAGE" true)
agent_ms=$(time_runs "quickcmd run" "$QC_BIN" run --agent local -- true)
printf 'runs: %d each\n' "$RUNS"
printf 'docker run --rm --network none %s true: %d ms/run\n' "$SANDBOX_IMAGE" "$docker_ms"
printf 'quickcmd run --agent local -- true (end to end): %d ms/run\n' "$agent_ms"
awk -v a="$agent_ms" -v d="$docker_ms" 'BEGIN { printf "ratio agent/docker: %.2f\n", a/d }'
