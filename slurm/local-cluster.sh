#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for tests and for trying `ssl-zoo submit`.
#
#   slurm/local-cluster.sh up       install (Debian packages, as root), configure, start, wait until the
#                                   node is idle; prints the partition name on stdout (the only stdout line)
#   slurm/local-cluster.sh down     stop the daemons this script started
#   slurm/local-cluster.sh status   daemons, node state and queue; exit 1 when the cluster is not usable
#
# Daemons: munged -> mariadbd -> slurmdbd -> slurmctld -> slurmd, all on 127.0.0.1. Accounting
# (slurmdbd) is needed: without sacct, submitit cannot see failed or cancelled jobs.
# `up` is idempotent: running daemons are kept unless the generated config changed.
#
# Env: SSL_ZOO_SLURM_DIR (/tmp/ssl-zoo-slurm: state, logs, database)  SSL_ZOO_SLURM_PARTITION (debug)
#      SSL_ZOO_SLURM_CPUS (nproc)  SSL_ZOO_SLURM_DB_PORT (16316)  SSL_ZOO_SLURM_TIMEOUT (60 s)
set -euo pipefail

DIR=${SSL_ZOO_SLURM_DIR:-/tmp/ssl-zoo-slurm}
PARTITION=${SSL_ZOO_SLURM_PARTITION:-debug}
CPUS=${SSL_ZOO_SLURM_CPUS:-$(nproc)}
DB_PORT=${SSL_ZOO_SLURM_DB_PORT:-16316}
TIMEOUT=${SSL_ZOO_SLURM_TIMEOUT:-60}
PIDS=$DIR/pids LOGS=$DIR/logs DB=$DIR/db
CONF=/etc/slurm/slurm.conf DBD_CONF=/etc/slurm/slurmdbd.conf
TAG="# written by ssl-zoo slurm/local-cluster.sh"
PACKAGES="munge slurmctld slurmd slurm-client slurmdbd mariadb-server"

say() { echo "[local-cluster $(date +%T)] $*" >&2; }
fail() {
  say "ERROR: $*"
  for f in "$LOGS"/*.log "$DB"/error.log; do [ -f "$f" ] && { echo "--- last lines of $f" >&2; tail -n 20 "$f" >&2; }; done
  exit 1
}
running() { # running COMM PIDFILE
  local pid; pid=$(cat "$2" 2>/dev/null) || return 1
  [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$1" ]
}
await() { # await SECONDS WHAT COMMAND...
  local seconds=$1 what=$2; shift 2
  for ((i = 0; i < seconds * 4; i++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  fail "gave up after ${seconds}s waiting for $what"
}
stop() { # stop COMM PIDFILE
  running "$1" "$2" || return 0
  local pid; pid=$(cat "$2"); say "stopping $1 ($pid)"; kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do running "$1" "$2" || return 0; sleep 0.25; done
  kill -9 "$pid" 2>/dev/null || true
}

install_packages() {
  local missing="" p
  for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
  done
  [ -z "$missing" ] && return 0
  [ "$(id -u)" = 0 ] || fail "SLURM packages missing:$missing (install them as root, or run this script as root)"
  say "installing:$missing"
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  apt-get install -y -q --no-install-recommends $missing >>"$LOGS/apt.log" 2>&1 ||
    { apt-get update -q >>"$LOGS/apt.log" 2>&1 && apt-get install -y -q --no-install-recommends $missing >>"$LOGS/apt.log" 2>&1; } ||
    fail "apt-get install failed (see $LOGS/apt.log)"
}

start_munge() {
  getent hosts "$(hostname)" >/dev/null 2>&1 || echo "127.0.0.1 $(hostname)" >>/etc/hosts
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge; dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key; chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
  for d in /run/munge /var/lib/munge /var/log/munge; do mkdir -p $d; chown munge:munge $d; done
  chmod 755 /run/munge
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
  say "starting munged"
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --force </dev/null >>"$LOGS/munged.out" 2>&1 || fail "munged did not start"
  await 15 munged bash -c 'munge -n | unmunge'
  cp /run/munge/munged.pid "$PIDS/munged.pid"
}

write_config() { # sets CHANGED=1 when a file changed
  local mem conf dbd
  mem=$(free -m | awk '/^Mem:/{print int($2 * 0.9)}')
  # cred_expire and the scheduler intervals: a requeued job restarts in seconds, not ~2 minutes;
  # KillWait=5: submitit ignores SIGTERM, so cancelled jobs would otherwise hold a CPU for 30 s;
  # linuxproc/none plugins: no cgroups in containers (limits are not enforced)
  conf="$TAG
ClusterName=sslzoo
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2,batch_sched_delay=0
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=5
MailProg=/bin/true
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=$CPUS RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=localhost Default=YES MaxTime=INFINITE State=UP"
  dbd="$TAG
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
SlurmUser=root
LogFile=$LOGS/slurmdbd.log
PidFile=$PIDS/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=ssl-zoo-local
StorageLoc=slurm_acct_db"
  CHANGED=0
  mkdir -p /etc/slurm
  if [ "$(cat "$CONF" 2>/dev/null)" != "$conf" ]; then
    [ -f "$CONF" ] && ! grep -qF "$TAG" "$CONF" && cp "$CONF" "$CONF.before-ssl-zoo"
    printf '%s\n' "$conf" >"$CONF"; chmod 644 "$CONF"; CHANGED=1
  fi
  if [ "$(cat "$DBD_CONF" 2>/dev/null)" != "$dbd" ]; then
    printf '%s\n' "$dbd" >"$DBD_CONF"; CHANGED=1
  fi
  chmod 600 "$DBD_CONF"
  if [ "$CHANGED" = 1 ]; then
    say "configuration written to $CONF"
    stop slurmd "$PIDS/slurmd.pid"; stop slurmctld "$PIDS/slurmctld.pid"; stop slurmdbd "$PIDS/slurmdbd.pid"
  fi
}

start_accounting() {
  local sql=(mariadb --no-defaults -S "$DB/mysqld.sock" -uroot)
  mkdir -p "$DB/data"; chown -R mysql:mysql "$DB"
  if [ ! -d "$DB/data/mysql" ]; then
    say "initialising the accounting database in $DB"
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB/data" --auth-root-authentication-method=socket \
      --skip-test-db >>"$LOGS/mariadb-install.log" 2>&1 || fail "mariadb-install-db failed"
  fi
  if ! running mariadbd "$DB/mysqld.pid"; then
    say "starting mariadbd on 127.0.0.1:$DB_PORT"
    setsid mariadbd --no-defaults --user=mysql --datadir="$DB/data" --socket="$DB/mysqld.sock" \
      --pid-file="$DB/mysqld.pid" --bind-address=127.0.0.1 --port="$DB_PORT" --skip-name-resolve \
      --innodb-buffer-pool-size=64M --log-error="$DB/error.log" </dev/null >>"$LOGS/mariadbd.out" 2>&1 &
    await 60 mariadbd "${sql[@]}" -e "SELECT 1"
  fi
  "${sql[@]}" -e "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'ssl-zoo-local';
    CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'ssl-zoo-local';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
    FLUSH PRIVILEGES;" || fail "cannot create the slurm database user"
  if ! running slurmdbd "$PIDS/slurmdbd.pid"; then
    say "starting slurmdbd"
    slurmdbd </dev/null >>"$LOGS/slurmdbd.out" 2>&1 || fail "slurmdbd did not start"
    await 30 "slurmdbd on port 6819" bash -c 'exec 3<>/dev/tcp/127.0.0.1/6819'
  fi
}

node_usable() {
  case "$(sinfo -h -N -n localhost -o %T 2>/dev/null | head -1)" in
    idle | mixed | allocated | completing) return 0 ;;
    *drain* | down* | *fail* | inval*) scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1; return 1 ;;
    *) return 1 ;;
  esac
}

up() {
  if [ "$(id -u)" != 0 ]; then  # not root: fine when the cluster is already running
    node_usable && { echo "$PARTITION"; return 0; }
    fail "the local cluster is not running and 'up' must run as root to start it (it starts system daemons)"
  fi
  mkdir -p "$PIDS" "$LOGS" "$DIR/state" "$DIR/spool"
  local t0; t0=$(date +%s)
  install_packages
  start_munge
  write_config
  start_accounting
  running slurmctld "$PIDS/slurmctld.pid" || { say "starting slurmctld"; slurmctld </dev/null >>"$LOGS/slurmctld.out" 2>&1 || fail "slurmctld did not start"; }
  await 30 slurmctld scontrol ping
  running slurmd "$PIDS/slurmd.pid" || { say "starting slurmd"; slurmd -N localhost </dev/null >>"$LOGS/slurmd.out" 2>&1 || fail "slurmd did not start"; }
  await "$TIMEOUT" "node localhost to become idle" node_usable
  await 30 "cluster registration in slurmdbd" bash -c 'sacctmgr -n -P show cluster format=cluster | grep -qx sslzoo'
  say "cluster up in $(($(date +%s) - t0)) s: partition '$PARTITION', $CPUS CPUs, logs in $LOGS"
  echo "$PARTITION"
}

down() {
  stop slurmd "$PIDS/slurmd.pid"; stop slurmctld "$PIDS/slurmctld.pid"; stop slurmdbd "$PIDS/slurmdbd.pid"
  stop mariadbd "$DB/mysqld.pid"
  stop munged "$PIDS/munged.pid"
  say "stopped"
}

status() {
  local ok=0 name pidfile
  for name in munged:"$PIDS/munged.pid" mariadbd:"$DB/mysqld.pid" slurmdbd:"$PIDS/slurmdbd.pid" \
              slurmctld:"$PIDS/slurmctld.pid" slurmd:"$PIDS/slurmd.pid"; do
    pidfile=${name#*:}; name=${name%%:*}
    if running "$name" "$pidfile"; then echo "$name: running ($(cat "$pidfile"))"; else echo "$name: not running"; ok=1; fi
  done
  if node_usable; then sinfo; squeue; else echo "node: not usable"; ok=1; fi
  return $ok
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
