#!/usr/bin/env bash
# cstor (target + 1 replica) against Debian's tgt, same run, same disk, same
# initiators, loopback only:
#   4 KiB random read  — iscsi-perf (libiscsi), 1 then DEPTH in flight,
#                        SECONDS each (DEPTH 32 is iscsi-perf's own default;
#                        qd1 shows the per-command latency)
#   4 KiB write        — qemu-img bench -w -t none over iscsi:// (libiscsi),
#                        DEPTH in flight, COUNT writes, strided (qemu-img
#                        bench has no random offsets; see README.md)
#   4 KiB random write — cstor bench (our own iSCSI load generator), 1 then
#   and 70/30 mix        DEPTH in flight, SECONDS each after 1 s of warm-up:
#                        random offsets, which neither libiscsi tool has
#                        for writes (--no-cstor-bench leaves these out)
# Prints, per run and as the median of the runs: tgt IOPS, cstor IOPS, the
# ratio cstor/tgt, and the server CPU each side used (percent of one core:
# tgtd; cstor target + replica) and per IO (µs). Every LUN is written whole
# once before any measurement.
#
# tgt's default backing store is buffered (its reads are page-cache hits once
# the LUN has been written), and so is a cstor replica's pool by default
# (--io-mode buffered). --tgt-direct adds a second tgt whose LUN is opened
# O_DIRECT (--bsoflags direct) and a column for it; CSTOR_REPLICA_IO_MODE=direct
# in the environment runs the cstor replica O_DIRECT, so the cost of the page
# cache's absence can be told apart on both sides.
#
#   iscsi-vs-tgt.sh [--runs N] [--seconds S] [--count N] [--depth D]
#                   [--lun-mib M] [--tgt-direct] [--no-cstor-bench] [--dir DIR]
#
# Needs root for apt-get (only when tgt/libiscsi-bin/qemu-block-extra are
# missing); builds build/release/cstor when stale (or set CSTOR_BIN).
# Set BENCH_KEEP_LOGS=1 to keep the work directory when it fails.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=3
SECONDS_READ=10
WRITE_COUNT=200000
DEPTH=32
LUN_MIB=1024
TGT_DIRECT=0
CSTOR_BENCH=1
DIR="${TMPDIR:-/var/tmp}"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) RUNS="$2"; shift 2 ;;
        --seconds) SECONDS_READ="$2"; shift 2 ;;
        --count) WRITE_COUNT="$2"; shift 2 ;;
        --depth) DEPTH="$2"; shift 2 ;;
        --lun-mib) LUN_MIB="$2"; shift 2 ;;
        --tgt-direct) TGT_DIRECT=1; shift ;;
        --no-cstor-bench) CSTOR_BENCH=0; shift ;;
        --dir) DIR="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
for v in RUNS SECONDS_READ WRITE_COUNT DEPTH LUN_MIB; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer"
done
((LUN_MIB & (LUN_MIB - 1))) && die "--lun-mib must be a power of two (the write stride relies on it)"
((RUNS <= 20 && SECONDS_READ <= 300 && WRITE_COUNT <= 5000000 && DEPTH <= 128)) ||
    die "bounds: runs <= 20, seconds <= 300, count <= 5000000, depth <= 128"

ensure_packages
ensure_cstor
bench_init "$DIR"
WRITE_STEP_BYTES="$(write_step_bytes "$LUN_MIB")"
LOAD_START="$(loadavg)"

# The servers, in column order: NAMES[i] at URLS[i], its processes PIDS[i].
NAMES=() URLS=() PIDS=()
start_tgt tgt "$LUN_MIB"
NAMES+=(tgt) URLS+=("$TGT_URL") PIDS+=("$TGT_PID")
if ((TGT_DIRECT)); then
    start_tgt tgt-direct "$LUN_MIB" direct
    NAMES+=(tgt-direct) URLS+=("$TGT_URL") PIDS+=("$TGT_PID")
fi
start_replica pool1 "$((LUN_MIB * 2 / 1024 + 1))GiB"
create_volume "$REPLICA_MGMT" vol "${LUN_MIB}MiB"
start_cstor_target vol -- "$REPLICA_DATA"
NAMES+=(cstor) URLS+=("$TARGET_URL") PIDS+=("$TARGET_PID $REPLICA_PID")
for i in "${!NAMES[@]}"; do say "${NAMES[i]}: ${URLS[i]} (pids ${PIDS[i]})"; done

say "prefilling every LUN (${LUN_MIB} MiB each, 1 MiB sequential writes)"
for url in "${URLS[@]}"; do prefill "$url" "$LUN_MIB"; done

LAST=$((${#NAMES[@]} - 1)) # cstor
header() {
    printf '%-4s %-36s' run workload
    for n in "${NAMES[@]}"; do printf ' %10s' "$n"; done
    for ((i = 0; i < LAST; i++)); do printf ' %16s' "cstor/${NAMES[i]}"; done
    printf '   cpu%% | µs/IO: %s' "${NAMES[*]}"
    printf '\n'
}
# row RUN LABEL IOPS... -- CPU...
row() {
    local run="$1" label="$2" iops=() cpu=() i
    shift 2
    while [[ "$1" != "--" ]]; do iops+=("$1"); shift; done
    shift
    cpu=("$@")
    printf '%-4s %-36s' "$run" "$label"
    for v in "${iops[@]}"; do printf ' %10s' "$v"; done
    for ((i = 0; i < LAST; i++)); do printf ' %16s' "$(ratio "${iops[LAST]}" "${iops[i]}")"; done
    if ((${#cpu[@]})); then
        printf '   %s |' "${cpu[*]}"
        for ((i = 0; i <= LAST; i++)); do printf ' %s' "$(cpu_us_per_io "${cpu[i]}" "${iops[i]}")"; done
    fi
    printf '\n'
}

header
RESULTS=() # "KIND SERVER_INDEX IOPS"
declare -A LABELS=([read1]="4K random read qd1 (iscsi-perf)" [read]="4K random read qd$DEPTH (iscsi-perf)"
    [write]="4K strided write qd$DEPTH (qemu-img)" [rwrite1]="4K random write qd1 (cstor bench)"
    [rwrite]="4K random write qd$DEPTH (cstor bench)" [mix]="4K random 70/30 mix qd$DEPTH (cstor bench)")
KINDS=(read1 read write)
((CSTOR_BENCH)) && KINDS+=(rwrite1 rwrite mix)
# Write-like kinds go through the servers in reverse column order.
is_write() { [[ $1 == write || $1 == rwrite1 || $1 == rwrite || $1 == mix ]]; }
for ((run = 1; run <= RUNS; run++)); do
    # Reads go in column order, writes in reverse: drift in machine load
    # falls on every server.
    for kind in "${KINDS[@]}"; do
        iops=() cpu=()
        for ((j = 0; j <= LAST; j++)); do
            if is_write "$kind"; then i=$((LAST - j)); else i=$j; fi
            # shellcheck disable=SC2086 # PIDS[i] is a list of PIDs
            case $kind in
                read1) read_iops "${URLS[i]}" "$SECONDS_READ" 1 ${PIDS[i]} ;;
                read) read_iops "${URLS[i]}" "$SECONDS_READ" "$DEPTH" ${PIDS[i]} ;;
                write) write_iops "${URLS[i]}" "$WRITE_COUNT" "$DEPTH" ${PIDS[i]} ;;
                rwrite1) bench_iops "${URLS[i]}" write rand 1 "$SECONDS_READ" ${PIDS[i]} ;;
                rwrite) bench_iops "${URLS[i]}" write rand "$DEPTH" "$SECONDS_READ" ${PIDS[i]} ;;
                mix) bench_iops "${URLS[i]}" mix rand "$DEPTH" "$SECONDS_READ" ${PIDS[i]} ;;
            esac
            iops[i]="$RESULT_IOPS" cpu[i]="$RESULT_CPU"
            RESULTS+=("$kind $i $RESULT_IOPS $RESULT_CPU")
        done
        row "$run" "${LABELS[$kind]}" "${iops[@]}" -- "${cpu[@]}"
    done
done

echo "---- median of $RUNS run(s); ratio = cstor / tgt"
for kind in "${KINDS[@]}"; do
    med=() medcpu=()
    for i in "${!NAMES[@]}"; do
        med[i]="$(printf '%s\n' "${RESULTS[@]}" | awk -v k="$kind" -v i="$i" '$1 == k && $2 == i {print $3}' | median)"
        medcpu[i]="$(printf '%s\n' "${RESULTS[@]}" | awk -v k="$kind" -v i="$i" '$1 == k && $2 == i && $4 != "-" {print $4}' | median)"
    done
    row med "${LABELS[$kind]}" "${med[@]}" -- "${medcpu[@]}"
done
echo "load average: start $LOAD_START, end $(loadavg) ($(nproc) cores)"
echo "LUN ${LUN_MIB} MiB; write stride $WRITE_STEP_BYTES bytes; qemu-img $(qemu-img --version | awk 'NR==1{print $3}'); tgt $(pkg_version tgt)"
