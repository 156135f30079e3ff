#!/usr/bin/env bash
# Make sure a Docker engine answers on the local socket: install Debian's docker.io when
# dockerd is missing, start dockerd when nothing answers, then wait for it.
# Exit 1 with a sentence when that cannot be done; callers decide whether that is fatal.
set -euo pipefail

SOCK="${DOCKER_SOCK:-/var/run/docker.sock}"
LOG="${DOCKERD_LOG:-/var/log/quickcmd-dockerd.log}"

say() { printf 'ensure-docker: %s\n' "$*" >&2; }

engine_answers() {
    curl -fsS --max-time 3 --unix-socket "$SOCK" http://localhost/_ping >/dev/null 2>&1
}

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        say "$1 needs root; run: sudo $0"
        exit 1
    fi
}

if ! command -v curl >/dev/null 2>&1; then
    need_root "installing curl"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl >/dev/null
fi

# On cgroup v1, a hierarchy that exists in the kernel but is mounted nowhere on the host
# (a systemd-in-container test can create one) makes containerd lose track of containers:
# OOM kills then go unreported. Mount every such hierarchy where Docker expects it.
mount_missing_cgroup_hierarchies() {
    [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" = "tmpfs" ] || return 0
    [ "$(id -u)" -eq 0 ] || return 0
    local line controllers dir remounted=""
    while IFS= read -r line; do
        controllers=${line#*:}; controllers=${controllers%%:*}
        case "$controllers" in ""|name=*) continue ;; esac
        dir=/sys/fs/cgroup/$controllers
        mountpoint -q "$dir" 2>/dev/null && continue
        if [ -z "$remounted" ] && ! touch /sys/fs/cgroup/.qc-probe 2>/dev/null; then
            mount -o remount,rw /sys/fs/cgroup 2>/dev/null && remounted=yes
        fi
        rm -f /sys/fs/cgroup/.qc-probe
        if mkdir -p "$dir" 2>/dev/null && mount -t cgroup -o "$controllers" cgroup "$dir" 2>/dev/null; then
            say "mounted cgroup hierarchy $controllers at $dir (it was mounted nowhere)"
        else
            say "warning: cgroup hierarchy $controllers is mounted nowhere and could not be mounted; OOM kills may go unreported"
        fi
    done < /proc/self/cgroup
    if [ -n "$remounted" ]; then mount -o remount,ro /sys/fs/cgroup 2>/dev/null || true; fi
}
mount_missing_cgroup_hierarchies

if engine_answers; then
    say "docker engine answers on $SOCK"
    exit 0
fi

if ! command -v dockerd >/dev/null 2>&1; then
    need_root "installing docker.io"
    say "dockerd not found: installing Debian's docker.io"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

need_root "starting dockerd"
# systemd may own docker on a normal host; on CI and containers there is no init to ask.
if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
    systemctl start docker 2>/dev/null || true
fi
if ! engine_answers; then
    say "starting dockerd (log: $LOG)"
    nohup dockerd --host "unix://$SOCK" >>"$LOG" 2>&1 &
fi

for _ in $(seq 1 60); do
    if engine_answers; then
        say "docker engine is up on $SOCK"
        exit 0
    fi
    sleep 1
done
say "docker engine did not answer on $SOCK within 60 s; last lines of $LOG:"
tail -n 20 "$LOG" >&2 || true
exit 1
