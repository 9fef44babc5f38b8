#!/usr/bin/env bash
# Stops what slurm-up.sh started: slurmd, slurmctld (by their pid files) and munged; removes the
# state and the test cluster's /etc/slurm/slurm.conf (only if slurm-up.sh wrote it).
#   tests/cluster/slurm-down.sh [STATE_DIR]
set -uo pipefail
STATE=${1:-/tmp/modelmake-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# modelmake test cluster (tests/cluster/slurm-up.sh)"
OURS=0; [ -f "$CONF" ] && head -1 "$CONF" | grep -qxF "$MARK" && OURS=1
[ "$OURS" = 1 ] && scancel --state=PENDING,RUNNING -u root >/dev/null 2>&1 || true
stop() {  # pid file -> TERM, wait up to 10 s, then KILL
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
stop "$STATE/run/slurmd.pid"
stop "$STATE/run/slurmctld.pid"
stop /run/munge/munged.pid
rm -rf "$STATE"
[ "$OURS" = 1 ] && rm -f "$CONF"
exit 0
