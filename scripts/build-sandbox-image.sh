#!/usr/bin/env bash
# Build the local sandbox image (default quickcmd-sandbox:latest, or the name given as the first
# argument) without any registry: a static busybox from Debian's busybox-static, its applets as
# symlinks, root and nobody(65534)/nogroup, imported with `docker import`.
# Idempotent: the image is labelled with the SHA-256 of this script, and nothing is rebuilt when
# an image of that name already carries the current hash.
# Exit 1 with a sentence when the image cannot be built.
set -euo pipefail

NAME="${1:-quickcmd-sandbox:latest}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRIPT_PATH="$SCRIPT_DIR/$(basename "${BASH_SOURCE[0]}")"
HASH_LABEL="quickcmd.build-script-sha256"
LOCK_FILE="${TMPDIR:-/tmp}/quickcmd-build-sandbox-image.lock"

say() { printf 'build-sandbox-image: %s\n' "$*" >&2; }
die() {
    say "$*"
    exit 1
}

# Any step that fails without its own message still says where it stopped.
trap 'say "failed at line $LINENO: $BASH_COMMAND"' ERR

engine_answers() { docker version --format '{{.Server.APIVersion}}' >/dev/null 2>&1; }

command -v docker >/dev/null 2>&1 || "$SCRIPT_DIR/ensure-docker.sh" ||
    die "the docker client is missing and scripts/ensure-docker.sh could not install it"
if ! engine_answers; then
    say "the docker engine does not answer: running scripts/ensure-docker.sh"
    "$SCRIPT_DIR/ensure-docker.sh" || die "the docker engine does not answer and could not be started"
    engine_answers || die "the docker engine still does not answer after scripts/ensure-docker.sh"
fi

# Parallel test binaries may all call this script; one build at a time, the rest then see the
# fresh label and return at once.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$LOCK_FILE"
    flock -w 300 9 || die "could not take the build lock $LOCK_FILE within 300 s"
fi

want_hash="$(sha256sum "$SCRIPT_PATH" | cut -d' ' -f1)"
have_hash="$(docker image inspect --format "{{ index .Config.Labels \"$HASH_LABEL\" }}" "$NAME" 2>/dev/null || true)"
if [ "$have_hash" = "$want_hash" ]; then
    say "$NAME is up to date"
    exit 0
fi
old_id="$(docker image inspect --format '{{.Id}}' "$NAME" 2>/dev/null || true)"

find_busybox() {
    local candidate
    for candidate in /bin/busybox /usr/bin/busybox; do
        if [ -x "$candidate" ] && dpkg -s busybox-static >/dev/null 2>&1; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    return 1
}

if ! BUSYBOX="$(find_busybox)"; then
    [ "$(id -u)" -eq 0 ] || die "busybox-static is not installed and installing it needs root; run: sudo apt-get install busybox-static"
    say "installing Debian's busybox-static"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null 2>&1; then
        apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed, so busybox-static cannot be installed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq busybox-static >/dev/null ||
            die "apt-get install busybox-static failed"
    fi
    BUSYBOX="$(find_busybox)" || die "busybox-static is installed but no busybox binary was found"
fi

# A dynamically linked busybox would need a libc in the image; refuse it rather than build an
# image whose shell cannot start.
if command -v ldd >/dev/null 2>&1 && ldd "$BUSYBOX" 2>/dev/null | grep -q '=>'; then
    die "$BUSYBOX is dynamically linked; the sandbox image needs busybox-static"
fi

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/quickcmd-sandbox-rootfs.XXXXXX")" ||
    die "could not create a temporary directory for the image root"
trap 'rm -rf "$ROOTFS"' EXIT

mkdir -p "$ROOTFS"/{bin,etc,proc,sys,dev,tmp,work,root,usr}
chmod 1777 "$ROOTFS/tmp" "$ROOTFS/work"
chmod 0700 "$ROOTFS/root"
cp "$BUSYBOX" "$ROOTFS/bin/busybox"
chmod 0755 "$ROOTFS/bin/busybox"
applets=0
for applet in $("$BUSYBOX" --list); do
    case "$applet" in
    busybox | */* | '') continue ;;
    esac
    ln -s busybox "$ROOTFS/bin/$applet"
    applets=$((applets + 1))
done
[ "$applets" -gt 0 ] || die "$BUSYBOX --list printed no applets"
[ -e "$ROOTFS/bin/sh" ] || die "busybox has no sh applet, so the image would have no shell"
# Scripts name /usr/bin/env, /sbin/ip and the like; every applet lives in /bin.
ln -s bin "$ROOTFS/sbin"
ln -s ../bin "$ROOTFS/usr/bin"
ln -s ../bin "$ROOTFS/usr/sbin"

cat >"$ROOTFS/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
cat >"$ROOTFS/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
chmod 0644 "$ROOTFS/etc/passwd" "$ROOTFS/etc/group"

say "importing $NAME ($applets busybox applets)"
tar -C "$ROOTFS" --numeric-owner --owner=0 --group=0 -c . |
    docker import \
        --change 'CMD ["/bin/sh"]' \
        --change 'ENV PATH=/bin' \
        --change "LABEL $HASH_LABEL=$want_hash" \
        - "$NAME" >/dev/null ||
    die "docker import of $NAME failed"

new_id="$(docker image inspect --format '{{.Id}}' "$NAME" 2>/dev/null)" ||
    die "docker import reported success but $NAME is not there"
# The previous build is now untagged; drop it unless a container still uses it.
if [ -n "$old_id" ] && [ "$old_id" != "$new_id" ]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
fi
say "built $NAME ($new_id)"
