#!/usr/bin/env bash
# Start (or reuse) a single-node SLURM with accounting on this machine: munged, a private
# MariaDB, slurmdbd, slurmctld, slurmd. Idempotent: a healthy cluster with the wanted
# MaxArraySize is left alone; a different MaxArraySize restarts slurmctld only.
#   SKINHPC_DEVCLUSTER      state folder (default /tmp/skinhpc-devcluster)
#   SKINHPC_MAX_ARRAY_SIZE  MaxArraySize (default 1001)
#   SKINHPC_DB_PORT         private MariaDB TCP port on 127.0.0.1 (default 3307)
#   SKINHPC_DBD_PORT        slurmdbd port (default 6819)
# Needs root (the daemons and /etc/slurm). Stop with down.sh.
set -euo pipefail
STATE=${SKINHPC_DEVCLUSTER:-/tmp/skinhpc-devcluster}
MAX_ARRAY_SIZE=${SKINHPC_MAX_ARRAY_SIZE:-1001}
DB_PORT=${SKINHPC_DB_PORT:-3307}
DBD_PORT=${SKINHPC_DBD_PORT:-6819}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "devcluster: $*"; }
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local n=$(( $1 * 5 )) what=$2; shift 2
  for _ in $(seq "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  log "timed out waiting for $what (logs in $STATE/log)"; return 1
}
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

[ "$(id -u)" = 0 ] || { log "must run as root"; exit 1; }
missing=0
for b in munged slurmctld slurmd slurmdbd mariadbd sbatch; do command -v "$b" >/dev/null || missing=1; done
if [ "$missing" = 1 ]; then
  log "installing munge, SLURM and MariaDB from apt"
  export DEBIAN_FRONTEND=noninteractive
  pkgs="munge slurm-client slurmctld slurmd slurmdbd mariadb-server"
  apt-get install -y -qq --no-install-recommends $pkgs >/dev/null 2>&1 \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; }
fi

mkdir -p "$STATE"/{slurmctld,slurmd,log,run,mysql}
HOST=$(hostname -s)
NODE=$(slurmd -C | head -1 | sed -E 's/ RealMemory=[0-9]+//')
NODENAME=$(echo "$NODE" | sed -E 's/^NodeName=([^ ]+).*/\1/')
MEM_KB=$(awk '/MemTotal/ {print $2}' /proc/meminfo)
MEM=$(( MEM_KB / 1024 * 85 / 100 ))
mkdir -p /etc/slurm
sed -e "s|@HOST@|$HOST|; s|@STATE@|$STATE|g; s|@MAX_ARRAY_SIZE@|$MAX_ARRAY_SIZE|; s|@DBD_PORT@|$DBD_PORT|" \
    -e "s|@NODE@|$NODE|; s|@NODENAME@|$NODENAME|; s|@MEM@|$MEM|" \
    "$HERE/slurm.conf.in" > "$STATE/slurm.conf"
cat > "$STATE/slurmdbd.conf" <<DBD
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=skinhpc-dev
StorageLoc=slurm_acct_db
DBD
chmod 600 "$STATE/slurmdbd.conf"

# Already up? Leave it, or restart slurmctld alone for a new MaxArraySize.
if alive "$STATE/run/slurmctld.pid" && alive "$STATE/run/slurmd.pid" && sinfo -h >/dev/null 2>&1; then
  if cmp -s "$STATE/slurm.conf" /etc/slurm/slurm.conf; then
    log "already up (MaxArraySize=$MAX_ARRAY_SIZE)"; exit 0
  fi
  log "config changed: restarting slurmctld and slurmd"
  cp "$STATE/slurm.conf" /etc/slurm/slurm.conf
  for d in slurmd slurmctld; do
    alive "$STATE/run/$d.pid" && kill "$(cat "$STATE/run/$d.pid")"
    for _ in $(seq 50); do alive "$STATE/run/$d.pid" || break; sleep 0.1; done
  done
else
  cp "$STATE/slurm.conf" /etc/slurm/slurm.conf
fi
install -m 600 "$STATE/slurmdbd.conf" /etc/slurm/slurmdbd.conf

# munge: no systemd, and munged refuses to run as root
install -d -o munge -g munge -m 0755 /run/munge
if ! (munge -n | unmunge) >/dev/null 2>&1; then
  runuser -u munge -- munged
  wait_for 10 munged sh -c 'munge -n | unmunge'
fi

# private MariaDB on 127.0.0.1:$DB_PORT
SOCK=$STATE/run/mysqld.sock
if ! alive "$STATE/run/mysqld.pid"; then
  if [ ! -d "$STATE/mysql/mysql" ]; then
    mariadb-install-db --no-defaults --user=root --datadir="$STATE/mysql" >"$STATE/log/mariadb-install.log" 2>&1
  fi
  # its own session: mariadbd does not daemonize, and a group kill in the shell or test session that
  # ran up.sh must not take the accounting database with it (seen: sacct failing mid-suite)
  nohup setsid mariadbd --no-defaults --user=root --datadir="$STATE/mysql" --port="$DB_PORT" \
    --bind-address=127.0.0.1 --socket="$SOCK" --pid-file="$STATE/run/mysqld.pid" \
    --log-error="$STATE/log/mariadb.log" >/dev/null 2>&1 &
  wait_for 30 mariadb mariadb-admin --socket="$SOCK" ping
  mariadb --socket="$SOCK" -uroot <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'skinhpc-dev';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'skinhpc-dev';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
fi

if ! alive "$STATE/run/slurmdbd.pid"; then
  slurmdbd
  wait_for 30 slurmdbd sh -c "sacctmgr -n show cluster >/dev/null 2>&1 || (exec 3<>/dev/tcp/127.0.0.1/$DBD_PORT)"
fi
alive "$STATE/run/slurmctld.pid" || slurmctld
wait_for 30 slurmctld scontrol ping
alive "$STATE/run/slurmd.pid" || slurmd
wait_for 30 "node idle" sh -c "sinfo -h -N -o '%t' | grep -qE '^(idle|mix|alloc)'"
# a node left DOWN/DRAIN by an earlier run
scontrol update NodeName="$NODENAME" State=RESUME >/dev/null 2>&1 || true
log "up: $(sinfo -h -o '%P %D %t'), MaxArraySize=$MAX_ARRAY_SIZE, state in $STATE"
