#!/usr/bin/env bash
# Stop the dev cluster started by up.sh: slurmd first, munged last, each by its pid file.
#   SKINHPC_DEVCLUSTER  state folder (default /tmp/skinhpc-devcluster)
#   --wipe              also delete the state folder (slurmctld state and the accounting
#                       database together: job ids restart at 1 and no stale row survives)
set -euo pipefail
STATE=${SKINHPC_DEVCLUSTER:-/tmp/skinhpc-devcluster}
stop() {
  local pidfile=$1
  [ -s "$pidfile" ] || return 0
  local pid; pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
}
stop "$STATE/run/slurmd.pid"
stop "$STATE/run/slurmctld.pid"
stop "$STATE/run/slurmdbd.pid"
stop "$STATE/run/mysqld.pid"
# munged is shared by every munge client on the machine: stop it only if we started it
stop /run/munge/munged.pid
if [ "${1:-}" = "--wipe" ]; then rm -rf "$STATE"; fi
echo "devcluster: down"
