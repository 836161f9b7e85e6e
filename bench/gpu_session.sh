#!/usr/bin/env bash
# The GPU runs behind bench/results/gpu_*.md, on a GPU node with a ready PyTorch environment and no
# network (the extra wheels come from a folder; Fashion-MNIST from a copied folder).
#
#   bash bench/gpu_session.sh STAGE... [OUT=dir]
#
# Environment: FDA_GPU_ENV (default: the directory of `python3`'s environment), FDA_WHEELS (a folder
# of wheels for what the environment lacks: pydantic, pytest-mpi, mpich, mpi4py; optional),
# FDA_FASHION_MNIST (a folder holding the four idx .gz files; optional), OUT (logs; default /tmp).
# Stages, in order: setup kernel-tests tests bench-kernel preflight demo bench-step
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp}
ENV_DIR=${FDA_GPU_ENV:-$(python3 -c 'import sys; print(sys.prefix)')}
PY=$ENV_DIR/bin/python
MPIEXEC=$ENV_DIR/bin/mpiexec
export PYTHONUNBUFFERED=1 OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

stage() { echo; echo "=== $1 ($(date -u +%H:%M:%S))"; }

for s in "$@"; do
  case $s in
  setup)
    stage "setup: $($PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name())')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    nvcc --version | tail -2
    if [ -n "${FDA_WHEELS:-}" ]; then
      $PY -m pip install -q --no-index --find-links "$FDA_WHEELS" "$FDA_WHEELS"/*.whl || exit 1
    fi
    if [ -n "${FDA_FASHION_MNIST:-}" ]; then
      mkdir -p /usr/share/datasets/fashion-mnist && cp "$FDA_FASHION_MNIST"/*.gz /usr/share/datasets/fashion-mnist/
    fi
    # the documented GPU set-up: make setup into an existing environment (its torch is kept)
    PIP_NO_INDEX=1 TORCH_CUDA_ARCH_LIST="9.0" make setup VENV="$ENV_DIR" TORCH_SPEC=torch 2>&1 | grep -v "^WARNING" | tail -20
    $PY -c 'import fda.kernels as K; print("backend", K.backend(), "cuda kernel", K.cuda_kernel_available())'
    ;;
  kernel-tests)
    stage "kernel tests on the GPU"
    timeout 600 $PY -m pytest -q -p no:cacheprovider tests/kernels tests/test_gpu_step.py 2>&1 | tail -15
    ;;
  tests)
    stage "make test (device=auto -> cuda; MPI at -n 2 and -n 4 on the one GPU)"
    make test VENV="$ENV_DIR" 2>&1 | grep -vE "^(WARNING|mpi4py|MPI vendor)" | tail -40
    ;;
  bench-kernel)
    stage "bench/kernel.py on the GPU"
    timeout 600 $PY bench/kernel.py --device cuda 2>&1 | tail -40
    ;;
  preflight)
    stage "fda preflight"
    $MPIEXEC -n 2 $PY -m fda preflight device=cuda dataset=fashion-mnist --out "$OUT/preflight-run" 2>&1 | tail -20
    ;;
  demo)
    stage "make demo (4 ranks on the GPU)"
    timeout 600 make demo VENV="$ENV_DIR" 2>&1 | grep -v "^WARNING" | tail -8
    ;;
  bench-step)
    stage "bench/gpu_step.py (2 ranks sharing the GPU)"
    timeout 600 $MPIEXEC -n 2 $PY bench/gpu_step.py --out bench/results/gpu_step.md 2>&1 | tail -20
    cp bench/results/gpu_step.md "$OUT/" 2>/dev/null
    ;;
  *) echo "unknown stage $s"; exit 2 ;;
  esac
done
