#!/usr/bin/env bash
# Start (or, after node-kill.sh, restart: a reboot with a new boot id and an empty /tmp) one node
# of the test cluster in namespaces of its own (node.sh). Its init's host pid goes to
# STATE/nodes/NAME/init.pid; the call returns once its slurmd answers.
#   tests/cluster/node-start.sh NAME STATE_DIR
set -euo pipefail
NAME=$1 STATE=$2
HERE=$(cd "$(dirname "$0")" && pwd)
NODE="$STATE/nodes/$NAME"
mkdir -p "$NODE"
rm -f "$NODE/init.pid.ns"
setsid unshare --mount --uts --pid --fork --mount-proc --propagation private \
  bash "$HERE/node.sh" "$NAME" "$STATE" </dev/null >>"$STATE/log/node-$NAME.log" 2>&1 &
# the namespace's PID 1 is unshare's child: find it (bounded wait)
for i in $(seq 100); do
  pid=$(pgrep -P $! -x bash || true)
  [ -n "$pid" ] && [ -f "$NODE/init.pid.ns" ] && break
  sleep 0.05
done
[ -n "${pid:-}" ] || { echo "node-start: $NAME did not start; see $STATE/log/node-$NAME.log" >&2; exit 1; }
echo "$pid" > "$NODE/init.pid"
echo "$!" > "$NODE/unshare.pid"
export SLURM_CONF="$STATE/etc/slurm.conf"
for i in $(seq 100); do
  [ -f "$STATE/run/slurmd-$NAME.pid" ] && scontrol ping >/dev/null 2>&1 && exit 0
  sleep 0.1
done
echo "node-start: slurmd of $NAME did not come up; see $STATE/log/slurmd-$NAME.log" >&2
exit 1
