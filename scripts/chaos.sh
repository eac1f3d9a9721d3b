#!/usr/bin/env bash
# The chaos campaigns at full size (docs/RELIABILITY.md), with the services the test command
# starts (moto):
#   scripts/chaos.sh [TRIALS] [TASKS] [SEED] [THROTTLE_SECS] [PG_OUTAGE_SECS]
#   defaults: 20, 200, 1, 60, 30
# kill -9: each trial kills `serve` with SIGKILL at a seeded moment of a burst of TASKS, restarts
# it and runs one GC pass; its last line sums leaked instances and volumes, tasks lost and tasks
# handed two VMs. Throttling: every mutating EC2 call throttled for THROTTLE_SECS during a burst
# of TASKS; it prints the calls answered throttled and how the tasks ended. PostgreSQL: a private
# server stopped for PG_OUTAGE_SECS while jobs run and arrive. Disk full: the data directory on a
# small tmpfs filled while tasks arrive (needs root for the mount). The test command runs them
# all in their short modes (2 trials of 20 tasks; 5 s of throttling; 5 s without PostgreSQL).
# VMFLEET_CHAOS_FIRST_TRIAL=N resumes the seed's kill points at trial N. The emulator is emptied
# before each kill -9 trial (moto slows with every instance it ever held).
set -euo pipefail
cd "$(dirname "$0")/.."
export VMFLEET_CHAOS_TRIALS=${1:-20} VMFLEET_CHAOS_TASKS=${2:-200} VMFLEET_CHAOS_SEED=${3:-1}
export VMFLEET_CHAOS_THROTTLE_SECS=${4:-60} VMFLEET_CHAOS_PG_OUTAGE_SECS=${5:-30}
# One campaign at a time: side by side they share one moto and two cores, and measure each other.
export RUST_TEST_THREADS=1 VMFLEET_CHAOS_RESET_MOTO=1
VMFLEET_TEST_ONLY="--test ec2 --test replicas chaos_" exec scripts/test.sh
