import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).parent / "mpiexec"

# Tests leave nothing in /tmp: this session's temporary files (pytest's tmp_path, shared_dir, and
# what child processes such as mpiexec write under $TMPDIR, also when a test SIGKILLs them) go to
# one private directory, removed when the session ends. FDA_KEEP_TEST_TMP=1 keeps it (it is printed).
_SESSION_TMP = tempfile.mkdtemp(prefix="fda-pytest-")
os.environ["TMPDIR"] = tempfile.tempdir = _SESSION_TMP


def pytest_unconfigure(config):
    if os.environ.get("FDA_KEEP_TEST_TMP") == "1":
        print(f"\ntest files kept in {_SESSION_TMP}")
    else:
        shutil.rmtree(_SESSION_TMP, ignore_errors=True)


@pytest.fixture
def shared_dir():
    """A temporary directory that every MPI rank agrees on (rank 0 creates it)."""
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    path = tempfile.mkdtemp(prefix="fda-test-") if comm.rank == 0 else None
    path = comm.bcast(path, root=0)
    yield Path(path)
    comm.Barrier()
    if comm.rank == 0:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def mpi_ctx():
    """One fda context per test module (in-process MPI tests), its failure watcher stopped after."""
    import fda

    context = fda.init(seed=0, threads=1, abort_on_error=False)
    yield context
    context.world.stop_watching()


def run_fda(*args, n=2, timeout=240, cwd=None, env=None):
    """Run `mpiexec -n N python -m fda ...` and return the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, "-m", "fda", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=full_env)
