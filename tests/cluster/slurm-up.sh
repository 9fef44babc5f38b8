#!/usr/bin/env bash
# A two-node SLURM cluster on this machine for the cluster tests: its own munged, slurmctld, and
# two slurmd (n1, n2, one CPU each), each node in its own mount, UTS and PID namespaces with its
# own hostname, /tmp and boot id (tests/cluster/node.sh). Debian's SLURM 22.05 is built with
# MULTIPLE_SLURMD: both slurmd run on this host, on ports of their own.
#   tests/cluster/slurm-up.sh STATE_DIR     (needs root; STATE_DIR outside /tmp, which nodes replace)
# Nothing outside STATE_DIR is written: the config is STATE_DIR/etc/slurm.conf (the commands read it
# through SLURM_CONF, set in STATE_DIR/env; the nodes see it at /etc/slurm/slurm.conf, bind-mounted
# in their own namespaces), munged has its own key and socket there, and the ports are free ones,
# so another SLURM on this machine (a one-node test cluster, a real one) is neither read nor touched.
# slurm-down.sh STATE_DIR stops everything and removes STATE_DIR.
#
# No slurmdbd/MariaDB: snakemake-executor-plugin-slurm 2.8.0 asks sacct for job states by
# default, and sacct answers "accounting storage is disabled" without slurmdbd. Its
# `status_command: squeue` setting avoids that; the plugin keeps squeue only while MinJobAge
# >= 3 x init_seconds_before_status_checks, so finished jobs stay visible (MinJobAge below).
# JobRequeue=0: a job whose node dies fails (NODE_FAIL) instead of running again elsewhere; a
# plain rerun of the build carries on (what the node-loss test checks).
set -euo pipefail
STATE=${1:?usage: slurm-up.sh STATE_DIR}
PARTITION=${MODELMAKE_SLURM_PARTITION:-main}   # profiles/slurm's default-resources slurm_partition
HERE=$(cd "$(dirname "$0")" && pwd)

if [ "$(id -u)" != 0 ]; then echo "slurm-up: needs root (daemons, namespaces, apt-get)" >&2; exit 3; fi
need() { for c in slurmctld slurmd munged unshare nsenter bindfs faketime; do command -v $c >/dev/null || return 1; done; }
if ! need; then
  command -v apt-get >/dev/null || { echo "slurm-up: slurm/munge/bindfs/faketime missing and no apt-get" >&2; exit 3; }
  echo "slurm-up: installing slurm-wlm, munge, bindfs, faketime (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || { echo "slurm-up: apt-get update failed" >&2; exit 3; }
  apt-get install -y -qq --no-install-recommends slurm-wlm munge bindfs faketime util-linux >&2 \
    || { echo "slurm-up: apt-get install failed" >&2; exit 3; }
fi
if ! unshare --mount --uts --pid --fork --mount-proc true 2>/dev/null; then
  echo "slurm-up: cannot make mount/UTS/PID namespaces here (unshare)" >&2; exit 3
fi
STATE=$(mkdir -p "$STATE" && cd "$STATE" && pwd -P)
case "$STATE/" in /tmp/*) echo "slurm-up: $STATE is under /tmp, which every node replaces with its own" >&2; exit 1;; esac
mkdir -p "$STATE"/{state,spool,log,run,etc,munge,nodes/n1,nodes/n2,shared}
chmod 700 "$STATE/munge"

# free TCP ports on loopback for slurmctld and the two slurmd
read -r P0 P1 P2 < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))
PY
)
HOST=$(hostname -s)
# each node's memory: half the machine's, less 5% for the daemons and the OS
MEM=$(awk '/MemTotal/ {print int($2/1024*0.95/2)}' /proc/meminfo)
CONF="$STATE/etc/slurm.conf"
cat > "$CONF" <<CONF
# modelmake test cluster (tests/cluster/slurm-up.sh), two nodes
ClusterName=modelmake-test
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=$P0
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket.2
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
# containers and CI machines often lack a writable cgroup tree: track processes by /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# keep finished jobs in squeue/scontrol long enough for the executor's status checks (see above)
# and for the tests and the bench to read where each job of a sweep ran (scontrol show job)
MinJobAge=3600
# start jobs promptly: the scheduler's overhead per job is what the cluster bench measures
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
JobRequeue=0
SlurmctldTimeout=30
# a node that stops answering is DOWN (its jobs NODE_FAIL) after this many seconds
SlurmdTimeout=10
# both nodes share this machine's cores and memory: take the configured sizes as they are
SlurmdParameters=config_overrides
MpiDefault=none
NodeName=n1 NodeHostname=n1 NodeAddr=127.0.0.1 Port=$P1 CPUs=1 RealMemory=$MEM State=UNKNOWN
NodeName=n2 NodeHostname=n2 NodeAddr=127.0.0.1 Port=$P2 CPUs=1 RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF
# no GPU partition and no Gres on purpose: the tests check that a GPU request is refused clearly
echo "SLURM_CONF=$CONF" > "$STATE/env"

# munge: a key of this cluster's own and a socket in STATE (another munged may be running)
dd if=/dev/urandom of="$STATE/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$STATE/munge/munge.key"
munged --force --socket="$STATE/munge/munge.socket.2" --key-file="$STATE/munge/munge.key" \
  --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" --seed-file="$STATE/munge/munged.seed"
for i in $(seq 50); do munge -S "$STATE/munge/munge.socket.2" -n 2>/dev/null | unmunge -S "$STATE/munge/munge.socket.2" >/dev/null 2>&1 && break; sleep 0.1; done

export SLURM_CONF=$CONF
slurmctld -f "$CONF"
for n in n1 n2; do bash "$HERE/node-start.sh" "$n" "$STATE"; done
# ready = both nodes idle in the partition
for i in $(seq 120); do
  if [ "$(sinfo -h -p "$PARTITION" -N -o '%N %t' 2>/dev/null | grep -c ' idle$')" = 2 ]; then
    echo "slurm-up: two nodes (n1, n2: 1 CPU, $MEM MB each), partition $PARTITION, slurmctld on port $P0; state in $STATE" >&2
    exit 0
  fi
  sleep 0.5
done
echo "slurm-up: nodes did not become idle; logs in $STATE/log" >&2
sinfo -N -l >&2 || true
tail -20 "$STATE/log/slurmctld.log" "$STATE"/log/slurmd-*.log >&2 || true
exit 1
