# shellcheck shell=bash
# shellcheck disable=SC2034 # TGT_*, REPLICA_*, TARGET_*, RESULT_* are outputs
# Shared helpers of the iSCSI benchmark scripts (iscsi-vs-tgt.sh,
# replication.sh, tls.sh, rebuild.sh): sourced, never run.
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

bench_cleanup() {
    local rc=$? ctl i
    trap - EXIT INT TERM
    for ctl in "${BENCH_TGT_CTLS[@]}"; do
        tgtadm -C "$ctl" --op delete --mode system >/dev/null 2>&1 || true
    done
    # Targets before replicas: reverse start order.
    for ((i = ${#BENCH_PIDS[@]} - 1; i >= 0; i--)); do
        stop_pid "${BENCH_PIDS[i]}"
    done
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
