# Guest half of tests/vm/vm_up.rs (busybox ash, the guest script of the VM
# runner, cstor_testkit::vm): the Linux kernel initiator on a `cstor up` volume
# keeps writing fsync'd files while the host kills one replica daemon (asked
# with `e2e-signal kill-replica`, which returns once the host did it),
# `cstor up` restarts it and the target rebuilds it; then the filesystem must
# be clean and every file intact.
#
# Environment: TARGET_HOST, TARGET_PORT, TARGET_IQN (the runner); READY_PORT:
# the host answers HTTP on 10.0.2.2:READY_PORT only once the target reports
# three healthy replicas again (there is no other way back to the guest);
# MIN_FILES, MAX_FILES: bounds on the number of 2 MiB files written.
# Each file's sha256 is taken from its source in RAM, not read back.
set -u
fail() { echo "E2E-RESULT: FAIL $*"; exit 1; }
P="$TARGET_HOST:$TARGET_PORT"
DEV="/dev/disk/by-path/ip-$P-iscsi-$TARGET_IQN-lun-0"
MNT=/mnt/vol
SUMS=/tmp/sums

login() {
    iscsiadm -m node -T "$TARGET_IQN" -p "$P" --login >/dev/null || fail "login"
    i=0
    while [ ! -b "$DEV" ] && [ $i -lt 100 ]; do e2e-disk-links >/dev/null; sleep 0.1; i=$((i+1)); done
    [ -b "$DEV" ] || fail "no $DEV after login ($(e2e-disk-links))"
}
logout() {
    iscsiadm -m node -T "$TARGET_IQN" -p "$P" --logout >/dev/null || fail "logout"
}
host_ready() {
    timeout 5 wget -q -O - "http://$TARGET_HOST:$READY_PORT/" 2>/dev/null | grep -q healthy
}

iscsiadm -m discovery -t sendtargets -p "$P" -o nonpersistent | grep -q " $TARGET_IQN\$" \
    || fail "SendTargets does not list $TARGET_IQN"
iscsiadm -m node -o new -T "$TARGET_IQN" -p "$P,1" >/dev/null || fail "node record"
login
# The default SCSI command timeout (30 s) is above the target's hold below
# quorum (20 s): a command is never failed by the initiator first.
mkfs.ext4 -q -F "$DEV" || fail "mkfs.ext4"
mkdir -p "$MNT"
mount -t ext4 "$DEV" "$MNT" || fail "mount"
: >"$SUMS"

e2e-signal kill-replica || fail "the host did not acknowledge kill-replica"
n=0
while :; do
    n=$((n + 1))
    dd if=/dev/urandom of=/tmp/chunk bs=1M count=2 2>/dev/null || fail "urandom"
    echo "$(sha256sum </tmp/chunk | cut -d' ' -f1)  f$n" >>"$SUMS"
    dd if=/tmp/chunk of="$MNT/f$n" bs=1M conv=fsync 2>/dev/null || fail "write of f$n"
    if [ "$n" -ge "$MIN_FILES" ] && host_ready; then break; fi
    [ "$n" -lt "$MAX_FILES" ] || fail "no word from the host after $n files"
done
echo "E2E: wrote $n fsync'd files of 2 MiB through the replica's loss and rebuild"
# And a few more with all three replicas back.
for k in 1 2 3; do
    n=$((n + 1))
    dd if=/dev/urandom of=/tmp/chunk bs=1M count=2 2>/dev/null || fail "urandom"
    echo "$(sha256sum </tmp/chunk | cut -d' ' -f1)  f$n" >>"$SUMS"
    dd if=/tmp/chunk of="$MNT/f$n" bs=1M conv=fsync 2>/dev/null || fail "write of f$n"
done
umount "$MNT" || fail "umount"
logout

login
e2fsck -fn "$DEV" >/tmp/fsck.log 2>&1 || { cat /tmp/fsck.log; fail "e2fsck -fn reports damage"; }
mount -t ext4 -o ro "$DEV" "$MNT" || fail "mount after re-login"
while read -r sum name; do
    [ "$(sha256sum <"$MNT/$name" | cut -d' ' -f1)" = "$sum" ] || fail "$name differs after re-login"
done <"$SUMS"
umount "$MNT"
logout
echo "E2E: e2fsck clean; $n files verified after logout/login"
echo "E2E-RESULT: PASS"
