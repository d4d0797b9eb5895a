# shellcheck shell=bash
# shellcheck disable=SC2034 # TGT_*, REPLICA_*, TARGET_*, RESULT_* are outputs
# Shared helpers of the iSCSI benchmark scripts (iscsi-vs-tgt.sh,
# replication.sh, tls.sh, checksums.sh, rebuild.sh, speed.sh): sourced,
# never run.
#
# Job: install the initiators and tgt when missing, build cstor in release
# when it is stale, start throwaway servers on free loopback ports with their
# pools/backing files in one temporary directory (so one disk), measure IOPS
# with real initiators (libiscsi's iscsi-perf and qemu-img bench, and our own
# `cstor bench` where they fall short: random writes, mixes), and tear
# everything down on exit, failure or Ctrl-C.
#
# Invariants:
# - every process started here is recorded by PID and ended by PID in
#   `bench_cleanup` (TERM, then KILL after a bound); nothing is ended by name;
# - every client command runs under `timeout`, so a hung server cannot hang
#   the bench;
# - only 127.0.0.1 is used; ports are checked free with `ss` before use.
#
# Bounds are named here, once:
BENCH_START_TIMEOUT_S=60    # a server must be serving within this
BENCH_STOP_TIMEOUT_S=10     # SIGTERM grace before SIGKILL
BENCH_PREFILL_TIMEOUT_S=600 # writing a whole LUN once
BENCH_CLIENT_SLACK_S=120    # on top of the expected run time of a client
REBUILD_POLL_S=0.2          # how often rebuild_measure asks the target's status
REBUILD_TIMEOUT_S=1800      # a rebuild must finish within this
FIO_TIMEOUT_S=1800          # fio's sequential write of the rebuild bench

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CSTOR="${CSTOR_BIN:-$ROOT/build/release/cstor}"
CLK_TCK="$(getconf CLK_TCK)"
BENCH_PIDS=()     # server processes to stop, in start order
BENCH_TGT_CTLS=() # tgtd control ports (tgtd ignores SIGTERM: stop via tgtadm)
BENCH_PORTS=()    # ports handed out by free_port, so two calls never collide
WORK=""
# How the cstor processes started next secure their links: "tls" (the
# product's default: mutual TLS 1.3, certificates of a CA made per run in
# $WORK/pki) or "plaintext" (--insecure-plaintext). A script may switch it
# between servers (benches/tls.sh runs both side by side).
BENCH_SECURITY="${BENCH_SECURITY:-tls}"

say() { echo "[bench] $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

# ------------------------------------------------------------------ packages

pkg_version() { dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null | awk '/install ok installed/{print $4}'; }

# Installs tgt, libiscsi-bin, and qemu-utils + qemu-block-extra of one
# version (qemu-img loads block-iscsi.so only from its own build), each only
# when missing or mismatched.
ensure_packages() {
    local need=() qv bv cand
    command -v tgtd >/dev/null && command -v tgtadm >/dev/null || need+=(tgt)
    command -v iscsi-perf >/dev/null && command -v iscsi-readcapacity16 >/dev/null || need+=(libiscsi-bin)
    command -v jq >/dev/null || need+=(jq) # reads cstor bench --json
    qv="$(pkg_version qemu-utils)"
    bv="$(pkg_version qemu-block-extra)"
    if [[ -z "$qv" || "$qv" != "$bv" ]]; then
        [[ $(id -u) == 0 ]] || die "need root to apt-get install qemu-utils/qemu-block-extra (have '$qv'/'$bv')"
        apt-get update -qq
        # One version for both: the candidate of qemu-block-extra (the pair
        # must come from the same suite; this may move qemu-utils).
        cand="$(apt-cache policy qemu-block-extra | awk '/Candidate:/{print $2}')"
        [[ -n "$cand" && "$cand" != "(none)" ]] || die "no qemu-block-extra in the apt sources"
        need+=("qemu-utils=$cand" "qemu-block-extra=$cand")
    fi
    if ((${#need[@]})); then
        [[ $(id -u) == 0 ]] || die "need root to apt-get install ${need[*]}"
        say "installing: ${need[*]}"
        [[ -n "${cand:-}" ]] || apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --allow-downgrades \
            "${need[@]}" >/dev/null
    fi
    command -v tgtd >/dev/null || die "tgtd still missing"
    command -v iscsi-perf >/dev/null || die "iscsi-perf still missing"
    [[ "$(pkg_version qemu-utils)" == "$(pkg_version qemu-block-extra)" ]] ||
        die "qemu-utils and qemu-block-extra versions differ"
}

# Builds the release binary when it is missing or older than any source.
ensure_cstor() {
    if [[ -n "${CSTOR_BIN:-}" ]]; then
        [[ -x "$CSTOR" ]] || die "CSTOR_BIN=$CSTOR is not executable"
        return
    fi
    if [[ ! -x "$CSTOR" ]] || [[ -n "$(find "$ROOT/src" "$ROOT/proto" "$ROOT/engine" "$ROOT/target" \
        "$ROOT/mgmt" "$ROOT/replica" "$ROOT/Cargo.toml" "$ROOT/Cargo.lock" \
        -newer "$CSTOR" \( -name '*.rs' -o -name '*.toml' -o -name '*.proto' -o -name Cargo.lock \) \
        -print -quit 2>/dev/null)" ]]; then
        say "building cstor (release)"
        (cd "$ROOT" && cargo build --release --bin cstor) >&2 || die "cargo build failed"
    fi
}

# ------------------------------------------------------------------ lifecycle

# Creates the work directory (one filesystem for every pool and backing file)
# and arms the cleanup trap.
bench_init() {
    local base="$1"
    mkdir -p "$base"
    WORK="$(mktemp -d "$base/cstor-bench.XXXXXX")"
    trap bench_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    say "work dir $WORK ($(df -P "$WORK" | awk 'NR==2{print $1}'))"
    "$CSTOR" certs ca --out "$WORK/pki/ca" --name "cstor bench" >"$WORK/certs.log" 2>&1 ||
        die "certs ca: $(cat "$WORK/certs.log")"
}

# security_args NAME ROLE_ARGS...: sets SECURITY_ARGS to the flags that
# secure a process (--tls-dir with a certificate for ROLE_ARGS, issued once
# per NAME, or --insecure-plaintext), following BENCH_SECURITY.
security_args() {
    local name="$1"
    shift
    if [[ "$BENCH_SECURITY" == plaintext ]]; then
        SECURITY_ARGS=(--insecure-plaintext)
        return
    fi
    [[ "$BENCH_SECURITY" == tls ]] || die "BENCH_SECURITY must be tls or plaintext"
    if [[ ! -f "$WORK/pki/$name/tls.crt" ]]; then
        "$CSTOR" certs issue --ca "$WORK/pki/ca" --out "$WORK/pki/$name" "$@" >>"$WORK/certs.log" 2>&1 ||
            die "certs issue $name: $(tail -n 3 "$WORK/certs.log")"
    fi
    SECURITY_ARGS=(--tls-dir "$WORK/pki/$name")
}

stop_pid() {
    local pid="$1" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < BENCH_STOP_TIMEOUT_S * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# Stops every server started so far (tgtd through its control port, then
# each process by PID in reverse start order: targets before replicas) and
# forgets them; servers started afterwards are tracked anew.
bench_stop_servers() {
    local ctl i
    for ctl in "${BENCH_TGT_CTLS[@]}"; do
        tgtadm -C "$ctl" --op delete --mode system >/dev/null 2>&1 || true
    done
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${BENCH_PIDS[i]}"
    done
    # tgtd leaves its control socket behind when it exits.
    for ctl in "${BENCH_TGT_CTLS[@]}"; do
        rm -f "/var/run/tgtd/socket.$ctl" "/var/run/tgtd/socket.$ctl.lock"
    done
    BENCH_TGT_CTLS=() BENCH_PIDS=()
}

bench_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    bench_stop_servers
    if [[ -n "$WORK" && -d "$WORK" ]]; then
        if ((rc != 0)) && [[ -n "${BENCH_KEEP_LOGS:-}" ]]; then
            say "logs kept in $WORK"
        else
            ((rc == 0)) || for f in "$WORK"/*.log; do
                [[ -s "$f" ]] && { say "--- tail of $f"; tail -n 15 "$f" >&2; }
            done
            rm -rf "$WORK"
        fi
    fi
    exit "$rc"
}

# Sets FREE_PORT to a loopback TCP port nobody listens on and not yet handed
# out by us (not a command substitution: it records what it handed out).
free_port() {
    local port used
    used="$(ss -Hltn | awk '{n = split($4, a, ":"); print a[n]}')"
    while :; do
        # below the kernel's ephemeral range (32768-60999), where outgoing
        # connections take their local ports
        port=$((10000 + RANDOM % 22000))
        grep -qx "$port" <<<"$used" && continue
        [[ " ${BENCH_PORTS[*]} " == *" $port "* ]] && continue
        BENCH_PORTS+=("$port")
        FREE_PORT="$port"
        return
    done
}

# wait_log PID FILE PATTERN: until FILE matches PATTERN, PID exits, or timeout.
wait_log() {
    local pid="$1" file="$2" pattern="$3" i
    for ((i = 0; i < BENCH_START_TIMEOUT_S * 10; i++)); do
        grep -q -- "$pattern" "$file" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || die "process $pid exited early: $(tail -n 5 "$file")"
        sleep 0.1
    done
    die "timeout waiting for '$pattern' in $file"
}

# wait_listen PID PORT: until PORT listens on loopback, PID exits, or timeout.
wait_listen() {
    local pid="$1" port="$2" i
    for ((i = 0; i < BENCH_START_TIMEOUT_S * 10; i++)); do
        ss -Hltn | awk '{print $4}' | grep -qx "127.0.0.1:$port" && return 0
        kill -0 "$pid" 2>/dev/null || die "process $pid exited before listening on $port"
        sleep 0.1
    done
    die "nothing listens on 127.0.0.1:$port after ${BENCH_START_TIMEOUT_S}s"
}

# Until READ CAPACITY answers on URL.
wait_lun() {
    local url="$1" i
    for ((i = 0; i < BENCH_START_TIMEOUT_S * 2; i++)); do
        timeout 10 iscsi-readcapacity16 "$url" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    die "LUN $url does not answer READ CAPACITY"
}

# Logical block length of the LUN at URL, in bytes.
lun_block_bytes() {
    timeout 10 iscsi-readcapacity16 "$1" | awk -F: '/LOGICAL BLOCK LENGTH IN BYTES/{gsub(/ /, "", $2); print $2}'
}

# ------------------------------------------------------------------ servers

# start_tgt NAME SIZE_MIB [BSOFLAGS]: a tgtd with one LUN on a new file
# NAME.img (BSOFLAGS "direct" opens it O_DIRECT; default buffered, tgt's
# default). Sets TGT_URL and TGT_PID.
start_tgt() {
    local name="$1" size_mib="$2" oflags=() port ctl iqn="iqn.2024-01.org.example.bench:$1"
    [[ -n "${3:-}" ]] && oflags=(--bsoflags "$3")
    free_port
    port="$FREE_PORT"
    # The control "port" names tgtd's management socket, socket.CTL; tgtd
    # takes small numbers only.
    ctl=$((1000 + RANDOM % 8000))
    while [[ -e "/var/run/tgtd/socket.$ctl" || " ${BENCH_TGT_CTLS[*]} " == *" $ctl "* ]]; do
        ctl=$((1000 + RANDOM % 8000))
    done
    fallocate -l "${size_mib}M" "$WORK/$name.img"
    tgtd -f -C "$ctl" --iscsi portal=127.0.0.1:"$port" >"$WORK/$name.log" 2>&1 &
    BENCH_PIDS+=("$!")
    BENCH_TGT_CTLS+=("$ctl")
    wait_listen "$!" "$port"
    tgtadm -C "$ctl" --lld iscsi --op new --mode target --tid 1 -T "$iqn" >&2
    tgtadm -C "$ctl" --lld iscsi --op new --mode logicalunit --tid 1 --lun 1 \
        -b "$WORK/$name.img" "${oflags[@]}" >&2
    tgtadm -C "$ctl" --lld iscsi --op bind --mode target --tid 1 -I ALL >&2
    TGT_PID="${BENCH_PIDS[-1]}"
    TGT_URL="iscsi://127.0.0.1:$port/$iqn/1"
    wait_lun "$TGT_URL"
}

# start_replica NAME POOL_SIZE [INIT_FLAG...]: a replica daemon on a new
# file-backed pool (INIT_FLAGs go to `cstor replica init`).
# Sets REPLICA_DATA (data address), REPLICA_MGMT and REPLICA_PID.
start_replica() {
    local name="$1" size="$2" data mgmt
    shift 2 # the rest: extra `replica init` flags
    free_port
    data="$FREE_PORT"
    free_port
    mgmt="$FREE_PORT"
    "$CSTOR" replica init --pool "$name" --file "$WORK/$name.img" --size "$size" "$@" >"$WORK/$name-init.log" 2>&1 ||
        die "replica init $name: $(cat "$WORK/$name-init.log")"
    security_args "replica-$name" --role replica --pool "$name"
    RUST_LOG=info "$CSTOR" replica run --pool "$name" --pool-path "$WORK/$name.img" \
        --listen "127.0.0.1:$data" --mgmt-listen "127.0.0.1:$mgmt" "${SECURITY_ARGS[@]}" >"$WORK/$name.log" 2>&1 &
    BENCH_PIDS+=("$!")
    REPLICA_PID="$!"
    wait_listen "$REPLICA_PID" "$data"
    wait_listen "$REPLICA_PID" "$mgmt"
    REPLICA_DATA="127.0.0.1:$data"
    REPLICA_MGMT="127.0.0.1:$mgmt"
}

# create_volume MGMT VOLUME SIZE
create_volume() {
    security_args admin --role admin
    "$CSTOR" ctl "${SECURITY_ARGS[@]}" --mgmt "$1" volume create "$2" --size "$3" >>"$WORK/ctl.log" 2>&1 ||
        die "volume create $2 on $1: $(tail -n 3 "$WORK/ctl.log")"
}

# start_cstor_target VOLUME [EXTRA_ARGS...] -- REPLICA_ADDR...: returns once
# the volume is open and the LUN answers. Sets TARGET_URL and TARGET_PID.
start_cstor_target() {
    local volume="$1" port args=() log
    shift
    while [[ $# -gt 0 && "$1" != "--" ]]; do
        args+=("$1")
        shift
    done
    shift
    for r in "$@"; do args+=(--replica "$r"); done
    free_port
    port="$FREE_PORT"
    log="$WORK/target-$volume.log"
    security_args "target-$volume" --role target --volume "$volume"
    RUST_LOG=info "$CSTOR" target --listen "127.0.0.1:$port" --volume "$volume" "${SECURITY_ARGS[@]}" "${args[@]}" >"$log" 2>&1 &
    BENCH_PIDS+=("$!")
    TARGET_PID="$!"
    wait_log "$TARGET_PID" "$log" "iSCSI target serving"
    TARGET_URL="iscsi://127.0.0.1:$port/iqn.2016-09.com.openebs.cstor:$volume/0"
    wait_lun "$TARGET_URL"
}

# start_replicas COUNT PREFIX POOL_SIZE: COUNT replica daemons, pools
# PREFIX1..PREFIXCOUNT. Sets the arrays REPLICAS_DATA, REPLICAS_MGMT and
# REPLICAS_PID (in that order).
start_replicas() {
    local count="$1" prefix="$2" size="$3" i
    REPLICAS_DATA=() REPLICAS_MGMT=() REPLICAS_PID=()
    for ((i = 1; i <= count; i++)); do
        start_replica "$prefix$i" "$size"
        REPLICAS_DATA+=("$REPLICA_DATA") REPLICAS_MGMT+=("$REPLICA_MGMT") REPLICAS_PID+=("$REPLICA_PID")
    done
}

# start_r1_r3 LUN_MIB [TARGET_ARGS...]: three replica daemons (pools
# pool1..pool3); volume r1 (LUN_MIB) on the first only, volume r3 on all
# three, a target for each (TARGET_ARGS, e.g. --cf K, go to r3's). Sets
# R1_URL and R1_PIDS (its target and replica), R3_URL and R3_PIDS (its
# target and the three replicas).
start_r1_r3() {
    local lun_mib="$1" m
    shift
    # pool1 holds both volumes
    start_replicas 3 pool "$((lun_mib * 3 / 1024 + 1))GiB"
    create_volume "${REPLICAS_MGMT[0]}" r1 "${lun_mib}MiB"
    for m in "${REPLICAS_MGMT[@]}"; do create_volume "$m" r3 "${lun_mib}MiB"; done
    start_cstor_target r1 -- "${REPLICAS_DATA[0]}"
    R1_URL="$TARGET_URL" R1_PIDS=("$TARGET_PID" "${REPLICAS_PID[0]}")
    start_cstor_target r3 "$@" -- "${REPLICAS_DATA[@]}"
    R3_URL="$TARGET_URL" R3_PIDS=("$TARGET_PID" "${REPLICAS_PID[@]}")
}

# ------------------------------------------------------------------ measures

# CPU ticks (user + system) used so far by the given PIDs together.
cpu_ticks() {
    local total=0 pid f
    for pid in "$@"; do
        # Fields after the ")" that ends comm: utime is the 12th, stime the 13th.
        f="$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null)" || continue
        read -r -a a <<<"$f"
        total=$((total + a[11] + a[12]))
    done
    echo "$total"
}

# cpu_percent TICKS_DELTA WALL_SECONDS: percent of one core.
cpu_percent() { awk -v t="$1" -v w="$2" -v hz="$CLK_TCK" 'BEGIN{ if (w > 0) printf "%.0f", 100 * t / hz / w; else print "-" }'; }

# prefill URL SIZE_MIB: writes the whole LUN once, 1 MiB sequential, so that
# reads hit allocated data and writes overwrite (no thin allocation in the
# measured runs).
prefill() {
    local url="$1" size_mib="$2"
    timeout -k 5 "$BENCH_PREFILL_TIMEOUT_S" qemu-img bench -f raw -t none -w \
        -c "$size_mib" -d 8 -s 1M -S 1M "$url" >>"$WORK/prefill.log" 2>&1 ||
        die "prefill of $url failed: $(tail -n 3 "$WORK/prefill.log")"
}

# read_iops URL SECONDS DEPTH PIDS...: 4 KiB random reads with iscsi-perf for
# SECONDS. Sets RESULT_IOPS, and RESULT_CPU: what PIDS used, in percent of
# one core (globals, not output: a failure inside $(...) could not stop us).
read_iops() {
    local url="$1" secs="$2" depth="$3" bs blocks out t0 t1 c0 c1 iops
    shift 3
    bs="$(lun_block_bytes "$url")"
    if ! [[ "$bs" =~ ^[0-9]+$ ]] || ((bs == 0 || bs > 4096 || 4096 % bs != 0)); then
        die "block length '$bs' of $url"
    fi
    blocks=$((4096 / bs))
    c0="$(cpu_ticks "$@")"
    t0=$EPOCHREALTIME
    # iscsi-perf runs until SIGINT, then prints its totals; rc 124 is ours.
    out="$(timeout -s INT -k "$BENCH_CLIENT_SLACK_S" "$secs" iscsi-perf -r -m "$depth" -b "$blocks" "$url" 2>&1)" || true
    t1=$EPOCHREALTIME
    c1="$(cpu_ticks "$@")"
    iops="$(parse_iscsi_perf <<<"$out")"
    [[ -n "$iops" ]] || die "iscsi-perf on $url gave no result: $(tail -c 300 <<<"$out")"
    RESULT_IOPS="$iops"
    RESULT_CPU="$(cpu_percent $((c1 - c0)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')")"
}

# The mean IOPS of an iscsi-perf run: it prints one "iops current N" sample
# a second (on one line, separated by spaces); the first 2 are ramp-up and
# left out when there are more than 4.
parse_iscsi_perf() {
    grep -o 'iops current [0-9]*' | awk '{v[NR] = $3} END {
        first = (NR > 4) ? 3 : 1; n = 0; s = 0
        for (i = first; i <= NR; i++) { s += v[i]; n++ }
        if (n > 0) printf "%d\n", s / n }'
}

# write_iops URL COUNT DEPTH PIDS...: COUNT 4 KiB writes with qemu-img bench,
# DEPTH in flight, strided over the LUN (see README: qemu-img bench has no
# random offsets). Sets RESULT_IOPS and RESULT_CPU as read_iops does.
write_iops() {
    local url="$1" count="$2" depth="$3" out c0 c1 t0 t1 secs
    shift 3
    c0="$(cpu_ticks "$@")"
    t0=$EPOCHREALTIME
    out="$(timeout -k 5 $((BENCH_CLIENT_SLACK_S + count / 1000)) qemu-img bench -f raw -t none -w \
        -c "$count" -d "$depth" -s 4096 -S "$WRITE_STEP_BYTES" "$url" 2>&1)" ||
        die "qemu-img bench on $url failed: $(tail -n 3 <<<"$out")"
    t1=$EPOCHREALTIME
    c1="$(cpu_ticks "$@")"
    secs="$(awk '/Run completed in/{print $4}' <<<"$out")"
    [[ -n "$secs" ]] || die "qemu-img bench on $url gave no time: $out"
    RESULT_IOPS="$(awk -v c="$count" -v s="$secs" 'BEGIN{printf "%d", c / s}')"
    RESULT_CPU="$(cpu_percent $((c1 - c0)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')")"
}

# bench_iops URL RW PATTERN DEPTH SECONDS PIDS...: `cstor bench` (our own
# iSCSI load generator: random offsets for writes too) against URL, 4 KiB
# IOs, RW read|write|mix (70 % reads), PATTERN rand|seq, DEPTH in flight
# on one session, 1 s of warm-up then SECONDS measured. Sets RESULT_IOPS,
# RESULT_CPU (PIDS' CPU, percent of one core, as read_iops), RESULT_P99_US
# (p99 latency) and RESULT_CLIENT_US (the bench's own CPU per IO, µs).
bench_iops() {
    local url="$1" rw="$2" pattern="$3" depth="$4" secs="$5" rest portal iqn lun out c0 c1 t0 t1
    shift 5
    # iscsi://HOST:PORT/IQN/LUN
    rest="${url#iscsi://}"
    portal="${rest%%/*}"
    rest="${rest#*/}"
    iqn="${rest%/*}"
    lun="${rest##*/}"
    c0="$(cpu_ticks "$@")"
    t0=$EPOCHREALTIME
    out="$(timeout -k 5 $((BENCH_CLIENT_SLACK_S + secs)) "$CSTOR" bench --portal "$portal" --target "$iqn" \
        --lun "$lun" --rw "$rw" --pattern "$pattern" --bs 4k --qd "$depth" --warmup 1s \
        --runtime "${secs}s" --json 2>"$WORK/cstor-bench.err")" ||
        die "cstor bench on $url failed: $(tail -n 3 "$WORK/cstor-bench.err")"
    t1=$EPOCHREALTIME
    c1="$(cpu_ticks "$@")"
    RESULT_IOPS="$(jq -r '.iops | floor' <<<"$out")"
    RESULT_P99_US="$(jq -r '.latency_us.p99 | floor' <<<"$out")"
    RESULT_CLIENT_US="$(jq -r '.cpu.us_per_io' <<<"$out")"
    [[ "$RESULT_IOPS" =~ ^[0-9]+$ ]] || die "cstor bench on $url gave no IOPS: $out"
    # The servers' CPU over the whole client run (warm-up included) against
    # the whole client time: a rate, comparable with read_iops'.
    RESULT_CPU="$(cpu_percent $((c1 - c0)) "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b - a}')")"
}

# cpu_us_per_io CPU_PERCENT IOPS: server CPU per IO in µs (percent of one
# core over IO per second).
cpu_us_per_io() { awk -v c="$1" -v i="$2" 'BEGIN{ if (i > 0 && c != "-") printf "%.0f", c * 1e4 / i; else print "-" }'; }

# A 4 KiB write stride that visits every 4 KiB block of the LUN once per pass
# in a scattered order: an odd number of blocks (coprime with the LUN's
# power-of-two block count) about 1/7 of the LUN apart.
write_step_bytes() {
    local size_mib="$1" blocks
    blocks=$((size_mib * 256 / 7))
    ((blocks % 2)) || blocks=$((blocks + 1))
    echo $((blocks * 4096))
}

# median of the numbers on stdin (one per line).
median() { sort -n | awk '{v[NR] = $1} END { if (NR == 0) print "-"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%d\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (b > 0) printf "%.2f", a / b; else print "-" }'; }

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ------------------------------------------------------------------ rebuild

# fio and jq (the rebuild measurement needs both), installed when missing.
ensure_rebuild_packages() {
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

# disk_mib_s GIB: fio's sequential 1 MiB O_DIRECT write bandwidth over a
# GIB GiB file in $WORK (deleted after), in MiB/s. Sets DISK_MIB_S.
disk_mib_s() {
    local out
    out="$(timeout -k 5 "$FIO_TIMEOUT_S" fio --name=seqwrite --filename="$WORK/fio.dat" \
        --rw=write --bs=1M --direct=1 --ioengine=libaio --iodepth=4 --size="${1}G" \
        --end_fsync=1 --output-format=json 2>"$WORK/fio.log")" ||
        die "fio failed: $(tail -n 3 "$WORK/fio.log")"
    rm -f "$WORK/fio.dat"
    DISK_MIB_S="$(jq -r '.jobs[0].write.bw_bytes / 1048576 | floor' <<<"$out")"
    [[ "$DISK_MIB_S" =~ ^[0-9]+$ ]] || die "fio gave no bandwidth: $(tail -c 300 <<<"$out")"
}

# replace_pool NAME DATA MGMT PID POOL_SIZE VOLUME VOLUME_SIZE: stops the
# replica PID, replaces its pool by a new empty one, starts it again on the
# same addresses (and the same certificate) with an empty volume. Sets
# REPLICA_PID.
replace_pool() {
    local name="$1" data="$2" mgmt="$3" pid="$4" size="$5" volume="$6" vsize="$7"
    stop_pid "$pid"
    rm -f "$WORK/$name.img"
    "$CSTOR" replica init --pool "$name" --file "$WORK/$name.img" --size "$size" >>"$WORK/$name-init.log" 2>&1 ||
        die "replica init $name: $(tail -n 3 "$WORK/$name-init.log")"
    security_args "replica-$name" --role replica --pool "$name"
    RUST_LOG=info "$CSTOR" replica run --pool "$name" --pool-path "$WORK/$name.img" \
        --listen "$data" --mgmt-listen "$mgmt" "${SECURITY_ARGS[@]}" >>"$WORK/$name.log" 2>&1 &
    BENCH_PIDS+=("$!")
    REPLICA_PID="$!"
    wait_listen "$REPLICA_PID" "${data##*:}"
    wait_listen "$REPLICA_PID" "${mgmt##*:}"
    create_volume "$mgmt" "$volume" "$vsize"
}

# rebuild_measure GIB [PREFIX]: the disk's sequential write speed (fio, GIB
# GiB), then a full rebuild of a GIB GiB volume "rb" written whole: three
# replica daemons (pools PREFIX1..PREFIX3, default "pool") and a target;
# PREFIX3's pool is replaced by an empty one and rebuilt from a peer, timed
# from the first target status that shows it rebuilding to the first that
# shows it healthy (see benches/README.md). Leaves its servers running
# (bench_stop_servers or the exit trap ends them). Sets REBUILD_DISK (MiB/s),
# REBUILD_MIB_S, REBUILD_S (seconds rebuilding), REBUILD_WHOLE_S (from the
# restart of the replica), REBUILD_CPU (percent of one core: the 3 replicas
# and the target during the rebuild) and REBUILD_TOTAL (the largest
# total_bytes the target reported for it, or "none seen").
rebuild_measure() {
    local gib="$1" prefix="${2:-pool}" pool_size target_mgmt sink t_restart t_start="" t_end="" total=""
    local c_start="" c_end="" deadline s state now t cpu_pids=()
    say "disk: fio sequential write, 1 MiB, O_DIRECT, ${gib} GiB"
    disk_mib_s "$gib"
    REBUILD_DISK="$DISK_MIB_S"
    say "disk: $REBUILD_DISK MiB/s"

    pool_size="$((gib * 2))GiB"
    start_replicas 3 "$prefix" "$pool_size"
    for s in "${REPLICAS_MGMT[@]}"; do create_volume "$s" rb "${gib}GiB"; done
    free_port
    target_mgmt="127.0.0.1:$FREE_PORT"
    start_cstor_target rb --mgmt-listen "$target_mgmt" -- "${REPLICAS_DATA[@]}"

    say "writing the whole volume (${gib} GiB, 1 MiB sequential) and flushing"
    prefill "$TARGET_URL" "$((gib * 1024))"
    # qemu-img bench -t none sends no flush: ask for one (SYNCHRONIZE CACHE).
    timeout -k 5 120 qemu-img bench -f raw -t none -w -c 1 -d 1 -s 4096 --flush-interval=1 "$TARGET_URL" \
        >>"$WORK/prefill.log" 2>&1 || die "flush failed: $(tail -n 3 "$WORK/prefill.log")"

    sink="${REPLICAS_DATA[2]}"
    say "replacing ${prefix}3 by an empty pool"
    t_restart=$EPOCHREALTIME
    replace_pool "${prefix}3" "$sink" "${REPLICAS_MGMT[2]}" "${REPLICAS_PID[2]}" "$pool_size" rb "${gib}GiB"
    cpu_pids=("${REPLICAS_PID[0]}" "${REPLICAS_PID[1]}" "$REPLICA_PID" "$TARGET_PID")
    security_args admin --role admin
    deadline=$((SECONDS + REBUILD_TIMEOUT_S))
    while ((SECONDS < deadline)); do
        s="$(timeout 10 "$CSTOR" ctl "${SECURITY_ARGS[@]}" --target "$target_mgmt" --json status 2>/dev/null || true)"
        state="$(replica_state "$sink" <<<"$s" 2>/dev/null || true)"
        now=$EPOCHREALTIME
        if [[ "$state" == rebuilding ]]; then
            [[ -n "$t_start" ]] || { t_start="$now"; c_start="$(cpu_ticks "${cpu_pids[@]}")"; }
            t="$(jq -r --arg a "$sink" '.replicas[] | select(.address == $a) | .rebuild.total_bytes // 0' <<<"$s")"
            [[ "$t" =~ ^[0-9]+$ ]] && ((t > ${total:-0})) && total="$t"
        fi
        if [[ "$state" == healthy && -n "$t_start" ]]; then
            t_end="$now"
            c_end="$(cpu_ticks "${cpu_pids[@]}")"
            break
        fi
        sleep "$REBUILD_POLL_S"
    done
    [[ -n "$t_end" ]] || die "${prefix}3 not healthy within ${REBUILD_TIMEOUT_S}s (last state '${state:-?}')"
    grep -q "rebuild done" "$WORK/${prefix}3.log" || die "${prefix}3 became healthy without a rebuild"
    grep -q "from_io_seq=0" "$WORK/${prefix}3.log" || say "warning: no from_io_seq=0 in ${prefix}3's log (not a full rebuild?)"

    REBUILD_S="$(awk -v a="$t_start" -v b="$t_end" 'BEGIN{printf "%.2f", b - a}')"
    REBUILD_WHOLE_S="$(awk -v a="$t_restart" -v b="$t_end" 'BEGIN{printf "%.2f", b - a}')"
    REBUILD_MIB_S="$(awk -v m="$((gib * 1024))" -v s="$REBUILD_S" 'BEGIN{ if (s > 0) printf "%.0f", m / s; else print "-" }')"
    REBUILD_CPU="$(cpu_percent $((c_end - c_start)) "$REBUILD_S")"
    REBUILD_TOTAL="${total:-none seen}"
}
