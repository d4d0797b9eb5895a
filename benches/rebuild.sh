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
POLL_S=0.2
REBUILD_TIMEOUT_S=1800 # a rebuild must finish within this
FIO_TIMEOUT_S=1800
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gib) GIB="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
if ! [[ "$GIB" =~ ^[1-9][0-9]*$ ]] || ((GIB > 64)); then die "--gib must be 1 to 64"; fi

ensure_extra_packages() {
    local need=()
    command -v fio >/dev/null || need+=(fio)
    command -v jq >/dev/null || need+=(jq)
    ((${#need[@]})) || return 0
    [[ $(id -u) == 0 ]] || die "need root to apt-get install ${need[*]}"
    say "installing: ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The state of the replica at ADDRESS in the target's status JSON on stdin.
replica_state() { jq -r --arg a "$1" '.replicas[] | select(.address == $a) | .state'; }

# disk_mib_s: fio's sequential 1 MiB O_DIRECT write bandwidth in MiB/s.
disk_mib_s() {
    local out
    out="$(timeout -k 5 "$FIO_TIMEOUT_S" fio --name=seqwrite --filename="$WORK/fio.dat" \
        --rw=write --bs=1M --direct=1 --ioengine=libaio --iodepth=4 --size="${GIB}G" \
        --end_fsync=1 --output-format=json 2>"$WORK/fio.log")" ||
        die "fio failed: $(tail -n 3 "$WORK/fio.log")"
    rm -f "$WORK/fio.dat"
    jq -r '.jobs[0].write.bw_bytes / 1048576 | floor' <<<"$out"
}

# replace_pool NAME DATA MGMT PID POOL_SIZE VOLUME VOLUME_SIZE: stops the
# replica PID, replaces its pool by a new empty one, starts it again on the
# same addresses with an empty volume. Sets REPLICA_PID.
replace_pool() {
    local name="$1" data="$2" mgmt="$3" pid="$4" size="$5" volume="$6" vsize="$7"
    stop_pid "$pid"
    rm -f "$WORK/$name.img"
    "$CSTOR" replica init --pool "$name" --file "$WORK/$name.img" --size "$size" >>"$WORK/$name-init.log" 2>&1 ||
        die "replica init $name: $(tail -n 3 "$WORK/$name-init.log")"
    RUST_LOG=info "$CSTOR" replica run --pool "$name" --pool-path "$WORK/$name.img" \
        --listen "$data" --mgmt-listen "$mgmt" >>"$WORK/$name.log" 2>&1 &
    BENCH_PIDS+=("$!")
    REPLICA_PID="$!"
    wait_listen "$REPLICA_PID" "${data##*:}"
    wait_listen "$REPLICA_PID" "${mgmt##*:}"
    create_volume "$mgmt" "$volume" "$vsize"
}

ensure_packages
ensure_extra_packages
ensure_cstor
bench_init "$DIR"
LOAD_START="$(loadavg)"

say "disk: fio sequential write, 1 MiB, O_DIRECT, ${GIB} GiB"
DISK="$(disk_mib_s)"
say "disk: $DISK MiB/s"

POOL_SIZE="$((GIB * 2))GiB"
DATA=() MGMT=() PIDS=()
for i in 1 2 3; do
    start_replica "pool$i" "$POOL_SIZE"
    DATA+=("$REPLICA_DATA") MGMT+=("$REPLICA_MGMT") PIDS+=("$REPLICA_PID")
done
for m in "${MGMT[@]}"; do create_volume "$m" rb "${GIB}GiB"; done
free_port
TARGET_MGMT="127.0.0.1:$FREE_PORT"
start_cstor_target rb --mgmt-listen "$TARGET_MGMT" -- "${DATA[@]}"
security_args admin --role admin
CTL_SECURITY=("${SECURITY_ARGS[@]}")
status() { timeout 10 "$CSTOR" ctl "${CTL_SECURITY[@]}" --target "$TARGET_MGMT" --json status 2>/dev/null || true; }

say "writing the whole volume (${GIB} GiB, 1 MiB sequential) and flushing"
prefill "$TARGET_URL" "$((GIB * 1024))"
# qemu-img bench -t none sends no flush: ask for one (SYNCHRONIZE CACHE).
timeout -k 5 120 qemu-img bench -f raw -t none -w -c 1 -d 1 -s 4096 --flush-interval=1 "$TARGET_URL" \
    >>"$WORK/prefill.log" 2>&1 || die "flush failed: $(tail -n 3 "$WORK/prefill.log")"

say "replacing pool3 by an empty pool"
T_RESTART=$EPOCHREALTIME
replace_pool pool3 "${DATA[2]}" "${MGMT[2]}" "${PIDS[2]}" "$POOL_SIZE" rb "${GIB}GiB"
CPU_PIDS=("${PIDS[0]}" "${PIDS[1]}" "$REPLICA_PID" "$TARGET_PID")
T_START="" T_END="" TOTAL="" C_START=""
deadline=$((SECONDS + REBUILD_TIMEOUT_S))
while ((SECONDS < deadline)); do
    s="$(status)"
    state="$(replica_state "${DATA[2]}" <<<"$s" 2>/dev/null || true)"
    now=$EPOCHREALTIME
    if [[ "$state" == rebuilding ]]; then
        [[ -n "$T_START" ]] || { T_START="$now"; C_START="$(cpu_ticks "${CPU_PIDS[@]}")"; }
        t="$(jq -r --arg a "${DATA[2]}" '.replicas[] | select(.address == $a) | .rebuild.total_bytes // 0' <<<"$s")"
        [[ "$t" =~ ^[0-9]+$ ]] && ((t > ${TOTAL:-0})) && TOTAL="$t"
    fi
    if [[ "$state" == healthy && -n "$T_START" ]]; then
        T_END="$now"
        C_END="$(cpu_ticks "${CPU_PIDS[@]}")"
        break
    fi
    sleep "$POLL_S"
done
[[ -n "$T_END" ]] || die "pool3 not healthy within ${REBUILD_TIMEOUT_S}s (last state '${state:-?}')"
grep -q "rebuild done" "$WORK/pool3.log" || die "pool3 became healthy without a rebuild"
grep -q "from_io_seq=0" "$WORK/pool3.log" || say "warning: no from_io_seq=0 in pool3's log (not a full rebuild?)"

MIB=$((GIB * 1024))
REBUILD_S="$(awk -v a="$T_START" -v b="$T_END" 'BEGIN{printf "%.2f", b - a}')"
WHOLE_S="$(awk -v a="$T_RESTART" -v b="$T_END" 'BEGIN{printf "%.2f", b - a}')"
REBUILD="$(awk -v m="$MIB" -v s="$REBUILD_S" 'BEGIN{ if (s > 0) printf "%.0f", m / s; else print "-" }')"
echo "---- rebuild of a ${GIB} GiB volume written whole, 3 replicas, one pool replaced"
printf '%-44s %10s\n' "disk sequential write (fio, 1 MiB, direct)" "$DISK MiB/s"
printf '%-44s %10s\n' "full rebuild (rebuilding -> healthy)" "$REBUILD MiB/s"
printf '%-44s %10s\n' "rebuild / disk" "$(ratio "$REBUILD" "$DISK")"
echo "cstor processes (3 replicas + target) during the rebuild: $(cpu_percent $((C_END - C_START)) "$REBUILD_S")% of one core"
echo "rebuild ${REBUILD_S} s (${WHOLE_S} s from the restart of the replica); largest total_bytes the target reported for it: ${TOTAL:-none seen}"
echo "load average: start $LOAD_START, end $(loadavg) ($(nproc) cores); work dir on $(df -P "$WORK" | awk 'NR==2{print $1}')"
