#!/usr/bin/env bash
# The project's test command (the README's second command). Installs what the
# tests need on a fresh Debian machine, idempotently, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
have() { command -v "$1" >/dev/null 2>&1; }
# command -> Debian package providing it, for what the test suite uses.
declare -A pkgs=(
  [iscsi-test-cu]=libiscsi-bin   # the iSCSI conformance suite
  [losetup]=mount                # block-device pools on loop devices
)
for cmd in "${!pkgs[@]}"; do have "$cmd" || need+=("${pkgs[$cmd]}"); done
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    echo "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "warning: missing ${need[*]} and not root: tests that need them will skip and say so" >&2
  fi
fi

log=$(mktemp)
trap 'rm -f "$log"' EXIT

cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$log"

# The pool store runs its whole suite on the other IO backend too (the run
# above used the default: io_uring where the kernel allows it).
CSTOR_IO_BACKEND=threads cargo test --locked --no-fail-fast -p cstor-engine "$@" 2>&1 | tee -a "$log"

# One closing line for the whole run (cargo prints one per test binary).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
