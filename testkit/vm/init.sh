#!/bin/sh
# PID 1 of cstor's test VM (busybox ash), written by cstor-testkit's VM
# runner (testkit/src/vm.rs) into the initramfs.
#
# 1. mounts proc, sys, dev, run; loads the kernel modules listed in
#    /etc/cstor-vm/modules (xfs, which is large, in the background and only
#    for a guest script);
# 2. network: 10.0.2.15/32 on eth0 and one route, to 10.0.2.2, the host's
#    loopback behind QEMU's user-mode network; nothing else is reachable;
# 3. starts iscsid;
# 4. runs the test: the caller's script (/etc/cstor-vm/test.sh) or the
#    built-in one (/usr/lib/cstor-vm/e2e-test.sh), with TARGET_HOST,
#    TARGET_PORT, TARGET_IQN and the caller's variables;
# 5. powers off. A test that exits non-zero gets a FAIL line and the
#    diagnostics (dmesg, iscsid's log, the iSCSI sessions).
#
# Lines for the host: E2E-INIT (init runs: the boot watchdog's marker),
# E2E: progress, E2E-STEP: timings, E2E-SIGNAL/E2E-ACK (see e2e-signal),
# E2E-RESULT: PASS | FAIL reason (the verdict; no verdict is a FAIL).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin
export LD_LIBRARY_PATH=/usr/local/lib
export HOME=/root
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/lock/iscsi
echo "E2E-INIT: /init at $(cut -d' ' -f1 /proc/uptime) s of guest uptime, kernel $(uname -r)"
# The host acknowledges signals on the console's input (e2e-signal reads
# them): no echo of those lines back onto the console.
stty -echo </dev/console 2>/dev/null
hostname cstor-vm

uptime_s() { cut -d' ' -f1 /proc/uptime; }
T_LAST=$(uptime_s)
step() { # step WHAT: the time WHAT took since the previous step
    now=$(uptime_s)
    echo "E2E-STEP: $1 ($(awk -v a="$T_LAST" -v b="$now" 'BEGIN { printf "%.2f", b - a }') s)"
    T_LAST=$now
}
power_off() {
    sync
    poweroff -f
    echo o >/proc/sysrq-trigger
    sleep 30
}
diagnostics() {
    echo "E2E: ---- dmesg (last 40 lines) ----"
    dmesg | tail -n 40 | sed 's/^/E2E-DIAG: /'
    echo "E2E: ---- iscsid log (last 30 lines) ----"
    tail -n 30 /run/iscsid.log 2>/dev/null | sed 's/^/E2E-DIAG: /'
    echo "E2E: ---- iscsiadm -m session -P 3 ----"
    iscsiadm -m session -P 3 2>&1 | sed 's/^/E2E-DIAG: /'
}
give_up() {
    echo "E2E-RESULT: FAIL $*"
    diagnostics
    power_off
}

[ -r /etc/cstor-vm/run.conf ] || give_up "no /etc/cstor-vm/run.conf in the initramfs"
. /etc/cstor-vm/run.conf

# ---- 1. modules
XFS_KO=
XFS_PID=
while read -r ko; do
    case "$ko" in
        */xfs.ko) XFS_KO=$ko; continue ;;
    esac
    err=$(insmod "$ko" 2>&1) || echo "E2E: insmod ${ko##*/}: $err"
done </etc/cstor-vm/modules
# The built-in test has no use for xfs: it is loaded for guest scripts only.
if [ -n "$XFS_KO" ] && [ -f /etc/cstor-vm/test.sh ]; then
    insmod "$XFS_KO" &
    XFS_PID=$!
fi
for m in virtio_net iscsi_tcp sd_mod ext4; do
    [ -d "/sys/module/$m" ] || give_up "kernel module $m did not load"
done
step "modules loaded"

# ---- 2. network
i=0
while [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1))
    [ $i -le 200 ] || give_up "no eth0"
    sleep 0.05
done
ip link set lo up
ip link set eth0 up
ip addr add 10.0.2.15/32 dev eth0
ip route add 10.0.2.2/32 dev eth0
step "network up (10.0.2.15, a route to 10.0.2.2 only)"

# ---- 3. iscsid
iscsid -f >/run/iscsid.log 2>&1 &
i=0
until grep -q ISCSIADM_ABSTRACT_NAMESPACE /proc/net/unix; do
    i=$((i + 1))
    [ $i -le 200 ] || give_up "iscsid did not start: $(cat /run/iscsid.log)"
    sleep 0.05
done
step "iscsid running"

# ---- 4. the test
export TARGET_HOST=10.0.2.2 TARGET_PORT TARGET_IQN CSTOR_VM_FIO
[ -r /etc/cstor-vm/guest-env ] && . /etc/cstor-vm/guest-env
TEST=/usr/lib/cstor-vm/e2e-test.sh
NAME="built-in test"
if [ -f /etc/cstor-vm/test.sh ]; then
    TEST=/etc/cstor-vm/test.sh
    NAME=$(cat /etc/cstor-vm/test.name 2>/dev/null)
fi
# Guest scripts may use xfs at once.
if [ -n "$XFS_PID" ]; then
    wait "$XFS_PID"
    [ -d /sys/module/xfs ] || echo "E2E: the xfs module did not load"
    step "xfs module loaded"
fi
echo "E2E: running $NAME against $TARGET_IQN at $TARGET_HOST:$TARGET_PORT"
(cd / && exec sh "$TEST") </dev/null
rc=$?
step "$NAME (exit $rc)"
if [ $rc -ne 0 ]; then
    echo "E2E-RESULT: FAIL $NAME exited $rc"
    diagnostics
fi
power_off
