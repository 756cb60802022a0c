#!/usr/bin/env bash
# A one-node Slurm on this Debian machine, for the tests marked `slurm` (run as root):
#
#   bash scripts/slurm_local.sh start [STATE_DIR]   # munged, slurmctld, slurmd; waits for
#                                                   # the node; their pids in STATE_DIR
#   bash scripts/slurm_local.sh stop [STATE_DIR]    # stops them by those pids
#
# Needs Debian's `slurm-wlm` and `munge` (apt-get install slurm-wlm munge; the package
# writes the munge key). No systemd, no accounting daemon: proctrack/linuxproc, task/none,
# select/cons_tres, accounting_storage/none, one partition `debug` holding the node as
# `slurmd -C` describes it.
set -euo pipefail
action=${1:?start or stop}
state=${2:-/tmp/lmcollapse-slurm}
mkdir -p "$state"

stop() {
  for name in slurmd slurmctld munged; do
    if [ -f "$state/$name.pid" ]; then
      pid=$(cat "$state/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true
      rm -f "$state/$name.pid"
    fi
  done
}

if [ "$action" = stop ]; then stop; exit 0; fi
[ "$action" = start ] || { echo "usage: $0 start|stop [STATE_DIR]" >&2; exit 2; }
command -v slurmctld >/dev/null || { echo "slurm-wlm is not installed" >&2; exit 3; }
trap 'stop' ERR

# munge: its key (written by the package), its socket directory, the daemon as munge
[ -f /etc/munge/munge.key ] || mungekey --create
install -d -o munge -g munge -m 0755 /run/munge
rm -f /run/munge/munged.pid
runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid --force
for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
cp /run/munge/munged.pid "$state/munged.pid"

# Slurm's directories and config
for d in /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm; do
  install -d -o slurm -g slurm -m 0755 "$d"
done
host=$(hostname -s)
node=$(slurmd -C | head -1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
mkdir -p /etc/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=lmcollapse
SlurmctldHost=$host
SlurmUser=slurm
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=/var/log/slurm/jobcomp.txt
ReturnToService=2
MpiDefault=none
$node
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -D -i > "$state/slurmctld.out" 2>&1 &
echo $! > "$state/slurmctld.pid"
sleep 1
slurmd -D > "$state/slurmd.out" 2>&1 &
echo $! > "$state/slurmd.pid"
for _ in $(seq 60); do
  if sinfo -h -o "%T" 2>/dev/null | grep -q idle; then
    sinfo
    exit 0
  fi
  sleep 1
done
echo "the node did not come up: see $state/*.out and /var/log/slurm/" >&2
stop
exit 1
