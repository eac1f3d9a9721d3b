#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, starts a private
# PostgreSQL (unless VMFLEET_TEST_PG_URL already points at one), then runs the format check,
# clippy and every test on both database backends.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }

need_apt=()
command -v ssh >/dev/null || need_apt+=(openssh-client)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

cleanup() { :; }
trap 'cleanup' EXIT

if [ -z "${VMFLEET_TEST_PG_URL:-}" ]; then
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    pgdir=$(mktemp -d /tmp/vmfleet-pg.XXXXXX)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    as_pg=()
    if [ "$(id -u)" -eq 0 ]; then
        # initdb refuses to run as root.
        chown postgres "$pgdir"
        as_pg=(runuser -u postgres --)
    fi
    log "starting a private PostgreSQL on 127.0.0.1:$port ($pgdir)"
    "${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -U postgres -A trust --no-sync >"$pgdir/initdb.log" 2>&1 \
        || { cat "$pgdir/initdb.log"; exit 1; }
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/server.log" -w \
        -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null \
        || { cat "$pgdir/server.log"; exit 1; }
    cleanup() { "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$pgdir"; }
    export VMFLEET_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
fi

log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
log "cargo test (SQLite and PostgreSQL)"
out=$(mktemp)
set -o pipefail
cargo test --workspace -- --test-threads "${VMFLEET_TEST_THREADS:-4}" 2>&1 | tee "$out"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "\n%d passed, %d failed\n", p, f }' "$out"
rm -f "$out"
