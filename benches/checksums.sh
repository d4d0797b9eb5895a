#!/usr/bin/env bash
# What block checksums cost (engine/FORMAT.md "Block checksums"), end to
# end: two cstor volumes side by side, each a target + 1 replica on loopback,
# the same but for one thing — one replica's pool was created without block
# checksums (`cstor replica init --no-block-checksums`). Each volume is
# written whole first; then, alternating between the two in every run
# (order reversed run by run, so drift in machine load falls on both):
#   4 KiB random read and random write at queue depth DEPTH and at 1,
#   SECONDS each after 1 s of warm-up (cstor bench).
# Prints per run and as the median of the runs: IOPS with checksums,
# without, the ratio with/without (goal: ≥ 0.95 at QD32), and each side's
# server CPU per IO (µs). Then the checksum area and checksum memory per GiB.
#
#   checksums.sh [--runs N] [--seconds S] [--depth D] [--lun-mib M] [--dir DIR]
#
# Builds build/release/cstor when stale (or set CSTOR_BIN). Needs jq.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=3
SECS=10
DEPTH=32
LUN_MIB=1024
DIR="${TMPDIR:-/var/tmp}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --seconds) SECS="$2"; shift 2 ;;
        --depth) DEPTH="$2"; shift 2 ;;
        --lun-mib) LUN_MIB="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
for v in RUNS SECS DEPTH LUN_MIB; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
((RUNS <= 20 && SECS <= 300 && DEPTH <= 128 && LUN_MIB <= 65536)) ||
    die "bounds: runs <= 20, seconds <= 300, depth <= 128, lun-mib <= 65536"

ensure_packages
ensure_cstor
bench_init "$DIR"
LOAD_START="$(loadavg)"

NAMES=(sums nosums) URLS=() PIDS=()
POOL_SIZE="$((LUN_MIB * 2 / 1024 + 1))GiB"
start_replica pool-sums "$POOL_SIZE"
create_volume "$REPLICA_MGMT" vsums "${LUN_MIB}MiB"
start_cstor_target vsums -- "$REPLICA_DATA"
URLS+=("$TARGET_URL") PIDS+=("$TARGET_PID $REPLICA_PID")
start_replica pool-nosums "$POOL_SIZE" --no-block-checksums
create_volume "$REPLICA_MGMT" vnosums "${LUN_MIB}MiB"
start_cstor_target vnosums -- "$REPLICA_DATA"
URLS+=("$TARGET_URL") PIDS+=("$TARGET_PID $REPLICA_PID")
for i in 0 1; do say "${NAMES[i]}: ${URLS[i]} (pids ${PIDS[i]})"; done

say "prefilling both LUNs (${LUN_MIB} MiB each, 1 MiB sequential writes)"
for url in "${URLS[@]}"; do prefill "$url" "$LUN_MIB"; done

printf '%-4s %-28s %10s %10s %10s   %s\n' run workload checksums none "with/none" "µs/IO server: checksums none"
declare -A LABELS=([read]="4K random read qd$DEPTH" [write]="4K random write qd$DEPTH"
    [read1]="4K random read qd1" [write1]="4K random write qd1")
KINDS=(read write read1 write1)
RESULTS=()
for ((run = 1; run <= RUNS; run++)); do
    for kind in "${KINDS[@]}"; do
        iops=() us=()
        for j in 0 1; do
            # Alternate which volume goes first, run by run.
            i=$(((j + run) % 2))
            case $kind in
                read) rw=read qd=$DEPTH ;;
                write) rw=write qd=$DEPTH ;;
                read1) rw=read qd=1 ;;
                write1) rw=write qd=1 ;;
            esac
            # shellcheck disable=SC2086 # PIDS[i] is a list of PIDs
            bench_iops "${URLS[i]}" "$rw" rand "$qd" "$SECS" ${PIDS[i]}
            iops[i]="$RESULT_IOPS" us[i]="$(cpu_us_per_io "$RESULT_CPU" "$RESULT_IOPS")"
            RESULTS+=("$kind $i $RESULT_IOPS")
        done
        printf '%-4s %-28s %10s %10s %10s   %s %s\n' "$run" "${LABELS[$kind]}" "${iops[0]}" "${iops[1]}" \
            "$(ratio "${iops[0]}" "${iops[1]}")" "${us[0]}" "${us[1]}"
    done
done
echo "---- median of $RUNS run(s)"
for kind in "${KINDS[@]}"; do
    med=()
    for i in 0 1; do
        med[i]="$(printf '%s\n' "${RESULTS[@]}" | awk -v k="$kind" -v i="$i" '$1 == k && $2 == i {print $3}' | median)"
    done
    printf '%-4s %-28s %10s %10s %10s\n' med "${LABELS[$kind]}" "${med[0]}" "${med[1]}" "$(ratio "${med[0]}" "${med[1]}")"
done
echo "checksum area on disk: 4 bytes per 4 KiB of pool capacity = 1 MiB per GiB (0.098 %); in memory: 1 MiB per GiB of data written, in 4 KiB pages"
echo "load average: start $LOAD_START, end $(loadavg) ($(nproc) cores); LUN ${LUN_MIB} MiB"
