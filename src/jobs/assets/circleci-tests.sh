#!/usr/bin/env bash
# `circleci tests glob` and `circleci tests split`, as CircleCI's CLI does them, on a job's VM.
# Timing data: ~/.vmfleet/timings (file, classname, test name, seconds; tab-separated), written
# by the runner from the test results the previous run of this job stored.
set -euo pipefail
timings="$HOME/.vmfleet/timings"
usage() {
  echo "usage: circleci tests glob PATTERN... | circleci tests split [--split-by=name|filesize|timings] [--timings-type=filename|classname|testname] [--total=N] [--index=N] [FILE]" >&2
  exit 2
}
[ "${1:-}" = tests ] || usage
shift
cmd="${1:-}"
[ $# -gt 0 ] && shift
# Greedy packing: heaviest first, each to the lightest node; prints this node's names.
pack() {
  sort -t"$(printf '\t')" -k1,1gr -k2,2 | awk -F'\t' -v t="$total" -v i="$index" '
    { best = 0; for (b = 1; b < t; b++) if (load[b] + 0 < load[best] + 0) best = b
      load[best] += $1; if (best == i) print $2 }'
}
by_name() { sort | awk -v t="$total" -v i="$index" '(NR - 1) % t == i'; }
case "$cmd" in
  glob)
    shopt -s globstar nullglob dotglob extglob
    for pat in "$@"; do
      # shellcheck disable=SC2206
      matches=($pat)
      for f in "${matches[@]}"; do [ -f "$f" ] && printf '%s\n' "$f"; done
    done | sort -u
    ;;
  split)
    by=name; ttype=filename; total="${CIRCLE_NODE_TOTAL:-1}"; index="${CIRCLE_NODE_INDEX:-0}"; input=""
    while [ $# -gt 0 ]; do
      case "$1" in
        --split-by=*) by="${1#*=}" ;;
        --split-by) by="$2"; shift ;;
        --timings-type=*) ttype="${1#*=}" ;;
        --timings-type) ttype="$2"; shift ;;
        --total=*) total="${1#*=}" ;;
        --total) total="$2"; shift ;;
        --index=*) index="${1#*=}" ;;
        --index) index="$2"; shift ;;
        --show-counts | --verbose) ;;
        -*) echo "circleci tests split: unknown option $1" >&2; exit 2 ;;
        *) input="$1" ;;
      esac
      shift
    done
    if [ -n "$input" ]; then names=$(tr ' \t' '\n\n' <"$input"); else names=$(tr ' \t' '\n\n'); fi
    names=$(printf '%s\n' "$names" | sed -e '/^$/d' -e 's|^\./||')
    [ -n "$names" ] || exit 0
    case "$by" in
      name) printf '%s\n' "$names" | by_name ;;
      filesize)
        printf '%s\n' "$names" | while IFS= read -r f; do
          printf '%s\t%s\n' "$(stat -c %s -- "$f" 2>/dev/null || echo 0)" "$f"
        done | pack
        ;;
      timings)
        case "$ttype" in
          filename) col=1 ;; classname) col=2 ;; testname) col=3 ;;
          *) echo "circleci tests split: unknown timings type $ttype" >&2; exit 2 ;;
        esac
        if [ ! -s "$timings" ]; then
          echo "circleci tests split: no timing data for this job yet; splitting by name" >&2
          printf '%s\n' "$names" | by_name
          exit 0
        fi
        printf '%s\n' "$names" | awk -F'\t' -v col="$col" '
          NR == FNR { k = $col; sub(/^\.\//, "", k); if (k != "") { w[k] += $4 }; next }
          { n[++count] = $0 }
          END {
            known = 0; sum = 0
            for (j = 1; j <= count; j++) if (n[j] in w) { known++; sum += w[n[j]] }
            avg = known ? sum / known : 1
            if (!known) print "circleci tests split: no timing data matches these names; weighting them equally" > "/dev/stderr"
            for (j = 1; j <= count; j++) printf "%.6f\t%s\n", (n[j] in w) ? w[n[j]] : avg, n[j]
          }' "$timings" - | pack
        ;;
      *) echo "circleci tests split: unknown --split-by $by (name, filesize, timings)" >&2; exit 2 ;;
    esac
    ;;
  *) usage ;;
esac
