#!/usr/bin/env bash
# Stops what slurm-up.sh started: the jobs, both nodes (their namespaces, with every process and
# mount in them), slurmctld and munged (by their pid files); removes STATE_DIR.
#   tests/cluster/slurm-down.sh STATE_DIR
set -uo pipefail
STATE=${1:?usage: slurm-down.sh STATE_DIR}
HERE=$(cd "$(dirname "$0")" && pwd)
[ -d "$STATE" ] || exit 0
grep -qxF "# modelmake test cluster (tests/cluster/slurm-up.sh), two nodes" "$STATE/etc/slurm.conf" 2>/dev/null \
  || { echo "slurm-down: $STATE is not a test cluster's state; left alone" >&2; exit 1; }
export SLURM_CONF="$STATE/etc/slurm.conf"
timeout 10 scancel --state=PENDING,RUNNING >/dev/null 2>&1 || true
for n in "$STATE"/nodes/*/; do bash "$HERE/node-kill.sh" "$(basename "$n")" "$STATE"; done
stop() {  # pid file -> TERM, wait up to 10 s, then KILL
  local f=$1 pid
  [ -f "$f" ] || return 0
  pid=$(cat "$f")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
stop "$STATE/run/slurmctld.pid"
stop "$STATE/run/munged.pid"
rm -rf "$STATE"
exit 0
