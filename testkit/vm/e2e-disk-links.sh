#!/bin/sh
# e2e-disk-links: the /dev/disk/by-path links udev would make for the
# iSCSI disks (the test VM has no udev), e.g.
#   /dev/disk/by-path/ip-10.0.2.2:3260-iscsi-iqn.2016-09.com.example:vol-lun-0 -> ../../sda
# Removes links whose disk went; prints the links, one a line. Idempotent:
# run it after each login (or in a loop).
by_path=/dev/disk/by-path
mkdir -p "$by_path"
for link in "$by_path"/ip-*; do
    [ -L "$link" ] && [ ! -e "$link" ] && rm -f "$link"
done
for session in /sys/class/iscsi_session/session*; do
    [ -d "$session" ] || continue
    n=${session##*session}
    iqn=$(cat "$session/targetname" 2>/dev/null) || continue
    conn=/sys/class/iscsi_connection/connection$n:0
    addr=$(cat "$conn/persistent_address" 2>/dev/null) || continue
    port=$(cat "$conn/persistent_port" 2>/dev/null) || continue
    for block in "$session"/device/target*/*/block/*; do
        [ -e "$block" ] || continue
        hctl=${block%/block/*}
        hctl=${hctl##*/}
        link="$by_path/ip-$addr:$port-iscsi-$iqn-lun-${hctl##*:}"
        ln -sfn "../../${block##*/}" "$link"
        echo "$link -> /dev/${block##*/}"
    done
done
