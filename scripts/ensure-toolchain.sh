#!/usr/bin/env bash
# Make sure cargo and a C compiler (ring and SQLite build C code) are there.
set -euo pipefail
say() { printf 'ensure-toolchain: %s\n' "$*" >&2; }
if ! command -v cc >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        say "no C compiler: installing Debian's build-essential"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential pkg-config >/dev/null
    else
        say "no C compiler found; run: sudo apt-get install build-essential"
        exit 1
    fi
fi
# The TLS tests scan the agent with `openssl s_client` (crates/quickcmd-agent/tests/tls.rs).
if ! command -v openssl >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then
        say "no openssl command: installing Debian's openssl"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null
    else
        say "no openssl command (the TLS tests need it); run: sudo apt-get install openssl"
        exit 1
    fi
    command -v openssl >/dev/null 2>&1 || { say "installing openssl failed"; exit 1; }
fi
if ! command -v cargo >/dev/null 2>&1; then
    for dir in "$HOME/.cargo/bin" /root/.cargo/bin /usr/local/cargo/bin; do
        if [ -x "$dir/cargo" ]; then
            say "cargo is in $dir but not on PATH; run: export PATH=$dir:\$PATH"
            exit 1
        fi
    done
    say "cargo not found: install Rust 1.89 or newer (https://rustup.rs), then retry"
    exit 1
fi
version=$(cargo --version | awk '{print $2}')
major=${version%%.*}; rest=${version#*.}; minor=${rest%%.*}
if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 89 ]; }; then
    say "cargo $version is too old: QuickCMD needs Rust 1.89 or newer (rustup update stable)"
    exit 1
fi
