#!/usr/bin/env bash
# Cost of replication: 4 KiB write IOPS of one cstor volume with 1 replica
# against one with 3 replicas, same run, loopback, every pool a file in one
# temporary directory (one disk). Three replica daemons; volume "r1" lives on
# the first only, volume "r3" on all three; a target serves each.
#   4 KiB write — qemu-img bench -w -t none over iscsi:// (libiscsi), DEPTH in
#                 flight, COUNT writes, strided (qemu-img bench has no random
#                 offsets; see README.md)
#   4 KiB random write — cstor bench (our own iSCSI load generator), 1 and
#                 DEPTH in flight, SECONDS each after 1 s of warm-up
#                 (--no-cstor-bench leaves these rows out)
# Prints, per run and as the median of the runs: IOPS with 1 and 3 replicas,
# the ratio 3/1, and the CPU the cstor processes used (percent of one core).
# The 3-replica target acknowledges at its default quorum (2 of 3) unless
# --cf is given. Both LUNs are written whole once before measuring.
#
#   replication.sh [--runs N] [--count N] [--depth D] [--lun-mib M]
#                  [--cf K] [--seconds S] [--no-cstor-bench] [--dir DIR]
#
# Needs root for apt-get (only when libiscsi-bin/qemu-block-extra are
# missing); builds build/release/cstor when stale (or set CSTOR_BIN).
# Set BENCH_KEEP_LOGS=1 to keep the work directory when it fails.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=3
WRITE_COUNT=200000
DEPTH=32
LUN_MIB=1024
CF=()
SECONDS_BENCH=10
CSTOR_BENCH=1
DIR="${TMPDIR:-/var/tmp}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --count) WRITE_COUNT="$2"; shift 2 ;;
        --depth) DEPTH="$2"; shift 2 ;;
        --lun-mib) LUN_MIB="$2"; shift 2 ;;
        --cf) [[ "$2" =~ ^[1-3]$ ]] || die "--cf must be 1, 2 or 3"; CF=(--cf "$2"); shift 2 ;;
        --seconds) SECONDS_BENCH="$2"; shift 2 ;;
        --no-cstor-bench) CSTOR_BENCH=0; shift ;;
        --dir) DIR="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
for v in RUNS WRITE_COUNT DEPTH LUN_MIB SECONDS_BENCH; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
((LUN_MIB & (LUN_MIB - 1))) && die "--lun-mib must be a power of two (the write stride relies on it)"
((RUNS <= 20 && WRITE_COUNT <= 5000000 && DEPTH <= 128 && SECONDS_BENCH <= 300)) ||
    die "bounds: runs <= 20, count <= 5000000, depth <= 128, seconds <= 300"

ensure_packages
ensure_cstor
bench_init "$DIR"
WRITE_STEP_BYTES="$(write_step_bytes "$LUN_MIB")"
LOAD_START="$(loadavg)"

start_r1_r3 "$LUN_MIB" "${CF[@]}"
URL1="$R1_URL" PIDS1=("${R1_PIDS[@]}") URL3="$R3_URL" PIDS3=("${R3_PIDS[@]}")
say "1 replica:  $URL1"
say "3 replicas: $URL3 ${CF[*]}"

say "prefilling both LUNs (${LUN_MIB} MiB each, 1 MiB sequential writes)"
prefill "$URL1" "$LUN_MIB"
prefill "$URL3" "$LUN_MIB"

printf '%-4s %-34s %10s %10s %7s %9s %9s\n' run workload "1 replica" "3 replicas" "3/1" "cpu 1r" "cpu 3r"
rows=()
declare -A BROWS # "DEPTH" -> "iops1 iops3" lines (cstor bench random writes)
BENCH_DEPTHS=()
((CSTOR_BENCH)) && BENCH_DEPTHS=(1 "$DEPTH")
for ((run = 1; run <= RUNS; run++)); do
    # Alternate the order from run to run: drift in machine load falls on both.
    if ((run % 2)); then
        write_iops "$URL1" "$WRITE_COUNT" "$DEPTH" "${PIDS1[@]}"
        w1="$RESULT_IOPS" c1="$RESULT_CPU"
        write_iops "$URL3" "$WRITE_COUNT" "$DEPTH" "${PIDS3[@]}"
        w3="$RESULT_IOPS" c3="$RESULT_CPU"
    else
        write_iops "$URL3" "$WRITE_COUNT" "$DEPTH" "${PIDS3[@]}"
        w3="$RESULT_IOPS" c3="$RESULT_CPU"
        write_iops "$URL1" "$WRITE_COUNT" "$DEPTH" "${PIDS1[@]}"
        w1="$RESULT_IOPS" c1="$RESULT_CPU"
    fi
    printf '%-4s %-34s %10s %10s %7s %8s%% %8s%%\n' "$run" "4K strided write qd$DEPTH (qemu-img)" \
        "$w1" "$w3" "$(ratio "$w3" "$w1")" "$c1" "$c3"
    rows+=("$w1 $w3")
    for d in "${BENCH_DEPTHS[@]}"; do
        if ((run % 2)); then order=(1 3); else order=(3 1); fi
        for n in "${order[@]}"; do
            if ((n == 1)); then
                bench_iops "$URL1" write rand "$d" "$SECONDS_BENCH" "${PIDS1[@]}"
                b1="$RESULT_IOPS" bc1="$RESULT_CPU"
            else
                bench_iops "$URL3" write rand "$d" "$SECONDS_BENCH" "${PIDS3[@]}"
                b3="$RESULT_IOPS" bc3="$RESULT_CPU"
            fi
        done
        printf '%-4s %-34s %10s %10s %7s %8s%% %8s%%\n' "$run" "4K random write qd$d (cstor bench)" \
            "$b1" "$b3" "$(ratio "$b3" "$b1")" "$bc1" "$bc3"
        BROWS[$d]+="$b1 $b3"$'\n'
    done
done

m1="$(printf '%s\n' "${rows[@]}" | awk '{print $1}' | median)"
m3="$(printf '%s\n' "${rows[@]}" | awk '{print $2}' | median)"
echo "---- median of $RUNS run(s); ratio = 3 replicas / 1 replica"
printf '%-4s %-34s %10s %10s %7s\n' med "4K strided write qd$DEPTH" "$m1" "$m3" "$(ratio "$m3" "$m1")"
for d in "${BENCH_DEPTHS[@]}"; do
    m1="$(printf '%s' "${BROWS[$d]}" | awk 'NF{print $1}' | median)"
    m3="$(printf '%s' "${BROWS[$d]}" | awk 'NF{print $2}' | median)"
    printf '%-4s %-34s %10s %10s %7s\n' med "4K random write qd$d (cstor bench)" "$m1" "$m3" "$(ratio "$m3" "$m1")"
done
echo "load average: start $LOAD_START, end $(loadavg) ($(nproc) cores)"
echo "LUN ${LUN_MIB} MiB; write stride $WRITE_STEP_BYTES bytes; 3-replica quorum: ${CF[1]:-default (2 of 3)}"
