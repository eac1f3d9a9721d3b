#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing, starts a private
# PostgreSQL (unless VMFLEET_TEST_PG_URL already points at one) and the moto EC2 emulator (unless
# VMFLEET_TEST_MOTO_URL points at one), then runs the format check, clippy and every test
# (or, with VMFLEET_TEST_ONLY="cargo test arguments", just those tests).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '==> %s\n' "$*" >&2; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

cleanups=()
run_cleanups() { for c in "${cleanups[@]}"; do eval "$c" || true; done; }
trap run_cleanups EXIT

need_apt=()
command -v ssh >/dev/null || need_apt+=(openssh-client)
command -v curl >/dev/null || need_apt+=(curl)
command -v openssl >/dev/null || need_apt+=(openssl)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
    log "installing ${need_apt[*]}"
    sudo_cmd=""; [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

if [ -z "${VMFLEET_TEST_PG_URL:-}" ]; then
    pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    pgdir=$(mktemp -d /tmp/vmfleet-pg.XXXXXX)
    port=$(free_port)
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
    cleanups+=('"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null 2>&1; rm -rf "$pgdir"')
    export VMFLEET_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
fi

if [ -z "${VMFLEET_TEST_MOTO_URL:-}" ]; then
    if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
        log "installing the EC2 API emulator (moto)"
        python3 -m pip install --quiet --disable-pip-version-check 'moto[server]'
    fi
    motoport=$(free_port)
    motolog=$(mktemp /tmp/vmfleet-moto.XXXXXX)
    log "starting moto on 127.0.0.1:$motoport"
    python3 -m moto.server -H 127.0.0.1 -p "$motoport" >"$motolog" 2>&1 &
    motopid=$!
    cleanups+=('kill "$motopid" 2>/dev/null; rm -f "$motolog"')
    for _ in $(seq 150); do
        curl -sf -o /dev/null "http://127.0.0.1:$motoport/moto-api/" && break
        kill -0 "$motopid" 2>/dev/null || { cat "$motolog"; exit 1; }
        sleep 0.2
    done
    export VMFLEET_TEST_MOTO_URL="http://127.0.0.1:$motoport"
fi

if [ -n "${VMFLEET_TEST_ONLY:-}" ]; then
    # One test target with the services above (scripts/chaos.sh): no format check or clippy.
    log "cargo test $VMFLEET_TEST_ONLY"
    # shellcheck disable=SC2086
    cargo test $VMFLEET_TEST_ONLY -- --nocapture
    exit 0
fi

# A clean checkout gains nothing from incremental compilation, and its files are gigabytes.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
free_kib=$(df -Pk . | awk 'NR == 2 { print $4 }')
log "free disk space here: $((free_kib / 1048576)) GiB (a clean build needs about 5)"

log "cargo fmt --check"
cargo fmt --all --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
log "cargo test (SQLite, PostgreSQL, EC2 emulator)"
out=$(mktemp)
cleanups+=('rm -f "$out"')
cargo test --workspace -- --test-threads "${VMFLEET_TEST_THREADS:-4}" 2>&1 | tee "$out"
# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { p += $4; f += $6 } END { printf "\n%d passed, %d failed\n", p, f }' "$out"
