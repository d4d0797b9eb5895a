#!/usr/bin/env bash
# The project's test command (the README's second command): every test of
# the workspace, the simulator's seed budget in release mode, then the pool
# store's suite again on its other IO backend, then one summary: each test
# binary with its counts and time, each skipped test with its reason, each
# failure, the total time, and last
#     tests: P passed, F failed, S skipped
# A skipped test is never counted as passed. The run goes on to the end when
# a test binary fails; the exit status is 1 if anything failed.
#
# What the tests need beyond the Rust toolchain (libiscsi's iscsi-test-cu,
# QEMU, open-iscsi, …) is installed from Debian on first use, as root, by
# the project's harness (testkit/). As root on Debian — as in CI — a test
# that skips for a missing prerequisite fails instead (CSTOR_TEST_STRICT=1;
# set CSTOR_TEST_STRICT=0 to allow skips there). Extra arguments go to both
# `cargo test` runs (e.g. a test name filter).
set -uo pipefail
cd "$(dirname "$0")/.."

start=$(date +%s.%N)
if [ -z "${CSTOR_TEST_STRICT:-}" ] && [ "$(id -u)" -eq 0 ] && [ -f /etc/debian_version ]; then
  export CSTOR_TEST_STRICT=1
fi
echo "test.sh: strict skips: ${CSTOR_TEST_STRICT:-0} (1: a skipped test fails the run)"

# Programs outside the harness's own installs: loop devices for block-device
# pools (util-linux's losetup, in Debian's mount package).
if ! command -v losetup >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
  echo "installing: mount"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mount >/dev/null
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log="$work/stamped.log"
export CSTOR_TEST_SKIP_LOG="$work/skips.tsv"
: >"$CSTOR_TEST_SKIP_LOG"

# stage NAME COMMAND…: runs COMMAND, shows its output, stamps it into the log
# with the time of each line, and records its exit status.
stage() {
  local name=$1
  shift
  echo "== $name: $*"
  "$@" 2>&1 | python3 scripts/test-summary.py stamp "$log" "$name"
  printf 'STAGE-EXIT\t%s\t%s\n' "$name" "${PIPESTATUS[0]}" >>"$log"
}

# The simulator (sim/, docs/simulation.md) runs its seed budget in release
# mode, a stage of its own: a debug build simulates ten times slower.
stage workspace cargo test --workspace --exclude cstor-sim --locked --no-fail-fast "$@"
stage simulator cargo test --release --locked --no-fail-fast -p cstor-sim "$@"
# The pool store's whole suite on the other IO backend (the run above used
# the default: io_uring where the kernel allows it).
stage engine-threads env CSTOR_IO_BACKEND=threads cargo test --locked --no-fail-fast -p cstor-engine "$@"

python3 scripts/test-summary.py report "$log" "$CSTOR_TEST_SKIP_LOG" "$start"
