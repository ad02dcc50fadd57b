#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the SLURM tests (tests/test_slurm.py) and CI.
#
#   bash scripts/local_slurm.sh start    # install (Debian, as root) + configure + start; waits until a job runs
#   bash scripts/local_slurm.sh status   # exit 0 only when a job can be scheduled now
#   bash scripts/local_slurm.sh stop     # stop slurmd, slurmctld, munged
#
# Idempotent: `start` on a running cluster only checks it. Everything stays on loopback: the node and the
# controller are this host's short name, which must resolve to a 127.x address (slurm binds there, not on
# 0.0.0.0: CommunicationParameters=NoCtldInAddrAny,NoInAddrAny), and munge talks over a unix socket.
# No systemd needed: the daemons run as plain background daemons; no cgroups (proctrack/linuxproc,
# task/none); no accounting (submitit then falls back from sacct to squeue).
# State, spool and logs live in $ROCOFT_SLURM_DIR (default /var/lib/rocoft-slurm), outside the project;
# the config goes to /etc/slurm/slurm.conf (where sinfo/sbatch/srun look), never over a foreign one.
set -euo pipefail

STATE=${ROCOFT_SLURM_DIR:-/var/lib/rocoft-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by rocoft scripts/local_slurm.sh"
PARTITION=${ROCOFT_SLURM_PARTITION:-debug}
TIMEOUT=${ROCOFT_SLURM_TIMEOUT:-90}          # seconds to wait for the node / the first job
PKGS=(slurmctld slurmd slurm-client munge)
HOST=$(hostname -s)

say() { echo "local_slurm: $*"; }
die() { echo "local_slurm: ERROR: $*" >&2; exit 1; }
show_logs() {
  for f in "$STATE"/log/*.log; do
    [ -f "$f" ] && { echo "---- last lines of $f" >&2; tail -n 25 "$f" >&2; }
  done
  return 0
}
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }   # pid file -> running?

install_packages() {
  local missing=() p
  for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "packages missing (${missing[*]}) and not root: run as root or install them"
  command -v apt-get >/dev/null || die "packages missing (${missing[*]}) and no apt-get (Debian/Ubuntu only)"
  say "installing ${missing[*]} (apt-get)"
  # keep the packages' init scripts from starting daemons with their default config
  local policy_added=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
  fi
  local rc=0
  { DEBIAN_FRONTEND=noninteractive apt-get update -q \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
    >"/tmp/rocoft-slurm-apt.log" 2>&1 || rc=$?
  [ $policy_added -eq 1 ] && rm -f /usr/sbin/policy-rc.d
  if [ $rc -ne 0 ]; then tail -n 30 /tmp/rocoft-slurm-apt.log >&2; die "apt-get failed (exit $rc)"; fi
}

write_config() {
  local addr hw tmp
  addr=$(getent ahostsv4 "$HOST" | awk 'NR==1{print $1}')
  case "$addr" in
    127.*) ;;
    *) die "host name '$HOST' resolves to '${addr:-nothing}', not a loopback address: refusing to start slurm \
on a network interface (add '127.0.0.1 $HOST' to /etc/hosts)" ;;
  esac
  hw=$(slurmd -C 2>/dev/null | head -n1)            # NodeName=... CPUs=... RealMemory=... of this machine
  [[ "$hw" == NodeName=* ]] || die "'slurmd -C' gave no node description: $hw"
  hw=$(sed -E "s/^NodeName=[^ ]+/NodeName=$HOST NodeAddr=$addr/" <<<"$hw")
  mkdir -p "$STATE"/{ctld,spool,log,run} /etc/slurm
  if [ -f "$CONF" ] && ! head -n1 "$CONF" | grep -qF "$MARK"; then
    die "$CONF exists and was not written by this script: not overwriting it (a real cluster's config?)"
  fi
  tmp=$(mktemp)
  cat >"$tmp" <<EOF
$MARK; state in $STATE
ClusterName=rocoft-local
SlurmctldHost=$HOST($addr)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=20
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
MinJobAge=300
KillWait=10
$hw State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
  if ! cmp -s "$tmp" "$CONF"; then
    cp "$tmp" "$CONF" && chmod 644 "$CONF"
    CONF_CHANGED=1
  fi
  rm -f "$tmp"
}

start_munge() {
  if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
  mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    say "generating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
    else dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none; fi
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 700 /etc/munge && chmod 400 /etc/munge/munge.key && chmod 755 /run/munge
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged || die "munged did not start (see /var/log/munge/munged.log)"
  local i
  for i in $(seq 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.5; done
  die "munge does not work (munge -n | unmunge); see /var/log/munge/munged.log"
}

start_daemons() {
  if [ "${CONF_CHANGED:-0}" = 1 ] && { alive "$STATE/run/slurmctld.pid" || alive "$STATE/run/slurmd.pid"; }; then
    say "config changed: restarting slurm daemons"
    stop_slurm
  fi
  if ! alive "$STATE/run/slurmctld.pid"; then
    say "starting slurmctld"
    slurmctld || { show_logs; die "slurmctld did not start"; }
  fi
  if ! alive "$STATE/run/slurmd.pid"; then
    say "starting slurmd"
    slurmd || { show_logs; die "slurmd did not start"; }
  fi
}

node_state() { timeout 10 sinfo -h -n "$HOST" -o %T 2>/dev/null | head -n1 || true; }

wait_ready() {
  local deadline=$((SECONDS + TIMEOUT)) st=""
  while :; do
    st=$(node_state)
    case "$st" in idle*|mixed*) break ;; esac
    case "$st" in down*|drain*) timeout 10 scontrol update nodename="$HOST" state=resume >/dev/null 2>&1 || true ;; esac
    if [ $SECONDS -ge $deadline ]; then
      show_logs; die "node '$HOST' not idle after ${TIMEOUT}s (sinfo state: '${st:-no answer from slurmctld}')"
    fi
    sleep 1
  done
  local left=$((deadline - SECONDS)); [ $left -lt 20 ] && left=20
  if ! timeout "$left" srun -N1 -n1 -t 1 -p "$PARTITION" --immediate="$left" true; then
    show_logs; die "a test job (srun -N1 true) did not run within ${left}s"
  fi
}

check_loopback() {
  command -v ss >/dev/null || { say "ss missing: cannot check listening addresses"; return 0; }
  local bad
  bad=$(ss -Hltnp 2>/dev/null | grep -E '"(slurmctld|slurmd|munged)"' | awk '{print $4}' | grep -Ev '^(127\.|\[::1\]|::1)' || true)
  [ -z "$bad" ] || { ss -ltnp | grep -E 'slurm|munge' >&2; stop_all; die "a daemon listens beyond loopback: $bad"; }
}

stop_slurm() {
  local d p i
  for d in slurmd slurmctld; do
    if alive "$STATE/run/$d.pid"; then
      p=$(cat "$STATE/run/$d.pid"); kill "$p" 2>/dev/null || true
      for i in $(seq 30); do kill -0 "$p" 2>/dev/null || break; sleep 0.5; done
      kill -0 "$p" 2>/dev/null && kill -9 "$p" 2>/dev/null || true
      say "stopped $d ($p)"
    fi
    rm -f "$STATE/run/$d.pid"
  done
}

stop_all() {
  stop_slurm
  local pf=/run/munge/munged.pid p
  if alive "$pf"; then p=$(cat "$pf"); kill "$p" 2>/dev/null || true; say "stopped munged ($p)"; fi
}

status() {
  command -v sinfo >/dev/null || { echo "local_slurm: not installed (no sinfo)"; return 1; }
  local st
  st=$(node_state)
  echo "local_slurm: node $HOST: ${st:-no answer from slurmctld}"
  case "$st" in
    idle*|mixed*) timeout 30 srun -N1 -n1 -t 1 --immediate=20 true >/dev/null 2>&1 \
                    || { echo "local_slurm: srun -N1 true failed"; return 1; } ;;
    allocated*|completing*) ;;                     # busy, but it will schedule
    *) return 1 ;;
  esac
  echo "local_slurm: ready (partition $(timeout 10 sinfo -h -o %P | tr '\n' ' '))"
}

case "${1:-}" in
  start)
    if [ "$(id -u)" -ne 0 ]; then
      status >/dev/null 2>&1 && { say "already running"; status; exit 0; }
      die "start needs root (apt-get, munge key, slurm daemons)"
    fi
    install_packages
    CONF_CHANGED=0
    write_config
    if [ "$CONF_CHANGED" = 0 ] && status >/dev/null 2>&1; then say "already running"; status; exit 0; fi
    start_munge
    start_daemons
    wait_ready
    check_loopback
    status
    ;;
  stop) stop_all ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
