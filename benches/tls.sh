#!/usr/bin/env bash
# Cost of authenticated links: one cstor volume with one replica whose links
# are mutual TLS 1.3 (the default) against the same with --insecure-plaintext,
# same run, loopback, both pools files in one temporary directory (one disk).
# Two replica daemons (one TLS, one plaintext), one volume and one target on
# each; the iSCSI side is the same for both (the initiator's link is not
# TLS). Measured per run, the order alternating from run to run:
#   4 KiB random read  — iscsi-perf at QD1 and QD DEPTH for SECONDS
#   4 KiB write        — qemu-img bench -w -t none at QD1 and QD DEPTH, COUNT
#                        writes, strided (see README.md)
# Prints each run and the medians: IOPS plaintext, IOPS TLS, the ratio
# TLS/plaintext, and the CPU the cstor processes used (percent of one core).
#
#   tls.sh [--runs N] [--seconds S] [--count N] [--depth D] [--lun-mib M] [--dir DIR]
#
# Needs root for apt-get (only when libiscsi-bin/qemu-block-extra are
# missing); builds build/release/cstor when stale (or set CSTOR_BIN).
# Set BENCH_KEEP_LOGS=1 to keep the work directory when it fails.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=3
SECONDS_PER_READ=10
WRITE_COUNT=100000
DEPTH=32
LUN_MIB=1024
DIR="${TMPDIR:-/var/tmp}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --seconds) SECONDS_PER_READ="$2"; shift 2 ;;
        --count) WRITE_COUNT="$2"; shift 2 ;;
        --depth) DEPTH="$2"; shift 2 ;;
        --lun-mib) LUN_MIB="$2"; shift 2 ;;
        --dir) DIR="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
for v in RUNS SECONDS_PER_READ WRITE_COUNT DEPTH LUN_MIB; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
((LUN_MIB & (LUN_MIB - 1))) && die "--lun-mib must be a power of two (the write stride relies on it)"
((RUNS <= 20 && SECONDS_PER_READ <= 600 && WRITE_COUNT <= 5000000 && DEPTH <= 128)) ||
    die "bounds: runs <= 20, seconds <= 600, count <= 5000000, depth <= 128"

ensure_packages
ensure_cstor
bench_init "$DIR"
WRITE_STEP_BYTES="$(write_step_bytes "$LUN_MIB")"
LOAD_START="$(loadavg)"
POOL_SIZE="$((LUN_MIB * 2 / 1024 + 1))GiB"

declare -A URL PIDS_OF
for mode in plaintext tls; do
    BENCH_SECURITY="$mode"
    start_replica "pool-$mode" "$POOL_SIZE"
    create_volume "$REPLICA_MGMT" "v-$mode" "${LUN_MIB}MiB"
    start_cstor_target "v-$mode" -- "$REPLICA_DATA"
    URL[$mode]="$TARGET_URL"
    PIDS_OF[$mode]="$TARGET_PID $REPLICA_PID"
    say "$mode: ${URL[$mode]}"
done
BENCH_SECURITY=tls

say "prefilling both LUNs (${LUN_MIB} MiB each, 1 MiB sequential writes)"
prefill "${URL[plaintext]}" "$LUN_MIB"
prefill "${URL[tls]}" "$LUN_MIB"

# measure MODE KIND DEPTH: sets RESULT_IOPS/RESULT_CPU.
measure() {
    local mode="$1" kind="$2" depth="$3" pids
    read -r -a pids <<<"${PIDS_OF[$mode]}"
    case "$kind" in
        read) read_iops "${URL[$mode]}" "$SECONDS_PER_READ" "$depth" "${pids[@]}" ;;
        write) write_iops "${URL[$mode]}" "$WRITE_COUNT" "$depth" "${pids[@]}" ;;
    esac
}

label() { if [[ "$1" == read ]]; then echo "4K random read qd$2"; else echo "4K strided write qd$2"; fi; }

printf '%-4s %-24s %10s %10s %7s %9s %9s\n' run workload plaintext tls tls/pt "cpu pt" "cpu tls"
declare -A ROWS
WORKLOADS=("read 1" "read $DEPTH" "write 1" "write $DEPTH")
for ((run = 1; run <= RUNS; run++)); do
    for w in "${WORKLOADS[@]}"; do
        read -r kind depth <<<"$w"
        if ((run % 2)); then order=(plaintext tls); else order=(tls plaintext); fi
        declare -A iops cpu
        for mode in "${order[@]}"; do
            measure "$mode" "$kind" "$depth"
            iops[$mode]="$RESULT_IOPS" cpu[$mode]="$RESULT_CPU"
        done
        printf '%-4s %-24s %10s %10s %7s %8s%% %8s%%\n' "$run" "$(label "$kind" "$depth")" \
            "${iops[plaintext]}" "${iops[tls]}" "$(ratio "${iops[tls]}" "${iops[plaintext]}")" \
            "${cpu[plaintext]}" "${cpu[tls]}"
        ROWS["$w"]+="${iops[plaintext]} ${iops[tls]}"$'\n'
    done
done

echo "---- median of $RUNS run(s); ratio = TLS / plaintext"
for w in "${WORKLOADS[@]}"; do
    read -r kind depth <<<"$w"
    pt="$(printf '%s' "${ROWS[$w]}" | awk 'NF{print $1}' | median)"
    tl="$(printf '%s' "${ROWS[$w]}" | awk 'NF{print $2}' | median)"
    printf '%-4s %-24s %10s %10s %7s\n' med "$(label "$kind" "$depth")" "$pt" "$tl" "$(ratio "$tl" "$pt")"
done
echo "load average: start $LOAD_START, end $(loadavg) ($(nproc) cores)"
echo "LUN ${LUN_MIB} MiB; write stride $WRITE_STEP_BYTES bytes (writes are strided, reads random)"
