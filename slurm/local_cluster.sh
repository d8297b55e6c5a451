#!/usr/bin/env bash
# A real Slurm cluster on this machine: munge, slurmctld and two slurmd emulating nodes n1 and n2.
# For the test suite and for trying nluft's Slurm path on one machine. Needs root and Debian's
# packages (installed on demand): slurmctld slurmd slurm-client munge.
#
#   slurm/local_cluster.sh start    # install if needed, write slurm.conf, start daemons, wait for idle nodes
#   slurm/local_cluster.sh status   # sinfo
#   slurm/local_cluster.sh stop     # scontrol shutdown, wait for the daemons to exit, undo /etc/hosts
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
HOSTS_LINE="127.0.0.1 n1 n2  # nluft local cluster"
CPUS=${NLUFT_SLURM_CPUS:-2}
MEM_MB=${NLUFT_SLURM_MEM_MB:-8000}

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
    && command -v sbatch >/dev/null && return
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
  local host; host=$(hostname -s)
  mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
  cat >"$CONF" <<CONF
ClusterName=nluft-local
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=10
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
EnforcePartLimits=ALL
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.txt
MinJobAge=600
KillWait=5
SchedulerParameters=sched_interval=2,bf_interval=1
NodeName=n1 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17001 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
NodeName=n2 NodeHostname=localhost NodeAddr=127.0.0.1 Port=17002 CPUs=${CPUS} RealMemory=${MEM_MB} State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF
}

add_hosts() {
  grep -q "nluft local cluster" /etc/hosts || echo "$HOSTS_LINE" >>/etc/hosts
}

remove_hosts() {
  # /etc/hosts may be a bind mount: edit it in place rather than replacing the file.
  if grep -q "nluft local cluster" /etc/hosts; then
    local kept; kept=$(grep -v "nluft local cluster" /etc/hosts)
    printf '%s\n' "$kept" >/etc/hosts
  fi
}

# Daemons must not inherit the caller's descriptors: under `flock LOCK slurm/local_cluster.sh start`
# munged and slurmd would otherwise hold the lock for as long as they run.
detached() {
  (
    for fd in /proc/$BASHPID/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ] && [ "$fd" -ne 255 ]; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    exec "$@"
  )
}

start_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    detached runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return; sleep 0.1; done
    echo "munged did not come up" >&2; exit 1
  fi
}

start() {
  install_packages
  write_conf
  add_hosts
  start_munge
  pidalive /run/slurmctld.pid || detached slurmctld
  pidalive /run/slurmd-n1.pid || detached slurmd -N n1
  pidalive /run/slurmd-n2.pid || detached slurmd -N n2
  for _ in $(seq 150); do
    if [ "$(sinfo -h -o '%t' 2>/dev/null | sort -u | tr -d '\n')" = "idle" ]; then
      scontrol update nodename=n1,n2 state=resume >/dev/null 2>&1 || true
      sinfo; return
    fi
    scontrol update nodename=n1,n2 state=resume >/dev/null 2>&1 || true
    sleep 0.2
  done
  echo "slurm nodes did not become idle:" >&2; sinfo >&2 || true; exit 1
}

pidalive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

stop() {
  local pids=""
  for f in /run/slurmctld.pid /run/slurmd-n1.pid /run/slurmd-n2.pid; do
    pidalive "$f" && pids="$pids $(cat "$f")"
  done
  scontrol shutdown >/dev/null 2>&1 || true
  for pid in $pids; do
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill "$pid" 2>/dev/null || true
  done
  remove_hosts
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
