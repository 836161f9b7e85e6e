#!/bin/bash
# fda on one workstation or a single server, without a batch system:
#   jobscripts/workstation_mpirun.sh            (run it again after a crash: it resumes)
#
# Lines you edit:
#   NP        MPI ranks = FDA workers (times workers_per_rank). With GPUs: one per GPU; on a
#             CPU-only machine: a few, each getting cores / NP torch threads.
#   MPIEXEC   the launcher: the venv's (bundled MPICH wheel), or your system's mpirun / mpiexec
#             if mpi4py was built against that MPI (make setup MPI=system; see environment.yml).
#             Open MPI as root or with more ranks than cores: "mpirun --allow-run-as-root --oversubscribe".
#   BIND      how the launcher pins ranks to cores. Hydra (MPICH): "-bind-to core:N" gives each
#             rank N cores; Open MPI: "--map-by slot:PE=N --bind-to core". fda reads the binding
#             and uses that many torch threads (empty BIND: cores / NP).
#   CONFIG    the run's YAML settings file.
#   OUT       the run directory (log, checkpoints, config).
#   EXTRA     KEY=VALUE overrides; checkpoint_every (steps) bounds what a crash loses; stall_timeout
#             (s) ends the run, naming the rank, when one hangs.
# Ctrl-C aborts. `kill -USR1` of mpiexec stops the run after the current step with a checkpoint
# (exit 75); run this script again to continue. MPICH's mpiexec forwards SIGTERM too; Open MPI's
# mpirun does not (it aborts the job): send it SIGUSR1. Another signal 1 s later ends it at once.
NP=4
MPIEXEC=${MPIEXEC:-${FDA_MPIEXEC:-.venv/bin/mpiexec}}
BIND=""
CONFIG=configs/demo.yaml
OUT=runs/workstation
EXTRA="checkpoint_every=500 stall_timeout=900"

# --- nothing to edit below ---------------------------------------------------------------------
set -eo pipefail
cd "$(dirname "$0")/.."
FDA=(python -m fda)
[[ -x .venv/bin/python ]] && FDA=(.venv/bin/python -m fda)

# MPI, rank -> device binding, kernels, data files, output directory: seconds, before the work.
$MPIEXEC -n "$NP" $BIND "${FDA[@]}" preflight --config "$CONFIG" --out "$OUT" $EXTRA

TRAIN=(train --config "$CONFIG" --out "$OUT" $EXTRA)
if [[ -f "$OUT/checkpoints/LATEST" ]]; then
    echo "resuming $OUT from step $(cat "$OUT/checkpoints/LATEST")"
    TRAIN=(train --resume "$OUT")
fi
rc=0
$MPIEXEC -n "$NP" $BIND "${FDA[@]}" "${TRAIN[@]}" || rc=$?
if [[ $rc -eq 75 ]]; then
    echo "stopped by a signal after a checkpoint: run $0 again to continue"
fi
exit $rc
