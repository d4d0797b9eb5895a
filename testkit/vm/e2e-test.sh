# The VM runner's built-in test (busybox ash), run by /init with TARGET_HOST,
# TARGET_PORT, TARGET_IQN and CSTOR_VM_FIO (1: fio is in the image):
# SendTargets discovery must list the IQN; login; mkfs.ext4; write a random
# payload (and, with fio, a file fio writes and verifies with crc32c);
# sync, umount, logout (the disk and the session must go); login again;
# e2fsck -fn must be clean; mount read-only; the checksums must match;
# logout. Prints E2E-RESULT: PASS, or FAIL with the step that failed.
set -u
PORTAL="$TARGET_HOST:$TARGET_PORT"
IQN=$TARGET_IQN
PAYLOAD_MB=8
FIO_MB=4
T0=$(cut -d' ' -f1 /proc/uptime)
T=$T0

fail() { echo "E2E-RESULT: FAIL $*"; exit 1; }
step() {
    now=$(cut -d' ' -f1 /proc/uptime)
    echo "E2E-STEP: $1 ($(awk -v a="$T" -v b="$now" 'BEGIN { printf "%.2f", b - a }') s)"
    T=$now
}
# quiet CMD...: runs CMD, shows its output only if it fails
quiet() {
    out=$("$@" 2>&1) && return 0
    rc=$?
    echo "$out" | sed 's/^/E2E:   | /'
    return $rc
}
disk_of_session() { # the first SCSI disk behind an iSCSI session
    for b in /sys/class/iscsi_session/session*/device/target*/*/block/*; do
        [ -e "$b" ] && { echo "${b##*/}"; return 0; }
    done
    return 1
}
login() {
    quiet iscsiadm -m node -T "$IQN" -p "$PORTAL" --login || fail "login to $IQN at $PORTAL"
    i=0
    until DISK=$(disk_of_session) && [ -b "/dev/$DISK" ]; do
        i=$((i + 1))
        [ $i -le 200 ] || fail "no disk after the login"
        sleep 0.05
    done
    echo "E2E: /dev/$DISK: $(( $(cat /sys/block/$DISK/size) / 2048 )) MiB"
}
logout() {
    quiet iscsiadm -m node -T "$IQN" -p "$PORTAL" --logout || fail "logout"
    i=0
    while [ -e "/sys/block/$DISK" ]; do
        i=$((i + 1))
        [ $i -le 200 ] || fail "/dev/$DISK still there after the logout"
        sleep 0.05
    done
    iscsiadm -m session >/dev/null 2>&1 && fail "a session is left after the logout"
    return 0
}

out=$(iscsiadm -m discovery -t sendtargets -p "$PORTAL" -o nonpersistent 2>&1) \
    || fail "SendTargets discovery at $PORTAL: $out"
echo "$out" | grep -q " $IQN\$" || fail "SendTargets does not list $IQN: $out"
# A target on the host's loopback reports 127.0.0.1 as its address, which
# the guest cannot reach: the node record names the portal as seen from here.
quiet iscsiadm -m node -o new -T "$IQN" -p "$PORTAL,1" || fail "node record for $IQN"
step "discovery"

login
step "login"
quiet mkfs.ext4 -q -F "/dev/$DISK" || fail "mkfs.ext4 /dev/$DISK"
mkdir -p /mnt/vol
quiet mount -t ext4 "/dev/$DISK" /mnt/vol || fail "mount /dev/$DISK"
step "mkfs.ext4 and mount"
dd if=/dev/urandom of=/tmp/payload bs=1M count=$PAYLOAD_MB 2>/dev/null || fail "random payload"
cp /tmp/payload /mnt/vol/payload || fail "write the payload"
echo "written by the cstor VM test for $IQN" >/mnt/vol/note
if [ "${CSTOR_VM_FIO:-0}" = 1 ]; then
    out=$(fio --name=verify --filename=/mnt/vol/fio.dat --size=${FIO_MB}M --bs=4k \
        --rw=randwrite --ioengine=libaio --iodepth=16 --direct=1 \
        --verify=crc32c --do_verify=1 --verify_fatal=1 2>&1) || {
        echo "$out" | sed 's/^/E2E:   | /'
        fail "fio randwrite with crc32c verify"
    }
    echo "E2E-FIO: $(echo "$out" | grep -E '^ *write: IOPS=' | head -n 1 | sed 's/^ *//')"
fi
( cd /mnt/vol && sha256sum payload note $( [ -f fio.dat ] && echo fio.dat ) ) >/tmp/sums \
    || fail "checksums"
sync
quiet umount /mnt/vol || fail "umount"
step "write, sync, umount"
logout
step "logout"

login
step "login again"
quiet e2fsck -fn "/dev/$DISK" || fail "e2fsck -fn /dev/$DISK reports problems"
step "e2fsck -fn (clean)"
quiet mount -t ext4 -o ro "/dev/$DISK" /mnt/vol || fail "read-only mount after the re-login"
( cd /mnt/vol && sha256sum -c -s /tmp/sums ) || {
    ( cd /mnt/vol && sha256sum -c /tmp/sums 2>&1 ) | sed 's/^/E2E:   | /'
    fail "the data differs after logout and login"
}
quiet umount /mnt/vol || fail "umount after the check"
step "checksums match"
logout
step "logout"
echo "E2E: built-in test done in $(awk -v a="$T0" -v b="$T" 'BEGIN { printf "%.1f", b - a }') s"
echo "E2E-RESULT: PASS"
