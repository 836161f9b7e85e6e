#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, and the job scripts submitted to it as a user would.
#
#   .ci/slurm.sh              install (when missing), start, run tests/cluster, stop
#   .ci/slurm.sh up DIR       start a cluster whose state lives in DIR; prints `export SLURM_CONF=...`
#   .ci/slurm.sh down DIR     stop the daemons started by `up DIR` (by the PIDs it recorded)
#
# Debian's slurm-wlm and munge (apt-get, root). The daemons use their own ports, munge socket and
# spool directories under DIR and nothing in /etc but the munge key the package made; the node
# declares more CPUs than the machine has (SlurmdParameters=config_overrides), so several small
# jobs can run at once, and tracks processes without cgroups (proctrack/linuxproc, task/none).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
SLURM_PORT_BASE=${SLURM_PORT_BASE:-16817}
NODE_CPUS=${SLURM_NODE_CPUS:-16}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then
        return
    fi
    echo "slurm: installing slurm-wlm and munge (apt-get)"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null
}

write_conf() {
    local dir=$1 host
    host=$(hostname -s)
    mkdir -p "$dir/state" "$dir/spool" "$dir/log"
    cat > "$dir/slurm.conf" <<EOF
ClusterName=fda-ci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$SLURM_PORT_BASE
SlurmdPort=$((SLURM_PORT_BASE + 1))
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge.socket
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool/%n
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobRequeue=1
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
KillWait=30
InactiveLimit=0
MinJobAge=600
NodeName=$host NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=1000 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

wait_until() {  # wait_until SECONDS DESCRIPTION COMMAND...
    local limit=$1 what=$2
    shift 2
    for _ in $(seq $((limit * 5))); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.2
    done
    echo "slurm: $what did not come up within $limit s" >&2
    return 1
}

up() {
    local dir=$1
    install_packages
    write_conf "$dir"
    export SLURM_CONF=$dir/slurm.conf
    munged --socket="$dir/munge.socket" --pid-file="$dir/munged.pid" --log-file="$dir/log/munged.log" \
        --seed-file="$dir/munge.seed" --force
    wait_until 20 munged test -S "$dir/munge.socket"
    slurmctld -f "$SLURM_CONF"
    wait_until 30 slurmctld scontrol ping
    slurmd -f "$SLURM_CONF"
    wait_until 60 "the node" bash -c "sinfo -h -N -o %t | grep -Eq '^(idle|mix|alloc)'"
    echo "export SLURM_CONF=$SLURM_CONF"
}

down() {
    local dir=$1 name pid
    if [[ -f "$dir/slurmctld.pid" ]]; then  # this cluster's jobs first (their steps are not daemons)
        export SLURM_CONF=$dir/slurm.conf
        scancel --full --user="$(id -un)" 2>/dev/null || true
        for _ in $(seq 200); do [[ -z "$(squeue -h 2>/dev/null)" ]] && break; sleep 0.2; done
    fi
    for name in slurmd slurmctld munged; do
        [[ -f "$dir/$name.pid" ]] || continue
        pid=$(cat "$dir/$name.pid")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -9 "$pid" 2>/dev/null || true
    done
}

case "${1:-run}" in
    up) up "$2" ;;
    down) down "$2" ;;
    run)
        dir=$(mktemp -d /tmp/fda-slurm.XXXXXX)
        trap 'down "$dir"; rm -rf "$dir"' EXIT
        up "$dir"
        export SLURM_CONF=$dir/slurm.conf FDA_SLURM_CLUSTER=$dir
        timeout 900 .venv/bin/python -m pytest -q -p no:cacheprovider -s tests/cluster ;;
    *) echo "usage: $0 [run | up DIR | down DIR]" >&2; exit 2 ;;
esac
