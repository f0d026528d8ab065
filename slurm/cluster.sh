#!/usr/bin/env bash
# A real one-machine SLURM cluster from Debian packages, with every piece of state in one folder.
#
#   bash slurm/cluster.sh install            # apt packages (munge, slurmctld, slurmd, slurm-client,
#                                            # slurmdbd, mariadb-server); needs root
#   bash slurm/cluster.sh start [DIR]        # start munged, mariadbd, slurmdbd, slurmctld, slurmd
#   bash slurm/cluster.sh status [DIR]       # sinfo through this cluster's config
#   bash slurm/cluster.sh stop [DIR]         # stop exactly the daemons started from DIR
#   bash slurm/cluster.sh env [DIR]          # print `export SLURM_CONF=...` for clients
#
# DIR defaults to $MOCHI_SLURM_DIR, else ~/.mochi-slurm. Clients (sbatch, squeue, sacct, submitit)
# find the cluster through SLURM_CONF=DIR/slurm.conf. The daemons run as root (no systemd, no
# cgroups: proctrack/linuxproc, task/none), as the project's test machines allow. Ports are chosen
# free at first start and kept in DIR, so a workstation's own SLURM is left alone.
set -euo pipefail

cmd=${1:-}
dir=$(realpath -m "${2:-${MOCHI_SLURM_DIR:-$HOME/.mochi-slurm}}")
conf="$dir/slurm.conf"
die() { echo "cluster.sh: $*" >&2; exit 2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

alive() {  # alive PIDFILE: the process named in the file is running
  [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local t=$1 what=$2; shift 2
  for _ in $(seq $((t * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${t}s (logs in $dir/log)"
}

install() {
  [ "$(id -u)" = 0 ] || die "install needs root (apt-get)"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    munge slurmctld slurmd slurm-client slurmdbd mariadb-server >/dev/null
}

write_config() {
  mkdir -p "$dir"/{state,spool,log,run,mysql}
  chmod 755 "$dir"
  [ -f "$dir/ports" ] || echo "$(free_port) $(free_port) $(free_port) $(free_port)" >"$dir/ports"
  read -r ctld_port slurmd_port dbd_port db_port <"$dir/ports"
  local host mem
  host=$(hostname -s)
  mem=$(awk '/MemTotal/ {print int($2 / 1024) - 2048}' /proc/meminfo)
  cat >"$conf" <<EOF
# Written by slurm/cluster.sh: a one-node cluster for workstations and tests.
ClusterName=mochi
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$dbd_port
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
PidFile=$dir/run/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=mochi-slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$dir/slurmdbd.conf"
}

start_munge() {
  # munge is a host-wide service: every SLURM client looks for /run/munge/munge.socket.2. Reuse a
  # running munged (a workstation's own); else start one and note in DIR that it is ours to stop.
  if pgrep -x munged >/dev/null && [ -S /run/munge/munge.socket.2 ]; then return 0; fi
  [ -f /etc/munge/munge.key ] || { dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none;
    chown munge: /etc/munge/munge.key; chmod 400 /etc/munge/munge.key; }
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge: /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- munged
  wait_for 10 munged test -S /run/munge/munge.socket.2
  cp /run/munge/munged.pid "$dir/run/munged.pid"
}

mysql_up() { mariadb --protocol=socket -S "$dir/run/mysqld.sock" -uroot -e 'select 1'; }

start_mariadb() {
  read -r _ _ _ db_port <"$dir/ports"
  if ! alive "$dir/run/mysqld.pid"; then
    if [ ! -d "$dir/mysql/mysql" ]; then
      mariadb-install-db --user=root --datadir="$dir/mysql" --auth-root-authentication-method=socket \
        >"$dir/log/mariadb-install.log" 2>&1
    fi
    setsid mariadbd --no-defaults --user=root --datadir="$dir/mysql" --socket="$dir/run/mysqld.sock" \
      --pid-file="$dir/run/mysqld.pid" --port="$db_port" --bind-address=127.0.0.1 \
      --log-error="$dir/log/mariadb.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
    wait_for 60 mariadbd mysql_up
  fi
  mariadb --protocol=socket -S "$dir/run/mysqld.sock" -uroot -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'mochi-slurm';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'mochi-slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

start() {
  command -v slurmctld >/dev/null && command -v slurmdbd >/dev/null && command -v mariadbd >/dev/null \
    || die "SLURM/MariaDB packages missing; run: bash slurm/cluster.sh install"
  [ "$(id -u)" = 0 ] || die "start needs root (the daemons run as root here)"
  write_config
  export SLURM_CONF=$conf
  start_munge
  start_mariadb
  if ! alive "$dir/run/slurmdbd.pid"; then
    slurmdbd  # reads slurmdbd.conf beside $SLURM_CONF
    wait_for 30 slurmdbd sacctmgr -n list cluster
  fi
  sacctmgr -i -Q add cluster mochi >/dev/null 2>&1 || true
  alive "$dir/run/slurmctld.pid" || slurmctld -f "$conf"
  wait_for 30 slurmctld scontrol ping
  alive "$dir/run/slurmd.pid" || slurmd -f "$conf"
  wait_for 30 "an idle node" sh -c "sinfo -h -o %t | grep -qx idle"
  echo "SLURM cluster up in $dir; clients need: export SLURM_CONF=$conf"
}

stop() {
  [ -f "$conf" ] || die "no cluster in $dir"
  export SLURM_CONF=$conf
  if alive "$dir/run/slurmctld.pid"; then
    scancel --quiet --full --user="$(id -un)" 2>/dev/null || true
    scontrol shutdown >/dev/null 2>&1 || true
  fi
  for name in slurmd slurmctld slurmdbd mysqld munged; do
    local pidfile="$dir/run/$name.pid"
    if alive "$pidfile"; then
      local pid
      pid=$(cat "$pidfile")
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  echo "SLURM cluster in $dir stopped"
}

case "$cmd" in
  install) install ;;
  start) start ;;
  stop) stop ;;
  status) [ -f "$conf" ] || die "no cluster in $dir"; SLURM_CONF=$conf sinfo ;;
  env) [ -f "$conf" ] || die "no cluster in $dir"; echo "export SLURM_CONF=$conf" ;;
  *) die "usage: cluster.sh install|start|stop|status|env [DIR]" ;;
esac
