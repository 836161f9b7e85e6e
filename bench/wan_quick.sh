#!/usr/bin/env bash
# A first look at the settings that hide the network, on one seed of one task (not the comparison):
#   bash bench/wan_quick.sh [OUT]        # about 6 minutes on 2 cores; OUT: bench/results/wan-quick
# LeNet-5 on Fashion-MNIST IID, K = 5 workers hosted by one rank, 3 epochs, seed 0, with the
# comparison's settings (bench/configs/compare.yaml); then `fda report --network datacenter --network wan`.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/wan-quick}
RUNS=$(mktemp -d)
trap 'rm -rf "$RUNS"' EXIT
COMMON=(dataset=fashion-mnist model=lenet5 workers_per_rank=5 batch_size=32 optimizer=adam lr=0.001
        epochs=3 eval_every=75 threads=1 seed=0 partition=iid)
declare -A RUN=(
  [synchronous]="strategy=synchronous"
  [fda-linear]="strategy=fda monitor=linear theta=1"
  [fda-linear-lag4]="strategy=fda monitor=linear theta=1 check_lag=4"
  [fda-linear-auto]="strategy=fda monitor=linear theta=1 check_every=auto"
  [fda-linear-auto-lag4]="strategy=fda monitor=linear theta=1 check_every=auto check_lag=4"
  [fedavg-32]="strategy=fedavg tau=32"
  [diloco-128]="strategy=diloco tau=128"
)
ORDER=(synchronous fda-linear fda-linear-lag4 fda-linear-auto fda-linear-auto-lag4 fedavg-32 diloco-128)
started=$(date -u +%Y-%m-%d\ %H:%M)
for name in "${ORDER[@]}"; do
  # shellcheck disable=SC2086  # the run's settings are words
  .venv/bin/fda train "${COMMON[@]}" ${RUN[$name]} --out "$RUNS/$name" --no-progress > /dev/null
done
mkdir -p "$OUT"
runs=()
for name in "${ORDER[@]}"; do runs+=("$RUNS/$name"); done
.venv/bin/fda report "${runs[@]}" --network datacenter --network wan --out "$OUT" > /dev/null
{
  echo "# A quick look at the network-hiding settings on one task"
  echo
  echo "- Machine: $(nproc)-core CPU VM ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), no GPU," \
       "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)'), $(.venv/bin/python -c \
       'from mpi4py import MPI; print(MPI.Get_library_version().splitlines()[0].strip())')"
  echo "- Date: $started-$(date -u +%H:%M) UTC; commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src || echo ' (modified)')"
  echo "- Command: \`bash bench/wan_quick.sh\`. Runs: LeNet-5 on Fashion-MNIST IID, K = 5 workers hosted by one rank,"
  echo "  3 epochs, seed 0: \`fda train ${COMMON[*]}\` plus each run's settings:"
  for name in "${ORDER[@]}"; do echo "  - $name: \`${RUN[$name]}\`"; done
  echo "- Report: \`fda report RUNS --network datacenter --network wan\` ([report.md](report.md), report.csv),"
  echo "  the MPICH-aware model of fda.netmodel with P = K = 5."
  echo "- One seed only: a first look, not the comparison (bench/compare.py)."
} > "$OUT/README.md"
echo "wrote $OUT"
