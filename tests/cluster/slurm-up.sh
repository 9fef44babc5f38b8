#!/usr/bin/env bash
# A one-node SLURM cluster on this machine for the cluster tests: munge, slurmctld, slurmd.
#   tests/cluster/slurm-up.sh [STATE_DIR]     (default /tmp/modelmake-slurm; needs root)
# The config goes to /etc/slurm/slurm.conf, the path every SLURM command reads by default:
# the plugin's job step (snakemake-executor-plugin-slurm-jobstep 0.6.1) drops SLURM_* variables,
# SLURM_CONF included, before its srun, so a config elsewhere is not found inside jobs. An
# existing slurm.conf that this script did not write is left alone (exit 3: the tests skip).
#
# No slurmdbd/MariaDB: snakemake-executor-plugin-slurm 2.8.0 asks sacct for job states by
# default, and sacct answers "accounting storage is disabled" without slurmdbd. Its
# `status_command: squeue` setting avoids that; the plugin keeps squeue only while MinJobAge
# >= 3 x init_seconds_before_status_checks, so finished jobs stay visible (MinJobAge=300 below).
# Without accounting, accounts are not checked either (the profile sets slurm-no-account).
set -euo pipefail
STATE=${1:-/tmp/modelmake-slurm}
PARTITION=${MODELMAKE_SLURM_PARTITION:-main}   # profiles/slurm's default-resources slurm_partition

if [ "$(id -u)" != 0 ]; then echo "slurm-up: needs root (daemons, apt-get)" >&2; exit 3; fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  command -v apt-get >/dev/null || { echo "slurm-up: slurm/munge missing and no apt-get" >&2; exit 3; }
  echo "slurm-up: installing slurm-wlm and munge (Debian)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2 || { echo "slurm-up: apt-get update failed" >&2; exit 3; }
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >&2 || { echo "slurm-up: apt-get install failed" >&2; exit 3; }
fi

CONF=/etc/slurm/slurm.conf
MARK="# modelmake test cluster (tests/cluster/slurm-up.sh)"
if [ -e "$CONF" ] && ! head -1 "$CONF" | grep -qxF "$MARK"; then
  echo "slurm-up: $CONF exists and is not the test cluster's; not touching a real cluster" >&2; exit 3
fi
mkdir -p "$STATE"/{state,spool,log,run} /etc/slurm
HOST=$(hostname -s)
CPUS=$(nproc)
# the machine's memory, less 5% for the daemons and the OS
MEM=$(awk '/MemTotal/ {print int($2/1024*0.95)}' /proc/meminfo)
cat > "$CONF.tmp" <<CONF
$MARK
ClusterName=modelmake-test
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
# containers and CI machines often lack a writable cgroup tree: track processes by /proc
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# keep finished jobs in squeue long enough for the executor's status checks (see above)
MinJobAge=300
# start jobs promptly: the scheduler's overhead per job is what the cluster bench measures
SchedulerParameters=sched_interval=1,bf_interval=1
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
MpiDefault=none
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
mv "$CONF.tmp" "$CONF"
# no GPU partition and no Gres on purpose: the tests check that a GPU request is refused clearly

# munge: the key comes with Debian's package; make one if it is missing
if [ ! -s /etc/munge/munge.key ]; then
  mkdir -p /etc/munge && dd if=/dev/urandom of=/etc/munge/munge.key bs=128 count=1 status=none
  chown munge:munge /etc/munge/munge.key 2>/dev/null || true; chmod 400 /etc/munge/munge.key
fi
mkdir -p /run/munge /var/log/munge /var/lib/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge /etc/munge 2>/dev/null || true
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if id munge >/dev/null 2>&1; then runuser -u munge -- munged; else munged --force; fi
fi
for i in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done

slurmctld
slurmd
# ready = the node is idle in the partition
for i in $(seq 120); do
  if sinfo -h -p "$PARTITION" -o '%t' 2>/dev/null | grep -qx idle; then
    echo "slurm-up: one node ($HOST, $CPUS CPUs, $MEM MB), partition $PARTITION; state in $STATE" >&2
    exit 0
  fi
  sleep 0.5
done
echo "slurm-up: node did not become idle; logs in $STATE/log" >&2
sinfo -N -l >&2 || true
tail -20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
exit 1
