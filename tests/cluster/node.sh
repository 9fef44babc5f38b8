#!/usr/bin/env bash
# One test node's "machine": run by slurm-up.sh / node-start under
#   unshare --mount --uts --pid --fork --mount-proc --propagation private bash node.sh NAME STATE
# so it is PID 1 of its own PID namespace: when it dies (kill -9 from outside: a node loss), the
# kernel kills every process of the node (slurmd, slurmstepd, the job's whole tree) and its mounts go.
# What differs between real hosts is made private here: the hostname, /tmp, /dev/shm, the boot id and
# /etc/slurm (srun inside a job reads /etc/slurm/slurm.conf: the plugin's job step drops SLURM_CONF).
set -euo pipefail
NAME=$1 STATE=$2
NODE="$STATE/nodes/$NAME"
hostname "$NAME"
rm -rf "$NODE/tmp"   # a booted machine starts with an empty /tmp
mkdir -p "$NODE/tmp" && chmod 1777 "$NODE/tmp"
mount --bind "$NODE/tmp" /tmp
mount -t tmpfs -o mode=1777,size=256m tmpfs /dev/shm   # and its own shared memory
cat /proc/sys/kernel/random/uuid > "$NODE/boot_id"   # a new boot id per start: a reboot
mount --bind "$NODE/boot_id" /proc/sys/kernel/random/boot_id
mkdir -p /etc/slurm
mount --bind "$STATE/etc" /etc/slurm
echo $$ > "$NODE/init.pid.ns"
# the node's own mounts (bindfs for the lock tests) are made from inside it (nsenter) and die with it
slurmd -D -N "$NAME" -f "$STATE/etc/slurm.conf" &
wait
