#!/usr/bin/env bash
# The chaos campaigns at full size (docs/RELIABILITY.md), with the services the test command
# starts (moto):
#   scripts/chaos.sh [TRIALS] [TASKS] [SEED] [THROTTLE_SECS]   defaults: 20, 200, 1, 60
# kill -9: each trial kills `serve` with SIGKILL at a seeded moment of a burst of TASKS, restarts
# it and runs one GC pass; its last line sums leaked instances and volumes, tasks lost and tasks
# handed two VMs. Throttling: every mutating EC2 call throttled for THROTTLE_SECS during a burst
# of TASKS; it prints the calls answered throttled and how the tasks ended. The test command runs
# both in their short modes (2 trials of 20 tasks; 5 s of throttling).
set -euo pipefail
cd "$(dirname "$0")/.."
export VMFLEET_CHAOS_TRIALS=${1:-20} VMFLEET_CHAOS_TASKS=${2:-200} VMFLEET_CHAOS_SEED=${3:-1}
export VMFLEET_CHAOS_THROTTLE_SECS=${4:-60}
VMFLEET_TEST_ONLY="--test ec2 chaos_" exec scripts/test.sh
