#!/bin/sh
# PID 1 of a test host. Started by the harness as
#   ip netns exec NETNS unshare --mount --uts --ipc --pid --fork host-init.sh NAME MOUNT FILES
# it gives the host its own root (an overlay over this machine's /, writes
# kept in a tmpfs at MOUNT), copies the files the harness prepared (FILES:
# sshd config, host key, authorized keys, hostname) over it, and runs sshd.
# As PID 1 it also reaps orphans (a daemon started with nohup ends up here).
set -eu
name=$1 mnt=$2 files=$3
hostname "$name"
mount --make-rprivate /
mkdir -p "$mnt"
mount -t tmpfs -o mode=0755 "host-$name" "$mnt"
mkdir -p "$mnt/upper" "$mnt/work" "$mnt/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$mnt/upper,workdir=$mnt/work" "$mnt/root"
r=$mnt/root
cp -a "$files/." "$r/"
mount -t proc proc "$r/proc"
mount --rbind /sys "$r/sys"
mount --rbind /dev "$r/dev"
mount -t tmpfs tmpfs "$r/run"
mount -t tmpfs tmpfs "$r/tmp"
mkdir -p "$r/run/sshd" "$r/old"
cd "$r"
pivot_root . old
umount -l /old
rmdir /old 2>/dev/null || true
/usr/sbin/sshd -D -e -f /etc/ssh/sshd_config &
# Reap every child until sshd ends (then the host ends).
sshd=$!
while kill -0 "$sshd" 2>/dev/null; do wait || true; done
