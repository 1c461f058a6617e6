#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm executor's tests and benchmarks: Debian's slurmctld,
# slurmd and munge, started as plain background daemons (no systemd) from a generated slurm.conf.
#
#   scripts/slurm-cluster.sh install      install the Debian packages (as root; about 30 s)
#   scripts/slurm-cluster.sh start DIR    start munged, slurmctld and slurmd with every file under DIR, on free
#                                         ports; wait until the node is idle; write DIR/env (SLURM_CONF) and
#                                         print its path
#   scripts/slurm-cluster.sh stop DIR     stop the three daemons
#
# Settings worth knowing: `batch_sched_delay=0` (a job starts about 1 s after sbatch instead of 3 s),
# `kill_invalid_depend` (a job whose dependency failed is cancelled, not left pending forever),
# `DefMemPerCPU` (without it every job takes the whole node's memory and jobs run one at a time), and
# `MinJobAge=600` (finished jobs stay visible to squeue for 10 minutes).
set -euo pipefail

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

stop() {
  local dir=$1 pid
  for name in slurmd slurmctld munged; do
    if [ -f "$dir/$name.pid" ]; then
      pid=$(cat "$dir/$name.pid")
      kill "$pid" 2>/dev/null || true
      # Gone before the next daemon is stopped (or killed after 10 s), so no test leaves one behind.
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$dir/$name.pid"
    fi
  done
  # slurmctld's helper process (slurmscriptd) runs from the same conf.
  pkill -f "slurmctld -f $dir/slurm.conf" 2>/dev/null || true
}

case "${1:-}" in
  install)
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
       && command -v munged >/dev/null; then
      echo "slurm: installed ($(slurmctld -V))"; exit 0
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      slurmctld slurmd slurm-client munge >/dev/null
    echo "slurm: installed ($(slurmctld -V))"
    ;;
  start)
    dir=${2:?usage: slurm-cluster.sh start DIR}
    command -v slurmctld >/dev/null || { echo "slurm-cluster: Slurm is not installed (scripts/slurm-cluster.sh install)" >&2; exit 3; }
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log"
    # Clients fail with "Socket is inaccessible" when the socket's folder is 0700.
    chmod 0755 "$dir/munge"
    [ -f "$dir/munge.key" ] || mungekey -c -k "$dir/munge.key" >/dev/null 2>&1 || \
      head -c 1024 /dev/urandom >"$dir/munge.key"
    chmod 0600 "$dir/munge.key"
    socket=$dir/munge/munge.socket
    munged --force --key-file="$dir/munge.key" --socket="$socket" --pid-file="$dir/munged.pid" \
      --log-file="$dir/log/munged.log" --seed-file="$dir/munge/seed"
    node=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ { printf "%d", $2 / 1024 * 0.8 }' /proc/meminfo)
    cat >"$dir/slurm.conf" <<CONF
ClusterName=genrelab-test
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
MpiDefault=none
SwitchType=switch/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
ReturnToService=2
MinJobAge=600
KillWait=5
DependencyParameters=kill_invalid_depend
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
NodeName=$node NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=main Nodes=$node Default=YES MaxTime=INFINITE State=UP
CONF
    export SLURM_CONF=$dir/slurm.conf
    slurmctld -f "$SLURM_CONF" -i
    slurmd -f "$SLURM_CONF"
    # Ready when the node takes jobs.
    for _ in $(seq 1 600); do
      state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
      case "$state" in idle|mixed|allocated) break ;; esac
      sleep 0.1
    done
    case "$state" in
      idle|mixed|allocated) ;;
      *) echo "slurm-cluster: the node did not come up (state '$state'); logs in $dir/log" >&2; stop "$dir"; exit 1 ;;
    esac
    echo "export SLURM_CONF=$SLURM_CONF" >"$dir/env"
    echo "$dir/env"
    ;;
  stop)
    stop "${2:?usage: slurm-cluster.sh stop DIR}"
    ;;
  *)
    sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
