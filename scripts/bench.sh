#!/usr/bin/env bash
# Warm-pool assignment benchmark on SQLite and PostgreSQL, with pgbench on the same PostgreSQL
# as the machine's own limit. Usage: scripts/bench.sh [postgres://admin-url]
# Without a URL a private PostgreSQL is started (as in scripts/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
B=target/release/vmfleet
export VMFLEET_LOG=warn,sqlx=error VMFLEET_DATA_DIR=$(mktemp -d)
url=${1:-}
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
if [ -z "$url" ]; then
    pgdir=$(mktemp -d /tmp/vmfleet-pgbench.XXXXXX); port=55499
    as_pg=(); if [ "$(id -u)" -eq 0 ]; then chown postgres "$pgdir"; as_pg=(runuser -u postgres --); fi
    "${as_pg[@]}" "$pgbin/initdb" -D "$pgdir/data" -U postgres -A trust --no-sync >/dev/null
    "${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/log" -w \
        -o "-p $port -k $pgdir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null
    trap '"${as_pg[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m immediate stop >/dev/null; rm -rf "$pgdir"' EXIT
    url="postgres://postgres@127.0.0.1:$port/postgres"
fi
args=(--requests 3000 --rate 300 --max-requests 5000 --concurrency 16)
$B bench assign --database sqlite "${args[@]}"
$B bench assign --database "$url" "${args[@]}"
host=$(echo "$url" | sed -E 's#.*@([^:/]+).*#\1#'); port=$(echo "$url" | sed -E 's#.*:([0-9]+)/.*#\1#')
"$pgbin/psql" -h "$host" -p "$port" -U postgres -qc "DROP DATABASE IF EXISTS vmfleet_pgbench" -c "CREATE DATABASE vmfleet_pgbench"
"$pgbin/pgbench" -h "$host" -p "$port" -U postgres -i -s 1 -q vmfleet_pgbench >/dev/null 2>&1
echo "pgbench -N -c 16 -j 2 -T 10 (same server):"
"$pgbin/pgbench" -h "$host" -p "$port" -U postgres -N -c 16 -j 2 -T 10 vmfleet_pgbench 2>&1 | grep -E "tps|latency average"
"$pgbin/psql" -h "$host" -p "$port" -U postgres -qc "DROP DATABASE vmfleet_pgbench"
