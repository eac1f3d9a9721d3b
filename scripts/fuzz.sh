#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ (not built by the test command), each for SECONDS:
#   scripts/fuzz.sh [SECONDS] [TARGET...]      targets: circleci policy config packer trace
# Corpora grow in fuzz/corpus/TARGET (seeded from the shared configs, the policies, a slice of
# the shared trace and fuzz/seeds); a crash or hang is written to fuzz/artifacts/TARGET and makes
# the script exit non-zero. Needs a nightly toolchain and cargo-fuzz (installed if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=(circleci policy config packer trace); fi
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
shared=../shared

seed() {
    local t=$1
    mkdir -p "fuzz/corpus/$t"
    case $t in
        circleci) cp "$shared"/circleci-configs/*.yml "fuzz/corpus/$t/" ;;
        policy) cp policies/*.yaml sim/policies/*.yaml "fuzz/corpus/$t/" ;;
        config) cp fuzz/seeds/config/* "fuzz/corpus/$t/" ;;
        packer) cp fuzz/seeds/packer/* "fuzz/corpus/$t/" ;;
        trace) head -c 60000 "$shared"/traces/travis-2019-10-07-week.csv > "fuzz/corpus/$t/week-head.csv" ;;
    esac
}

# Sixteen codegen units: with one (cargo-fuzz's default) the optimized, instrumented build of the
# AWS SDK crates the library links takes most of an hour on two cores. Build once, then run.
# The targets then run from their binaries, so editing the tree while they run rebuilds nothing;
# VMFLEET_FUZZ_NO_BUILD=1 runs the binaries already built.
fuzzflags=(--codegen-units 16)
if [ "${VMFLEET_FUZZ_NO_BUILD:-}" != 1 ]; then
    cargo +nightly fuzz build "${fuzzflags[@]}"
fi
bin=fuzz/target/x86_64-unknown-linux-gnu/release

status=0
summary=()
for t in "${targets[@]}"; do
    seed "$t"
    log=$(mktemp)
    # -timeout: an input taking longer than 10 s counts as a hang; -rss_limit_mb: as a crash.
    mkdir -p "fuzz/artifacts/$t"
    if ASAN_OPTIONS=detect_odr_violation=0 "$bin/$t" -artifact_prefix="fuzz/artifacts/$t/" "fuzz/corpus/$t" \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=262144 -print_final_stats=1 >"$log" 2>&1; then
        result=ok
    else
        result=FAILED
        status=1
        tail -40 "$log"
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
    summary+=("$t: $result, $runs inputs in ${secs}s, coverage $cov edges, corpus $(ls "fuzz/corpus/$t" | wc -l) files")
    rm -f "$log"
done
printf '%s\n' "${summary[@]}"
exit $status
