#!/usr/bin/env bash
# Install the QuickCMD agent on this host, as the seed's Installation section describes:
#   1. the quickcmd system user and group
#   2. /etc/quickcmd (root:quickcmd 0750) and /var/lib/quickcmd (quickcmd:quickcmd 0750)
#   3. the binary bin/quickcmd-agent as /usr/local/bin/quickcmd-agent
#   4. a self-signed TLS leaf certificate and key (key 0600, owned by quickcmd)
#   5. the systemd unit as /etc/systemd/system/quickcmd-agent.service
#   6. quickcmd in the docker group
# plus a config from examples/agent-config.yaml with a random hmac_secret, printed once.
#
# Idempotent: a second run changes nothing and keeps the config, secret and certificate.
# `--uninstall` undoes it (the seed's Uninstallation section). `--package` is what the
# Debian package's postinst runs: the package already placed the binary and the unit.
#
# Exit status: 0 done, 1 refused (not root, Docker missing, config invalid, ...), 2 usage.
set -euo pipefail

PROG="setup-agent"
ARGS="$*"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

AGENT_USER="quickcmd"
AGENT_GROUP="quickcmd"
CONF_DIR="/etc/quickcmd"
DATA_DIR="/var/lib/quickcmd"
CONF_FILE="$CONF_DIR/agent-config.yaml"
CERT_FILE="$CONF_DIR/agent-cert.pem"
KEY_FILE="$CONF_DIR/agent-key.pem"
BIN_DST="/usr/local/bin/quickcmd-agent"
UNIT_DST="/etc/systemd/system/quickcmd-agent.service"
UNIT_NAME="quickcmd-agent.service"

BIN_SRC="${QUICKCMD_AGENT_BINARY:-$REPO_DIR/bin/quickcmd-agent}"
UNIT_SRC="$REPO_DIR/deployments/systemd/quickcmd-agent.service"
EXAMPLE_CONFIG="$REPO_DIR/examples/agent-config.yaml"

MODE="install"
PACKAGE_MODE=0
KEEP_DATA=0
CHANGES=0
BINARY_UPDATED=0
NEW_SECRET=""

say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: error: %s\n' "$PROG" "$*" >&2
    exit 1
}
changed() {
    CHANGES=$((CHANGES + 1))
    say "$*"
}

usage() {
    cat <<EOF
usage: sudo $0 [--uninstall [--keep-data]] [--package] [--help]

Installs the QuickCMD agent: user and group quickcmd, $CONF_DIR, $DATA_DIR,
$BIN_DST (from bin/quickcmd-agent: run 'make build-agent' first),
a self-signed TLS certificate, $CONF_FILE with a random hmac_secret,
the systemd unit $UNIT_DST, and quickcmd in the docker group.
A second run changes nothing; an existing config, secret and certificate are kept.

  --uninstall   stop and disable the service, remove the binary, the unit,
                $CONF_DIR and $DATA_DIR (the audit database too)
  --keep-data   with --uninstall: keep $CONF_DIR and $DATA_DIR
  --package     used by the Debian package's postinst (binary and unit come from
                the package; a missing Docker is a warning, the secret is not printed)

Environment: QUICKCMD_AGENT_BINARY (binary to install, default bin/quickcmd-agent),
DOCKER_HOST (unix:///path of the Docker socket, default /var/run/docker.sock).
EOF
}

while [ $# -gt 0 ]; do
    case "$1" in
        --uninstall) MODE="uninstall" ;;
        --keep-data) KEEP_DATA=1 ;;
        --package) PACKAGE_MODE=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
    shift
done

if [ "$PACKAGE_MODE" = 1 ]; then
    BIN_DST="/usr/bin/quickcmd-agent"
    UNIT_DST="/lib/systemd/system/quickcmd-agent.service"
    EXAMPLE_CONFIG="/usr/share/quickcmd-agent/agent-config.yaml"
fi

systemd_running() { [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

# ---------------------------------------------------------------------------------------
# Checks before touching anything

if [ "$(id -u)" -ne 0 ]; then
    die "must run as root (it creates a system user and writes /etc, /var/lib and /usr/local); run: sudo $0 $ARGS"
fi

docker_socket() {
    case "${DOCKER_HOST:-}" in
        unix://*) printf '%s\n' "${DOCKER_HOST#unix://}" ;;
        "") printf '%s\n' /var/run/docker.sock ;;
        *) printf '\n' ;; # tcp:// and friends: nothing local to check
    esac
}

check_docker() {
    local sock
    sock="$(docker_socket)"
    if [ -z "$sock" ]; then
        say "DOCKER_HOST=$DOCKER_HOST is not a local socket; not checking it"
        return 0
    fi
    if [ -S "$sock" ]; then
        return 0
    fi
    if command -v dockerd >/dev/null 2>&1; then
        warn "Docker is installed but $sock does not exist yet; start it: systemctl start docker"
        return 0
    fi
    local message="Docker is missing: no socket at $sock and no dockerd. The agent runs every job in a Docker sandbox; install Docker first (Debian: apt-get install docker.io), then run this script again"
    if [ "$PACKAGE_MODE" = 1 ]; then
        warn "$message"
        return 0
    fi
    die "$message"
}

ensure_openssl() {
    command -v openssl >/dev/null 2>&1 && return 0
    command -v apt-get >/dev/null 2>&1 || die "openssl is missing and there is no apt-get to install it; install openssl and run again"
    say "installing openssl (needed for the TLS certificate and the secret)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; } ||
        die "could not install openssl with apt-get"
}

# ---------------------------------------------------------------------------------------
# Small idempotent helpers

# ensure_mode PATH OWNER:GROUP MODE — fix owner and mode only when they differ.
ensure_mode() {
    local path="$1" owner="$2" mode="$3" now
    now="$(stat -c '%U:%G %a' "$path")"
    if [ "$now" != "$owner ${mode#0}" ]; then
        chown "$owner" "$path"
        chmod "$mode" "$path"
        changed "set $path to $owner mode $mode (was $now)"
    fi
}

ensure_dir() {
    local path="$1" owner="$2" mode="$3"
    if [ ! -d "$path" ]; then
        install -d -o "${owner%%:*}" -g "${owner##*:}" -m "$mode" "$path"
        changed "created $path ($owner, mode $mode)"
    else
        ensure_mode "$path" "$owner" "$mode"
    fi
}

# ---------------------------------------------------------------------------------------
# Steps

step_user() {
    if ! getent group "$AGENT_GROUP" >/dev/null; then
        groupadd --system "$AGENT_GROUP"
        changed "created group $AGENT_GROUP"
    fi
    if ! id -u "$AGENT_USER" >/dev/null 2>&1; then
        local shell=/usr/sbin/nologin
        [ -x "$shell" ] || shell=/bin/false
        useradd --system --gid "$AGENT_GROUP" --no-create-home --home-dir "$DATA_DIR" \
            --shell "$shell" --comment "QuickCMD agent" "$AGENT_USER"
        changed "created user $AGENT_USER"
    fi
}

step_docker_group() {
    local sock gid owner_group
    sock="$(docker_socket)"
    if ! getent group docker >/dev/null; then
        if [ -n "$sock" ] && [ -S "$sock" ]; then
            gid="$(stat -c %g "$sock")"
            if owner_group="$(getent group "$gid")"; then
                die "the Docker socket $sock belongs to group ${owner_group%%:*} (gid $gid), not docker; the unit grants SupplementaryGroups=docker: make the socket group docker"
            fi
            groupadd --system --gid "$gid" docker
            changed "created group docker with the Docker socket's gid $gid"
        elif [ "$PACKAGE_MODE" = 1 ]; then
            warn "there is no docker group yet; after installing Docker run: usermod -aG docker $AGENT_USER"
            return 0
        else
            die "there is no docker group and no Docker socket to take its gid from; install Docker first"
        fi
    fi
    if [ -n "$sock" ] && [ -S "$sock" ]; then
        owner_group="$(stat -c %G "$sock")"
        if [ "$owner_group" != docker ]; then
            warn "the Docker socket $sock is group $owner_group, not docker: the agent will not reach it"
        fi
    fi
    if ! id -nG "$AGENT_USER" | tr ' ' '\n' | grep -qx docker; then
        usermod -aG docker "$AGENT_USER"
        changed "added $AGENT_USER to the docker group (access to Docker is root-equivalent)"
    fi
}

step_dirs() {
    ensure_dir "$CONF_DIR" "root:$AGENT_GROUP" 0750
    ensure_dir "$DATA_DIR" "$AGENT_USER:$AGENT_GROUP" 0750
}

step_binary() {
    [ "$PACKAGE_MODE" = 1 ] && return 0
    if [ ! -x "$BIN_SRC" ]; then
        die "$BIN_SRC not found: build it first with 'make build-agent' (or set QUICKCMD_AGENT_BINARY)"
    fi
    if ! cmp -s "$BIN_SRC" "$BIN_DST"; then
        install -D -o root -g root -m 0755 "$BIN_SRC" "$BIN_DST"
        BINARY_UPDATED=1
        changed "installed $BIN_DST"
    fi
}

# The secret line of a config: an active `hmac_secret:` at the top level.
has_placeholder_secret() { grep -Eq '^hmac_secret:[[:space:]]*"?CHANGE_ME' "$1"; }

write_secret_into() {
    local file="$1" secret
    secret="$(openssl rand -hex 32)"
    sed -i -E "s/^hmac_secret:.*/hmac_secret: \"$secret\"/" "$file"
    grep -q "^hmac_secret: \"$secret\"\$" "$file" || die "could not write the secret into $file (no top-level hmac_secret line)"
    NEW_SECRET="$secret"
}

step_config() {
    if [ ! -e "$CONF_FILE" ]; then
        [ -r "$EXAMPLE_CONFIG" ] || die "example config $EXAMPLE_CONFIG not found"
        local tmp
        tmp="$(mktemp "$CONF_DIR/.agent-config.yaml.XXXXXX")"
        chmod 0600 "$tmp"
        cat "$EXAMPLE_CONFIG" >"$tmp"
        write_secret_into "$tmp"
        chown "$AGENT_USER:$AGENT_GROUP" "$tmp"
        mv "$tmp" "$CONF_FILE"
        changed "wrote $CONF_FILE with a new random hmac_secret"
    elif has_placeholder_secret "$CONF_FILE"; then
        write_secret_into "$CONF_FILE"
        changed "replaced the CHANGE_ME placeholder in $CONF_FILE with a random hmac_secret"
    fi
    ensure_mode "$CONF_FILE" "$AGENT_USER:$AGENT_GROUP" 0600
}

step_tls() {
    if [ -e "$CERT_FILE" ] && [ -e "$KEY_FILE" ]; then
        if openssl x509 -in "$CERT_FILE" -noout -ext basicConstraints 2>/dev/null | grep -q 'CA:TRUE'; then
            warn "$CERT_FILE is a CA certificate (CA:TRUE); the agent's TLS stack refuses it as a server certificate. Move $CERT_FILE and $KEY_FILE away and run this script again for a leaf certificate"
        fi
    else
        local host names tmpdir
        host="$(uname -n)"
        names="DNS:$host,DNS:localhost,IP:127.0.0.1,IP:::1"
        if [ "$host" = localhost ]; then names="DNS:localhost,IP:127.0.0.1,IP:::1"; fi
        tmpdir="$(mktemp -d "$CONF_DIR/.tls.XXXXXX")"
        openssl req -x509 -newkey rsa:4096 -sha256 -days 365 -nodes \
            -keyout "$tmpdir/key.pem" -out "$tmpdir/cert.pem" \
            -subj "/CN=$host" \
            -addext "basicConstraints=critical,CA:FALSE" \
            -addext "subjectAltName=$names" \
            -addext "extendedKeyUsage=serverAuth" >/dev/null 2>&1 ||
            { rm -rf "$tmpdir"; die "openssl could not generate the TLS certificate"; }
        chown "$AGENT_USER:$AGENT_GROUP" "$tmpdir/key.pem" "$tmpdir/cert.pem"
        chmod 0600 "$tmpdir/key.pem"
        chmod 0644 "$tmpdir/cert.pem"
        mv "$tmpdir/key.pem" "$KEY_FILE"
        mv "$tmpdir/cert.pem" "$CERT_FILE"
        rmdir "$tmpdir"
        changed "generated a self-signed TLS certificate for $names (valid 365 days): $CERT_FILE"
    fi
    ensure_mode "$KEY_FILE" "$AGENT_USER:$AGENT_GROUP" 0600
    ensure_mode "$CERT_FILE" "$AGENT_USER:$AGENT_GROUP" 0644
}

step_unit() {
    [ "$PACKAGE_MODE" = 1 ] && return 0
    [ -r "$UNIT_SRC" ] || die "systemd unit $UNIT_SRC not found"
    if ! cmp -s "$UNIT_SRC" "$UNIT_DST"; then
        install -D -o root -g root -m 0644 "$UNIT_SRC" "$UNIT_DST"
        changed "installed $UNIT_DST"
        if systemd_running; then
            systemctl daemon-reload
        fi
    fi
}

step_check_config() {
    [ -x "$BIN_DST" ] || return 0
    local out
    if ! out="$(runuser -u "$AGENT_USER" -- "$BIN_DST" --config="$CONF_FILE" --check-config 2>&1)"; then
        printf '%s\n' "$out" >&2
        if [ "$PACKAGE_MODE" = 1 ]; then
            warn "$CONF_FILE does not pass '$BIN_DST --check-config' (output above); fix it before starting the service"
            return 0
        fi
        die "$CONF_FILE does not pass '$BIN_DST --check-config' (output above); fix it, then run this script again"
    fi
}

print_summary() {
    local fingerprint
    fingerprint="$(openssl x509 -in "$CERT_FILE" -noout -fingerprint -sha256 2>/dev/null | sed 's/^.*=//')"
    if [ -n "$NEW_SECRET" ] && [ "$PACKAGE_MODE" = 0 ]; then
        cat <<EOF

  HMAC secret (shown only now; it is kept in $CONF_FILE):

      $NEW_SECRET

  Give it to each controller listed in allowed_controllers, through a secret store or
  an environment variable, never a repository:
      export QUICKCMD_HMAC_SECRET='$NEW_SECRET'
  and copy $CERT_FILE to the controller: it pins this certificate
  (SHA-256 fingerprint $fingerprint).
EOF
    elif [ -n "$NEW_SECRET" ]; then
        say "a random hmac_secret was written to $CONF_FILE; read it with: sudo grep '^hmac_secret' $CONF_FILE"
    fi
    if [ "$CHANGES" -eq 0 ]; then
        say "already installed; nothing changed"
    else
        say "done ($CHANGES changes)"
    fi
    if [ "$PACKAGE_MODE" = 0 ]; then
        if [ "$BINARY_UPDATED" = 1 ] && systemd_running && systemctl is-active --quiet "$UNIT_NAME"; then
            say "the running agent still uses the old binary: sudo systemctl restart quickcmd-agent"
        fi
        cat <<EOF

  Next: sudo systemctl start quickcmd-agent     # and enable it on boot:
        sudo systemctl enable quickcmd-agent
        curl --cacert $CERT_FILE https://localhost:8443/health
        sudo journalctl -u quickcmd-agent -f
EOF
    fi
}

do_install() {
    check_docker
    ensure_openssl
    step_user
    step_dirs
    step_docker_group
    step_binary
    step_config
    step_tls
    step_unit
    step_check_config
    print_summary
}

do_uninstall() {
    if [ "$PACKAGE_MODE" = 0 ] && dpkg-query -W -f='${Status}' quickcmd-agent 2>/dev/null | grep -q 'install ok installed'; then
        die "quickcmd-agent was installed from the Debian package; remove it with: apt purge quickcmd-agent"
    fi
    if systemd_running && systemctl cat "$UNIT_NAME" >/dev/null 2>&1; then
        if systemctl is-active --quiet "$UNIT_NAME"; then
            systemctl stop "$UNIT_NAME"
            changed "stopped $UNIT_NAME"
        fi
        if systemctl is-enabled --quiet "$UNIT_NAME" 2>/dev/null; then
            systemctl disable --quiet "$UNIT_NAME"
            changed "disabled $UNIT_NAME"
        fi
    fi
    if [ "$PACKAGE_MODE" = 0 ]; then
        for path in "$BIN_DST" "$UNIT_DST"; do
            if [ -e "$path" ]; then
                rm -f "$path"
                changed "removed $path"
            fi
        done
        if systemd_running; then
            systemctl daemon-reload
            systemctl reset-failed "$UNIT_NAME" >/dev/null 2>&1 || true
        fi
    fi
    if [ "$KEEP_DATA" = 0 ]; then
        for path in "$CONF_DIR" "$DATA_DIR"; do
            if [ -e "$path" ]; then
                rm -rf "$path"
                changed "removed $path"
            fi
        done
    else
        say "kept $CONF_DIR and $DATA_DIR (--keep-data)"
    fi
    if id -u "$AGENT_USER" >/dev/null 2>&1; then
        say "kept user $AGENT_USER (remove it with: userdel $AGENT_USER)"
    fi
    say "uninstalled ($CHANGES changes)"
}

case "$MODE" in
    install) do_install ;;
    uninstall) do_uninstall ;;
esac
