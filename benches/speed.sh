#!/usr/bin/env bash
# Issue #18's goals, every ratio in one run, one machine, one disk (loopback):
#   1 replica ≥ 1.5× tgt (default file-backed LUN) for 4 KiB random read and
#     random write at QD32, ≥ 0.9× at QD1;
#   3 replicas ≥ 0.85× 1 replica for 4 KiB random write at QD32;
#   full rebuild ≥ 0.8× the disk's sequential write speed (fio);
#   metadata in memory ≤ 0.1 % of the data it maps (fully written thin volume);
#   p99 write latency during a checkpoint ≤ 2× p99 without one.
# Steps:
#   1. tgt (one file LUN), three replica daemons, volume r1 on the first
#      (cstor-1: its target + that daemon) and r3 on all three (cstor-3: its
#      target + the three daemons), as replication.sh; every LUN written whole.
#   2. RUNS runs of cstor bench (one load generator for every side: --pattern
#      rand --bs 4k, 1 s warm-up, SECONDS measured): random read and write at
#      QD32 and QD1 on tgt, cstor-1 and cstor-3, the order of the three
#      reversed from one workload to the next and from one run to the next,
#      so drift in machine load falls on every side. Server CPU per IO from
#      /proc/PID/stat: tgtd; the cstor target + its replica daemons.
#   3. Those servers stopped and their files deleted; fio sequential write
#      against a full rebuild of a REBUILD_GIB GiB volume (rebuild.sh's
#      measurement, lib.sh's rebuild_measure).
#   4. The engine's scale bench (cargo bench -p cstor-engine --bench scale:
#      a 1 TiB thin volume whose first SCALE_GIB GiB are mapped, metadata in
#      memory per data mapped (the verdict: metadata_pct_full, the
#      projection to the whole TiB mapped — maps per chunk, checksum pages
#      up to the pool's checksum cache; what the SCALE_GIB GiB cost is
#      printed beside it),
#      p99 write latency with and without a checkpoint; CSTOR_SCALE_SECS is
#      SECONDS). Missing bench target: its rows read "not measured"; other
#      failures are reported and the run exits 1 after the summary.
# Prints each run's IOPS, their medians, then one summary: each goal, the
# measured values (medians), the ratio, the goal, met / NOT met; server CPU
# per IO on each side; load average at start and end; cstor commit, tgt
# version, date. --json FILE writes the summary as JSON too.
#
#   speed.sh [--runs N] [--seconds S] [--lun-mib M] [--rebuild-gib G]
#            [--scale-gib G] [--no-engine] [--json FILE] [--dir DIR]
#
#   --runs N         runs of the IO measurements, medians reported (1-20; 3)
#   --seconds S      each IO measurement, after 1 s of warm-up (1-300; 10)
#   --lun-mib M      size of each LUN (64-65536; 1024)
#   --rebuild-gib G  volume rebuilt and fio file (1-64; 1)
#   --scale-gib G    engine scale bench: GiB of the 1 TiB volume mapped (1-1024; 16)
#   --no-engine      skip the engine scale bench
#   --json FILE      also write the summary to FILE as JSON
#   --dir DIR        parent of the work directory (default $TMPDIR or /var/tmp)
#
# Needs root for apt-get only when tgt, libiscsi-bin, qemu-block-extra, fio
# or jq are missing; builds build/release/cstor when stale (or set
# CSTOR_BIN). Set BENCH_KEEP_LOGS=1 to keep the work directory when it fails.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RUNS=3
SECS=10
LUN_MIB=1024
REBUILD_GIB=1
SCALE_GIB=16
ENGINE=1
JSON_OUT=""
DIR="${TMPDIR:-/var/tmp}"
DEPTH=32
# value OPTION ARGS...: the option's value must be there.
value() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --runs) value "$@"; RUNS="$2"; shift 2 ;;
        --seconds) value "$@"; SECS="$2"; shift 2 ;;
        --lun-mib) value "$@"; LUN_MIB="$2"; shift 2 ;;
        --rebuild-gib) value "$@"; REBUILD_GIB="$2"; shift 2 ;;
        --scale-gib) value "$@"; SCALE_GIB="$2"; shift 2 ;;
        --no-engine) ENGINE=0; shift ;;
        --json) value "$@"; JSON_OUT="$2"; shift 2 ;;
        --dir) value "$@"; DIR="$2"; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
declare -A OPTION_OF=([RUNS]=--runs [SECS]=--seconds [LUN_MIB]=--lun-mib [REBUILD_GIB]=--rebuild-gib
    [SCALE_GIB]=--scale-gib)
for v in "${!OPTION_OF[@]}"; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "${OPTION_OF[$v]} must be a positive integer"
done
((RUNS <= 20)) || die "--runs must be 1 to 20"
((SECS <= 300)) || die "--seconds must be 1 to 300"
((LUN_MIB >= 64 && LUN_MIB <= 65536)) || die "--lun-mib must be 64 to 65536"
((REBUILD_GIB <= 64)) || die "--rebuild-gib must be 1 to 64"
((SCALE_GIB <= 1024)) || die "--scale-gib must be 1 to 1024"
if [[ -n "$JSON_OUT" ]]; then
    [[ -d "$(dirname "$JSON_OUT")" ]] || die "--json $JSON_OUT: no such directory"
fi
((ENGINE == 0)) || command -v cargo >/dev/null || die "cargo not found (--no-engine skips the engine bench)"
# compiling the bench, then SCALE_GIB GiB written and SECS measured twice
ENGINE_TIMEOUT_S=$((1800 + SCALE_GIB * 60 + SECS * 4))

T0=$SECONDS
DATE="$(date -u '+%Y-%m-%d %H:%M UTC')"
ensure_packages
ensure_rebuild_packages
ensure_cstor
bench_init "$DIR"
LOAD_START="$(loadavg)"

# ------------------------------------------------------------------ IO
# The sides, in column order: NAMES[i] at URLS[i], its processes PIDS[i].
NAMES=(tgt cstor-1 cstor-3) URLS=() PIDS=()
start_tgt tgt "$LUN_MIB"
URLS+=("$TGT_URL") PIDS+=("$TGT_PID")
start_r1_r3 "$LUN_MIB"
URLS+=("$R1_URL" "$R3_URL") PIDS+=("${R1_PIDS[*]}" "${R3_PIDS[*]}")
for i in "${!NAMES[@]}"; do say "${NAMES[i]}: ${URLS[i]} (pids ${PIDS[i]})"; done

say "prefilling every LUN (${LUN_MIB} MiB each, 1 MiB sequential writes)"
for url in "${URLS[@]}"; do prefill "$url" "$LUN_MIB"; done

KINDS=(read write read1 write1)
declare -A RW=([read]=read [write]=write [read1]=read [write1]=write)
declare -A QD=([read]=$DEPTH [write]=$DEPTH [read1]=1 [write1]=1)
declare -A LABELS=([read]="4K random read qd$DEPTH" [write]="4K random write qd$DEPTH"
    [read1]="4K random read qd1" [write1]="4K random write qd1")
# iops_row RUN LABEL IOPS0 IOPS1 IOPS2 [US0 US1 US2]
iops_row() {
    printf '%-4s %-26s %9s %9s %9s %11s %15s' "$1" "$2" "$3" "$4" "$5" "$(ratio "$4" "$3")" "$(ratio "$5" "$4")"
    (($# > 5)) && printf '   %s %s %s' "$6" "$7" "$8"
    printf '\n'
}
printf '%-4s %-26s %9s %9s %9s %11s %15s   %s\n' run workload "${NAMES[@]}" cstor-1/tgt cstor-3/cstor-1 \
    "server µs/IO: ${NAMES[*]}"
RESULTS=() # "KIND SIDE_INDEX IOPS US_PER_IO"
for ((run = 1; run <= RUNS; run++)); do
    for k in "${!KINDS[@]}"; do
        kind="${KINDS[k]}"
        iops=() us=()
        for j in 0 1 2; do
            # Forward and backward in turn, workload by workload and run by run.
            if (((run + k) % 2)); then i=$j; else i=$((2 - j)); fi
            # shellcheck disable=SC2086 # PIDS[i] is a list of PIDs
            bench_iops "${URLS[i]}" "${RW[$kind]}" rand "${QD[$kind]}" "$SECS" ${PIDS[i]}
            iops[i]="$RESULT_IOPS" us[i]="$(cpu_us_per_io "$RESULT_CPU" "$RESULT_IOPS")"
            RESULTS+=("$kind $i ${iops[i]} ${us[i]}")
        done
        iops_row "$run" "${LABELS[$kind]}" "${iops[@]}" "${us[@]}"
    done
done

# med KIND SIDE_INDEX FIELD: median over the runs of FIELD (3 IOPS, 4 µs/IO).
med() {
    printf '%s\n' "${RESULTS[@]}" | awk -v k="$1" -v i="$2" -v f="$3" '$1 == k && $2 == i && $f != "-" {print $f}' | median
}
declare -A MED_IOPS MED_US
echo "---- median of $RUNS run(s)"
for kind in "${KINDS[@]}"; do
    for i in 0 1 2; do
        MED_IOPS[$kind,$i]="$(med "$kind" "$i" 3)" MED_US[$kind,$i]="$(med "$kind" "$i" 4)"
    done
    iops_row med "${LABELS[$kind]}" "${MED_IOPS[$kind,0]}" "${MED_IOPS[$kind,1]}" "${MED_IOPS[$kind,2]}" \
        "${MED_US[$kind,0]}" "${MED_US[$kind,1]}" "${MED_US[$kind,2]}"
done

say "stopping the IO servers, deleting their LUNs and pools"
bench_stop_servers
rm -f "$WORK/tgt.img" "$WORK"/pool[123].img

# ------------------------------------------------------------------ rebuild
rebuild_measure "$REBUILD_GIB" rb-pool
bench_stop_servers
rm -f "$WORK"/rb-pool[123].img
say "rebuild: $REBUILD_MIB_S MiB/s, disk $REBUILD_DISK MiB/s"

# ------------------------------------------------------------------ engine
# Sets SCALE_NOTE (why there are no numbers; empty when there are) and
# ENGINE_FAILED (1: the bench failed for another reason than being absent).
ENGINE_FAILED=0
SCALE_NOTE=""
engine_scale() {
    local log="$WORK/scale.log"
    if ((ENGINE == 0)); then
        SCALE_NOTE="--no-engine"
        return
    fi
    say "engine scale bench: ${SCALE_GIB} GiB, ${SECS} s (cargo bench -p cstor-engine --bench scale; log $log)"
    if ! (cd "$ROOT" && CSTOR_BENCH_DIR="$WORK" CSTOR_SCALE_GIB="$SCALE_GIB" CSTOR_SCALE_SECS="$SECS" \
        CSTOR_SCALE_JSON="$WORK/scale.json" timeout -k 10 "$ENGINE_TIMEOUT_S" \
        cargo bench -p cstor-engine --bench scale) >"$log" 2>&1; then
        if grep -q "no bench target named" "$log"; then
            SCALE_NOTE="engine bench scale missing"
        else
            SCALE_NOTE="engine bench scale failed"
            ENGINE_FAILED=1
            say "engine bench scale failed; tail of $log:"
            tail -n 15 "$log" >&2
        fi
        return
    fi
    if ! jq -e 'type == "object"' "$WORK/scale.json" >/dev/null 2>&1; then
        SCALE_NOTE="engine bench scale wrote no JSON object"
        ENGINE_FAILED=1
    fi
}
engine_scale
# scale KEY: that key of the scale bench's JSON, or "-".
scale() {
    [[ -z "$SCALE_NOTE" ]] || { echo -; return; }
    jq -r --arg k "$1" '.[$k] // "-"' "$WORK/scale.json"
}
# num VALUE FORMAT [DIVISOR]: VALUE / DIVISOR printed with FORMAT, or "-".
num() { awk -v v="$1" -v f="$2" -v d="${3:-1}" 'BEGIN{ if (v == "-" || v == "") print "-"; else printf f, v / d }'; }

# ------------------------------------------------------------------ summary
LOAD_END="$(loadavg)"
COMMIT="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || COMMIT+="-dirty"
TGT_VERSION="$(pkg_version tgt)"
ELAPSED=$((SECONDS - T0))

GOALS_JSON=()
# goal NAME MEASURED RATIO OP THRESHOLD: one row of the summary (OP ≥ or ≤;
# RATIO "-": not measured).
goal() {
    local verdict
    verdict="$(awk -v r="$3" -v op="$4" -v t="$5" 'BEGIN{
        if (r == "-" || r == "") print "-"
        else if ((op == "≥" && r + 0 >= t + 0) || (op == "≤" && r + 0 <= t + 0)) print "met"
        else print "NOT met" }')"
    # %-9s: OP is one column wide but three bytes long
    printf '%-40s %-64s %7s  %-9s %s\n' "$1" "$2" "$3" "$4 $5" "$verdict"
    GOALS_JSON+=("$(jq -cn --arg goal "$1" --arg measured "$2" --arg ratio "$3" --arg op "$4" \
        --arg threshold "$5" --arg verdict "$verdict" \
        '{goal: $goal, measured: $measured, ratio: ($ratio | tonumber? // null), op: $op,
          threshold: ($threshold | tonumber), met: (if $verdict == "-" then null else $verdict == "met" end)}')")
}
# one_vs_tgt KIND QD_LABEL THRESHOLD
one_vs_tgt() {
    goal "1 replica / tgt, 4K random ${RW[$1]} $2" \
        "tgt ${MED_IOPS[$1,0]}, cstor-1 ${MED_IOPS[$1,1]} IOPS" \
        "$(ratio "${MED_IOPS[$1,1]}" "${MED_IOPS[$1,0]}")" ≥ "$3"
}

echo
echo "==== issue #18 goals — $DATE; cstor $COMMIT ($CSTOR); tgt $TGT_VERSION"
echo "medians of $RUNS run(s) × ${SECS} s, ${LUN_MIB} MiB LUNs written whole, cstor bench --pattern rand --bs 4k"
printf '%-40s %-64s %7s  %-7s %s\n' goal measured ratio goal verdict
one_vs_tgt read "QD$DEPTH" 1.5
one_vs_tgt write "QD$DEPTH" 1.5
one_vs_tgt read1 QD1 0.9
one_vs_tgt write1 QD1 0.9
goal "3 replicas / 1, 4K random write QD$DEPTH" \
    "cstor-1 ${MED_IOPS[write,1]}, cstor-3 ${MED_IOPS[write,2]} IOPS" \
    "$(ratio "${MED_IOPS[write,2]}" "${MED_IOPS[write,1]}")" ≥ 0.85
goal "full rebuild / disk sequential write" \
    "rebuild $REBUILD_MIB_S, fio $REBUILD_DISK MiB/s (${REBUILD_GIB} GiB, ${REBUILD_S} s)" \
    "$(ratio "$REBUILD_MIB_S" "$REBUILD_DISK")" ≥ 0.8
if [[ -n "$SCALE_NOTE" ]]; then
    goal "metadata in memory / data mapped (%)" "not measured ($SCALE_NOTE)" - ≤ 0.1
    goal "p99 write: checkpoint / quiet" "not measured ($SCALE_NOTE)" - ≤ 2
else
    goal "metadata in memory / data mapped (%)" \
        "1 TiB mapped (projected); measured $(num "$(scale mapped_bytes)" %.0f 1073741824) GiB: map $(num "$(scale map_pct)" %.4f) + sums $(num "$(scale checksum_pct)" %.4f) %" \
        "$(num "$(scale metadata_pct_full)" %.4f)" ≤ 0.1
    goal "p99 write: checkpoint / quiet" \
        "$(num "$(scale p99_us_checkpoint)" %.0f) vs $(num "$(scale p99_us_quiet)" %.0f) µs; $(scale checkpoints) checkpoints, longest $(num "$(scale checkpoint_ms_max)" %.0f) ms" \
        "$(num "$(scale checkpoint_p99_ratio)" %.2f)" ≤ 2
fi
echo "server CPU per IO, µs (median; tgt: tgtd; cstor-1: target + 1 replica daemon; cstor-3: target + 3):"
for kind in "${KINDS[@]}"; do
    printf '  %-26s tgt %5s   cstor-1 %5s   cstor-3 %5s\n' "${LABELS[$kind]}" \
        "${MED_US[$kind,0]}" "${MED_US[$kind,1]}" "${MED_US[$kind,2]}"
done
echo "rebuild: cstor processes (3 replicas + target) used $REBUILD_CPU% of one core"
echo "load average: start $LOAD_START, end $LOAD_END ($(nproc) cores); whole run $((ELAPSED / 60)) min $((ELAPSED % 60)) s"

if [[ -n "$JSON_OUT" ]]; then
    IOPS_JSON="$(for kind in "${KINDS[@]}"; do
        for i in 0 1 2; do
            printf '%s %s %s %s\n' "$kind" "${NAMES[i]}" "${MED_IOPS[$kind,$i]}" "${MED_US[$kind,$i]}"
        done
    done | jq -Rn '[inputs | split(" ") | {kind: .[0], side: .[1], iops: (.[2] | tonumber? // null),
        server_us_per_io: (.[3] | tonumber? // null)}]')"
    if [[ -z "$SCALE_NOTE" ]]; then SCALE_JSON="$(cat "$WORK/scale.json")"; else SCALE_JSON=null; fi
    printf '%s\n' "${GOALS_JSON[@]}" | jq -s --arg date "$DATE" --arg commit "$COMMIT" --arg binary "$CSTOR" \
        --arg tgt "$TGT_VERSION" --arg load_start "$LOAD_START" --arg load_end "$LOAD_END" \
        --argjson runs "$RUNS" --argjson seconds "$SECS" --argjson lun_mib "$LUN_MIB" \
        --argjson elapsed "$ELAPSED" --argjson iops "$IOPS_JSON" --argjson scale "$SCALE_JSON" \
        --arg scale_note "$SCALE_NOTE" --arg rb_mib_s "$REBUILD_MIB_S" --arg rb_disk "$REBUILD_DISK" \
        --arg rb_s "$REBUILD_S" --arg rb_cpu "$REBUILD_CPU" --argjson rb_gib "$REBUILD_GIB" '{
            date: $date, commit: $commit, binary: $binary, tgt: $tgt, cores: '"$(nproc)"',
            load_start: $load_start, load_end: $load_end, runs: $runs, seconds: $seconds,
            lun_mib: $lun_mib, elapsed_s: $elapsed, goals: ., iops: $iops,
            rebuild: {gib: $rb_gib, rebuild_mib_s: ($rb_mib_s | tonumber? // null),
                      disk_mib_s: ($rb_disk | tonumber? // null), seconds: ($rb_s | tonumber? // null),
                      cpu_percent: ($rb_cpu | tonumber? // null)},
            scale: $scale, scale_note: (if $scale_note == "" then null else $scale_note end)}' \
        >"$JSON_OUT" || die "writing $JSON_OUT failed"
    say "summary written to $JSON_OUT"
fi
((ENGINE_FAILED == 0)) || die "the engine scale bench failed (see above)"
