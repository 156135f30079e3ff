#!/usr/bin/env bash
# Build (once) a Debian image that boots systemd as PID 1, for the install tests.
# debootstrap --variant=minbase from the mirror apt already uses, `docker import`ed as
# quickcmd-systemd-test:<hash of suite, package list and this script>, reused while the
# hash holds. Prints the image tag on stdout; progress goes to stderr.
set -euo pipefail

say() { printf 'build-image: %s\n' "$*" >&2; }

# systemd as init, the tools the tests drive (curl, openssl, python3 for signing,
# sqlite3 for the backup check), nothing else.
INCLUDE="systemd,systemd-sysv,dbus,ca-certificates,curl,openssl,python3,sqlite3,procps"

codename() {
    local c=""
    if [ -r /etc/os-release ]; then
        # shellcheck disable=SC1091
        c="$(. /etc/os-release && [ "${ID:-}" = debian ] && printf '%s' "${VERSION_CODENAME:-}")" || true
    fi
    printf '%s\n' "${c:-bookworm}"
}

# The Debian mirror of apt's configured sources (deb822 or one-line style), not the
# security archive; deb.debian.org when none is found.
mirror() {
    local uri=""
    uri="$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) print $i }' |
        grep -E '/debian/?$' | grep -v security | head -n1)" || true
    if [ -z "$uri" ]; then
        uri="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; break } }' |
            grep -E '/debian/?$' | grep -v security | head -n1)" || true
    fi
    printf '%s\n' "${uri:-http://deb.debian.org/debian}"
}

SUITE="${QC_TEST_SUITE:-$(codename)}"
HASH="$( (printf '%s\n%s\n' "$SUITE" "$INCLUDE" && cat "${BASH_SOURCE[0]}") | sha256sum | cut -c1-12)"
TAG="quickcmd-systemd-test:$HASH"

if docker image inspect "$TAG" >/dev/null 2>&1; then
    say "reusing $TAG"
    printf '%s\n' "$TAG"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    say "building the rootfs needs root (debootstrap)"
    exit 1
fi
if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null; }
fi

MIRROR="$(mirror)"
WORK="$(mktemp -d /var/tmp/quickcmd-rootfs.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
say "debootstrap $SUITE from $MIRROR (minbase + $INCLUDE); log: $WORK/debootstrap.log"
if ! timeout 900 debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$WORK/root" "$MIRROR" \
    >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    say "debootstrap failed"
    exit 1
fi

# Container niceties: no apt caches in the image, a hostname systemd will not fight over.
rm -rf "$WORK/root/var/cache/apt/archives/"*.deb "$WORK/root/var/lib/apt/lists/"*
: >"$WORK/root/etc/machine-id"

say "importing as $TAG"
tar -C "$WORK/root" -c . | docker import \
    --change 'CMD ["/lib/systemd/systemd"]' \
    - "$TAG" >/dev/null
printf '%s\n' "$TAG"
