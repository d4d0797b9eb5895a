#!/usr/bin/env bash
# Full-rebuild throughput against the disk's own sequential write speed, in
# one run, on one filesystem (the work directory holds the fio file and every
# pool).
#   disk    — fio, sequential 1 MiB writes, O_DIRECT, libaio, --iodepth 4,
#             GIB GiB, fsync at the end: what the disk sustains.
#   rebuild — three replica daemons and a target (release binary); a volume of
#             GIB GiB is written whole (1 MiB sequential, qemu-img bench over
#             iSCSI) and flushed; then one replica's pool is replaced by a new
#             empty one (a replaced disk: SIGTERM, delete, init, start on the
#             same addresses) and the target rebuilds it from a peer. Timed
#             from the first `cstor ctl --target … status` that shows it
#             rebuilding to the first that shows it healthy (polled every
#             POLL_S; the restart-to-healthy time, which adds the target's
#             redial backoff and the handshake, is printed too).
# Prints both speeds in MiB/s, rebuild / disk, and the CPU the cstor
# processes used during the rebuild. A rebuild reads the source
# pool and writes the sink pool on the same disk, so on one disk the ceiling
# is about half the sequential write speed (the reads are O_DIRECT too).
#
#   rebuild.sh [--gib N] [--dir DIR]
#
# Needs root for apt-get only when fio, jq, libiscsi-bin or qemu-block-extra
# are missing; builds build/release/cstor when stale (or set CSTOR_BIN).
# Set BENCH_KEEP_LOGS=1 to keep the work directory when it fails.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

GIB=1
DIR="${TMPDIR:-/var/tmp}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gib) GIB="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if ! [[ "$GIB" =~ ^[1-9][0-9]*$ ]] || ((GIB > 64)); then die "--gib must be 1 to 64"; fi

ensure_packages
ensure_rebuild_packages
ensure_cstor
bench_init "$DIR"
LOAD_START="$(loadavg)"

# The measurement itself (fio, then the rebuild) is lib.sh's, shared with speed.sh.
rebuild_measure "$GIB"

echo "---- rebuild of a ${GIB} GiB volume written whole, 3 replicas, one pool replaced"
printf '%-44s %10s\n' "disk sequential write (fio, 1 MiB, direct)" "$REBUILD_DISK MiB/s"
printf '%-44s %10s\n' "full rebuild (rebuilding -> healthy)" "$REBUILD_MIB_S MiB/s"
printf '%-44s %10s\n' "rebuild / disk" "$(ratio "$REBUILD_MIB_S" "$REBUILD_DISK")"
echo "cstor processes (3 replicas + target) during the rebuild: $REBUILD_CPU% of one core"
echo "rebuild ${REBUILD_S} s (${REBUILD_WHOLE_S} s from the restart of the replica); largest total_bytes the target reported for it: $REBUILD_TOTAL"
echo "load average: start $LOAD_START, end $(loadavg) ($(nproc) cores); work dir on $(df -P "$WORK" | awk 'NR==2{print $1}')"
