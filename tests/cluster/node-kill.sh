#!/usr/bin/env bash
# A node loss: SIGKILL to the node's PID 1 (node.sh), so the kernel kills every process of its PID
# namespace at once: slurmd, slurmstepd and the job's whole process tree; its mounts go with it.
# Returns once they are gone (bounded wait).
#   tests/cluster/node-kill.sh NAME STATE_DIR
set -uo pipefail
NAME=$1 STATE=$2
NODE="$STATE/nodes/$NAME"
[ -f "$NODE/init.pid" ] || exit 0
pid=$(cat "$NODE/init.pid")
ns=$(readlink "/proc/$pid/ns/pid" 2>/dev/null || true)
kill -9 "$pid" 2>/dev/null || true
for i in $(seq 100); do
  left=0
  if [ -n "$ns" ]; then
    for p in /proc/[0-9]*; do [ "$(readlink "$p/ns/pid" 2>/dev/null)" = "$ns" ] && { left=1; break; }; done
  fi
  [ "$left" = 0 ] && break
  sleep 0.1
done
[ -f "$NODE/unshare.pid" ] && kill -9 "$(cat "$NODE/unshare.pid")" 2>/dev/null
rm -f "$NODE/init.pid" "$NODE/unshare.pid"
[ "$left" = 0 ] || { echo "node-kill: processes of $NAME still alive" >&2; exit 1; }
exit 0
