# Guest script (busybox ash, run by the VM runner, cstor_testkit::vm) of
# tests/vm/csi_node_vm.rs: the CSI Node service of
# `cstor csi --mode node` driven over its socket by `node_client`, against two
# cstor targets on the host: an ext4 volume behind CHAP (TARGET_PORT,
# TARGET_IQN) and an xfs volume (XFS_PORT, XFS_IQN). Per volume: stage (twice:
# idempotent), publish rw and ro, write, stats, grow at the target (the
# host's callback on `e2e-signal grow-FS`) and NodeExpandVolume, unpublish,
# unstage (session and node record gone), stage again and find the data;
# then the ext4 volume once more as a raw block volume.
# Then the remount check: a third volume (RO_PORT, RO_IQN, MGMT_RO) on two
# replicas with CF 2; the host SIGSTOPs one replica ("stop-replica"), ext4
# turns read-only, the host resumes it ("cont-replica"), and once the target
# has quorum again the node service remounts the filesystem read-write, or,
# when the kernel refuses (aborted journal), reports it abnormal and a
# fresh unstage/stage (with e2fsck -p) brings it back read-write.
# Env from the host: NODE_ID, MGMT_EXT4, MGMT_XFS, GROW_EXT4, GROW_XFS (bytes),
# CHAP_USER, CHAP_SECRET, RO_PORT, RO_IQN, MGMT_RO; TLS_CA, TLS_CRT, TLS_KEY
# (the node plugin's TLS directory, PEM).
set -u
fail() { echo "E2E-RESULT: FAIL $*"; echo "E2E: csi log:"; tail -n 30 /tmp/csi.log; exit 1; }
SOCK=unix:///run/csi.sock
nc() { node_client --endpoint "$SOCK" "$@"; }
ok() { out=$(nc "$@") || fail "$1 ${3:-}: $out"; }
err() { # err CODE ARGS...: the RPC must fail with CODE
    want=$1; shift
    out=$(nc "$@"); rc=$?
    [ $rc -eq 2 ] && case "$out" in "error $want:"*) true ;; *) false ;; esac \
        || fail "$1 wanted $want, got rc=$rc: $out"
}
word() { echo "$out" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
size_k() { df -kP "$1" | awk 'NR==2{print $2}'; }

# There is no udev in the guest: keep making the /dev/disk/by-path links.
( while :; do e2e-disk-links >/dev/null 2>&1; sleep 0.2; done ) &
mkdir -p /run

t0=$(date +%s)
# The node plugin's identity (a reader: its remount check reads the
# targets' status over mutual TLS), handed over by the host as PEM text.
mkdir -p /run/tls && chmod 700 /run/tls
printf '%s\n' "$TLS_CA" >/run/tls/ca.crt
printf '%s\n' "$TLS_CRT" >/run/tls/tls.crt
( umask 077; printf '%s\n' "$TLS_KEY" >/run/tls/tls.key )
cstor csi --mode node --endpoint "$SOCK" --node-id "$NODE_ID" --tls-dir /run/tls >/tmp/csi.log 2>&1 &
CSI=$!
i=0
until nc wait --seconds 1 >/dev/null 2>&1; do
    kill -0 $CSI 2>/dev/null || fail "cstor csi --mode node exited"
    i=$((i+1)); [ $i -lt 30 ] || fail "no CSI node service on $SOCK"
done
echo "E2E: cstor csi --mode node serving on $SOCK"
ok info
[ "$(word node_id)" = "$NODE_ID" ] || fail "NodeGetInfo: $out"
echo "E2E: $out"

# Argument and unknown-volume errors (CSI spec error tables).
err INVALID_ARGUMENT stage --volume-id "" --staging-path /s --fs ext4 --context "portal=$TARGET_HOST:$TARGET_PORT,iqn=$TARGET_IQN"
err INVALID_ARGUMENT stage --volume-id v --staging-path /s --fs ext4 --context "iqn=$TARGET_IQN"
err NOT_FOUND stats --volume-id nosuch --volume-path /mnt
ok unpublish --volume-id nosuch --target-path /mnt/nosuch   # nothing published there: OK, nothing touched
err NOT_FOUND expand --volume-id nosuch --volume-path /mnt

lifecycle() { # VOL FS PORT IQN MGMT GROW_BYTES [--secret k=v]...
    VOL=$1 FS=$2 PORT=$3 IQN=$4 MGMT=$5 GROW=$6; shift 6
    S=/var/lib/kubelet/plugins/kubernetes.io/csi/cstor/$VOL/globalmount
    T=/var/lib/kubelet/pods/pod-a/volumes/$VOL/mount
    R=/var/lib/kubelet/pods/pod-b/volumes/$VOL/mount
    CTX="portal=$TARGET_HOST:$PORT,iqn=$IQN,lun=0,targetMgmt=$TARGET_HOST:$MGMT"
    mkdir -p "$S"
    s=$(date +%s)
    ok stage --volume-id "$VOL" --staging-path "$S" --fs "$FS" --context "$CTX" "$@"
    echo "E2E-STEP: stage $FS ($(( $(date +%s) - s )) s)"
    ok stage --volume-id "$VOL" --staging-path "$S" --fs "$FS" --context "$CTX" "$@"
    [ "$(findmnt -n -o FSTYPE "$S")" = "$FS" ] || fail "$S is not $FS: $(findmnt "$S")"
    other=xfs; [ "$FS" = xfs ] && other=ext4
    err ALREADY_EXISTS stage --volume-id "$VOL" --staging-path "$S" --fs $other --context "$CTX" "$@"
    iscsiadm -m session | grep -q "$IQN" || fail "no session to $IQN"

    ok publish --volume-id "$VOL" --staging-path "$S" --target-path "$T" --fs "$FS"
    ok publish --volume-id "$VOL" --staging-path "$S" --target-path "$T" --fs "$FS"
    ok publish --volume-id "$VOL" --staging-path "$S" --target-path "$R" --fs "$FS" --ro
    err ALREADY_EXISTS publish --volume-id "$VOL" --staging-path "$S" --target-path "$R" --fs "$FS"
    err FAILED_PRECONDITION unstage --volume-id "$VOL" --staging-path "$S"
    dd if=/dev/urandom of="$T/data" bs=1M count=8 conv=fsync 2>/dev/null || fail "write to $T"
    SUM=$(sha256sum "$T/data" | cut -d' ' -f1)
    [ "$(sha256sum "$R/data" | cut -d' ' -f1)" = "$SUM" ] || fail "ro publish shows other data"
    touch "$R/x" 2>/dev/null && fail "the read-only publish $R is writable"

    ok stats --volume-id "$VOL" --volume-path "$T"
    echo "E2E: stats $FS: $out"
    [ "$(word bytes_total)" -gt 0 ] && [ "$(word bytes_used)" -gt 0 ] \
        && [ "$(word inodes_total)" -gt 0 ] && [ "$(word abnormal)" = false ] || fail "stats: $out"

    before=$(size_k "$T")
    e2e-signal "grow-$FS" || fail "the host did not acknowledge grow-$FS"
    s=$(date +%s); i=0
    until out=$(nc expand --volume-id "$VOL" --volume-path "$T" --required-bytes "$GROW"); do
        i=$((i+1)); [ $i -lt 4 ] || fail "expand: $out"
    done
    [ "$(word capacity_bytes)" -ge "$GROW" ] || fail "expand: $out"
    after=$(size_k "$T")
    [ "$after" -gt "$before" ] || fail "$FS did not grow ($before KiB -> $after KiB)"
    echo "E2E-STEP: expand $FS $before KiB -> $after KiB ($(( $(date +%s) - s )) s)"
    ok expand --volume-id "$VOL" --volume-path "$T" --required-bytes "$GROW"

    ok unpublish --volume-id "$VOL" --target-path "$R"
    ok unpublish --volume-id "$VOL" --target-path "$T"
    ok unpublish --volume-id "$VOL" --target-path "$T"
    [ -e "$T" ] && fail "unpublish left $T"
    ok unstage --volume-id "$VOL" --staging-path "$S"
    ok unstage --volume-id "$VOL" --staging-path "$S"
    findmnt "$S" >/dev/null && fail "unstage left $S mounted"
    iscsiadm -m session 2>/dev/null | grep -q "$IQN" && fail "unstage left the session to $IQN"
    iscsiadm -m node -T "$IQN" -p "$TARGET_HOST:$PORT" -I cstor-csi -o show >/dev/null 2>&1 \
        && fail "unstage left the node record of $IQN"

    s=$(date +%s)
    ok stage --volume-id "$VOL" --staging-path "$S" --fs "$FS" --context "$CTX" "$@"
    ok publish --volume-id "$VOL" --staging-path "$S" --target-path "$T" --fs "$FS"
    [ "$(sha256sum "$T/data" | cut -d' ' -f1)" = "$SUM" ] || fail "$FS data differs after unstage/stage"
    [ "$(size_k "$T")" = "$after" ] || fail "$FS size changed across unstage/stage"
    ok unpublish --volume-id "$VOL" --target-path "$T"
    ok unstage --volume-id "$VOL" --staging-path "$S"
    echo "E2E-STEP: $FS restage and verify ($(( $(date +%s) - s )) s)"
}

# CHAP: a wrong secret is refused at login, the right one admitted.
S=/var/lib/kubelet/plugins/kubernetes.io/csi/cstor/ext4vol/globalmount
mkdir -p "$S"
out=$(nc stage --volume-id ext4vol --staging-path "$S" --fs ext4 \
    --context "portal=$TARGET_HOST:$TARGET_PORT,iqn=$TARGET_IQN,lun=0,targetMgmt=$TARGET_HOST:$MGMT_EXT4" \
    --secret "node.session.auth.username=$CHAP_USER" --secret "node.session.auth.password=wrongwrongwrong")
case "$out" in "error PERMISSION_DENIED:"*) ;; *) fail "stage with a wrong CHAP secret: $out" ;; esac
echo "E2E: wrong CHAP secret refused: $out"

lifecycle ext4vol ext4 "$TARGET_PORT" "$TARGET_IQN" "$MGMT_EXT4" "$GROW_EXT4" \
    --secret "node.session.auth.username=$CHAP_USER" --secret "node.session.auth.password=$CHAP_SECRET"
block_check() { # the ext4 volume again, now as a raw block volume (its ext4 is overwritten)
    VOL=ext4vol
    S=/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/staging/$VOL
    T=/var/lib/kubelet/plugins/kubernetes.io/csi/volumeDevices/publish/$VOL/pod-d
    CTX="portal=$TARGET_HOST:$TARGET_PORT,iqn=$TARGET_IQN,lun=0"
    mkdir -p "$S" "${T%/*}"
    s=$(date +%s)
    ok stage --volume-id $VOL --staging-path "$S" --block --context "$CTX" "$@"
    ok stage --volume-id $VOL --staging-path "$S" --block --context "$CTX" "$@"
    ok publish --volume-id $VOL --staging-path "$S" --target-path "$T" --block
    ok publish --volume-id $VOL --staging-path "$S" --target-path "$T" --block
    err ALREADY_EXISTS publish --volume-id $VOL --staging-path "$S" --target-path "$T" --fs ext4
    [ -b "$T" ] || fail "block publish: $T is not a block device"
    dd if=/dev/urandom of=/tmp/blk bs=1M count=4 2>/dev/null
    dd if=/tmp/blk of="$T" bs=1M conv=fsync 2>/dev/null || fail "write to the block volume"
    SUM=$(sha256sum </tmp/blk | cut -d' ' -f1)
    ok stats --volume-id $VOL --volume-path "$T"
    [ "$(word bytes_total)" = "$GROW_EXT4" ] || fail "block stats: $out"
    ok unpublish --volume-id $VOL --target-path "$T"
    [ -e "$T" ] && fail "unpublish left $T"
    ok unstage --volume-id $VOL --staging-path "$S"
    ok stage --volume-id $VOL --staging-path "$S" --block --context "$CTX" "$@"
    ok publish --volume-id $VOL --staging-path "$S" --target-path "$T" --block
    [ "$(head -c 4194304 "$T" | sha256sum | cut -d' ' -f1)" = "$SUM" ] || fail "block data differs after unstage/stage"
    ok unpublish --volume-id $VOL --target-path "$T"
    ok unstage --volume-id $VOL --staging-path "$S"
    echo "E2E-STEP: block volume: stage, publish, write, restage, verify ($(( $(date +%s) - s )) s)"
}
block_check --secret "node.session.auth.username=$CHAP_USER" --secret "node.session.auth.password=$CHAP_SECRET"

if command -v mkfs.xfs >/dev/null; then
    lifecycle xfsvol xfs "$XFS_PORT" "$XFS_IQN" "$MGMT_XFS" "$GROW_XFS"
else
    echo "E2E: skipped: xfs (no mkfs.xfs in the guest image)"
fi
remount_check() {
    VOL=rovol FS=ext4
    S=/var/lib/kubelet/plugins/kubernetes.io/csi/cstor/$VOL/globalmount
    T=/var/lib/kubelet/pods/pod-c/volumes/$VOL/mount
    CTX="portal=$TARGET_HOST:$RO_PORT,iqn=$RO_IQN,lun=0,targetMgmt=$TARGET_HOST:$MGMT_RO"
    mkdir -p "$S"
    s=$(date +%s)
    ok stage --volume-id $VOL --staging-path "$S" --fs ext4 --context "$CTX"
    ok publish --volume-id $VOL --staging-path "$S" --target-path "$T" --fs ext4
    echo "written before the outage" >"$T/before" && sync || fail "write before the outage"
    e2e-signal stop-replica || fail "the host did not acknowledge stop-replica"
    # Metadata changes make jbd2 commit; a failed commit turns ext4 read-only.
    i=0
    while touch "$T/f$i" 2>/dev/null; do
        sync; i=$((i+1)); [ $i -lt 120 ] || fail "ext4 never turned read-only below quorum"
        sleep 0.5
    done
    echo "E2E-STEP: ext4 read-only below quorum after $i commits ($(( $(date +%s) - s )) s)"
    dmesg | grep -i 'EXT4-fs' | tail -n 3 | sed 's/^/E2E: dmesg: /'
    dev=$(findmnt -n -o SOURCE "$S"); dev=${dev##*/}
    echo "E2E: mountinfo: $(grep " $S " /proc/self/mountinfo); errors_count=$(cat /sys/fs/ext4/$dev/errors_count 2>&1)"
    ok stats --volume-id $VOL --volume-path "$T"
    [ "$(word abnormal)" = true ] || fail "a read-only filesystem is not abnormal: $out"
    e2e-signal cont-replica || fail "the host did not acknowledge cont-replica"
    s=$(date +%s); i=0; outcome=""
    while [ -z "$outcome" ]; do
        if touch "$T/after" 2>/dev/null; then
            outcome=remounted
        else
            ok stats --volume-id $VOL --volume-path "$T"
            case "$out" in *refused*) outcome=refused ;; esac
        fi
        i=$((i+1)); [ $i -lt 150 ] || fail "neither remounted nor reported refused: $out; $(cstor ctl --target "$TARGET_HOST:$MGMT_RO" status 2>&1)"
        [ -n "$outcome" ] || sleep 1
    done
    echo "E2E-STEP: quorum back: $outcome ($(( $(date +%s) - s )) s)"
    if [ $outcome = refused ]; then
        echo "E2E: $(echo "$out" | sed 's/.*message=//')"
        ok unpublish --volume-id $VOL --target-path "$T"
        ok unstage --volume-id $VOL --staging-path "$S"
        ok stage --volume-id $VOL --staging-path "$S" --fs ext4 --context "$CTX"
        ok publish --volume-id $VOL --staging-path "$S" --target-path "$T" --fs ext4
        touch "$T/after" || fail "still read-only after unstage, fsck and stage"
    fi
    [ "$(cat "$T/before")" = "written before the outage" ] || fail "data lost across the outage"
    ok stats --volume-id $VOL --volume-path "$T"
    [ "$(word abnormal)" = false ] || fail "still abnormal once writable: $out"
    ok unpublish --volume-id $VOL --target-path "$T"
    ok unstage --volume-id $VOL --staging-path "$S"
}
remount_check

echo "E2E: whole scenario $(( $(date +%s) - t0 )) s"
echo "E2E-RESULT: PASS"
