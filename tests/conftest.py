import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
# The launcher of every test that starts MPI jobs: FDA_MPIEXEC (`make test MPIEXEC=...` sets it), else the
# venv's (the mpich wheel's Hydra). Open MPI's mpirun needs no flag here: set OMPI_ALLOW_RUN_AS_ROOT(_CONFIRM)
# and OMPI_MCA_rmaps_base_oversubscribe=1 in the environment where needed (.ci/openmpi.sh does).
def _launcher(setting: str) -> Path:
    """FDA_MPIEXEC as given: a bare name is looked up on PATH, a relative path is from the repo root."""
    if not setting:
        return Path(sys.executable).parent / "mpiexec"
    if "/" not in setting:
        return Path(shutil.which(setting) or setting)
    return REPO / setting if not Path(setting).is_absolute() else Path(setting)


MPIEXEC = _launcher(os.environ.get("FDA_MPIEXEC", ""))
# what a launcher sets for its ranks; a test run inside a rank must not hand it to a child launcher
# (Open MPI's mpirun would join the parent's job), so children get child_env()
_LAUNCHER_VARS = ("PMI_", "PMIX_", "HYDRA_", "HYDI_", "MPI_LOCALRANKID", "MPI_LOCALNRANKS", "OMPI_COMM_WORLD_",
                  "OMPI_MCA_ess", "OMPI_MCA_orte", "OMPI_MCA_pmix", "OMPI_MCA_initial_wdir", "OMPI_MCA_shmem_",
                  "OMPI_FILE_LOCATION", "OMPI_UNIVERSE_SIZE", "OMPI_FIRST_RANKS", "OMPI_APP_CTX", "OMPI_NUM_APP_CTX",
                  "OMPI_ARGV", "OMPI_COMMAND", "OMPI_MCA_mpi_", "OMPI_MCA_ompi_", "OMPI_MCA_opal_")


def child_env(extra: dict | None = None) -> dict:
    """The environment for a process a test starts: this one without the launcher's variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_LAUNCHER_VARS)}
    return {**env, "PYTHONUNBUFFERED": "1", **(extra or {})}


def _inside_an_mpi_rank() -> bool:
    return any(v in os.environ for v in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"))

# Tests leave nothing in /tmp: this session's temporary files (pytest's tmp_path, shared_dir, and
# what child processes such as mpiexec write under $TMPDIR, also when a test SIGKILLs them) go to
# one private directory, removed when the session ends. FDA_KEEP_TEST_TMP=1 keeps it (it is printed).
_SESSION_TMP = tempfile.mkdtemp(prefix="fda-pytest-")
os.environ["TMPDIR"] = tempfile.tempdir = _SESSION_TMP


def _hwloc_topology_once() -> None:
    """MPICH's mpiexec (Hydra) writes the machine's topology to /tmp/hydra_hwloc_xmlfile_* (it ignores
    TMPDIR) and deletes it only when it ends normally: every job a test kills or aborts would leave
    one. Given HWLOC_XMLFILE, it uses that file instead: copy one job's file into the session
    directory and hand it to every job the tests start (not from inside an MPI rank). Any such file
    describes this machine: the newest, while the probe job (whose own file exists) runs."""
    if _inside_an_mpi_rank() or "HWLOC_XMLFILE" in os.environ:
        return
    saved = Path(_SESSION_TMP) / "hwloc-topology.xml"
    copy = ("import glob, os, shutil; "
            "shutil.copy(max(glob.glob('/tmp/hydra_hwloc_xmlfile_*'), key=os.path.getmtime), " + repr(str(saved)) + ")")
    try:
        subprocess.run([str(MPIEXEC), "-n", "1", sys.executable, "-c", copy], timeout=120, capture_output=True,
                       env=child_env())
    except (OSError, subprocess.SubprocessError):
        return
    if saved.is_file():
        os.environ["HWLOC_XMLFILE"] = str(saved)


_hwloc_topology_once()


def _ended_by_signal(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")  # e.g. `timeout` ends the run: pytest still unconfigures


signal.signal(signal.SIGTERM, _ended_by_signal)


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
    context.fda_comm.stop_watching()


def run_fda(*args, n=2, timeout=240, cwd=None, env=None):
    """Run `mpiexec -n N python -m fda ...` and return the CompletedProcess."""
    import subprocess

    full_env = child_env(env)
    cmd = [str(MPIEXEC), "-n", str(n), sys.executable, "-m", "fda", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or REPO, env=full_env)


# Timings differ between any two runs; every other logged value of a resumed run must be bit-identical.
TIMING = {"time_compute", "time_monitor", "time_comm", "wall_time"}


def fda_command(*args, n=2):
    return [str(MPIEXEC), "-n", str(n), sys.executable, "-m", "fda", *map(str, args)]


def start_fda(*args, n=2, env=None):
    """Start `mpiexec -n N python -m fda ...` in the background (stdout/stderr piped, bytes)."""
    return subprocess.Popen(fda_command(*args, n=n), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env=child_env(env), start_new_session=True)


def process_tree(root: int) -> list[int]:
    """root and all its descendants (Hydra's proxies and the ranks each call setsid, so neither the
    process group nor the session of mpiexec holds them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def rank_pids(proc) -> list[int]:
    """The pids of a started job's ranks (the python processes under mpiexec's proxies)."""
    pids = []
    for pid in process_tree(proc.pid)[1:]:
        try:
            if Path(f"/proc/{pid}/exe").resolve() == Path(sys.executable).resolve():
                pids.append(pid)
        except OSError:
            continue
    return pids


def kill_job(proc) -> None:
    """SIGKILL the whole job at once, like a node that loses power."""
    tree = process_tree(proc.pid)
    for pid in reversed(tree):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.communicate(timeout=60)
    for pid in tree[1:]:  # make sure no rank outlives the kill (it would keep writing the log)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            status = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
            if ") Z " in status:
                break
            time.sleep(0.05)


def wait_for_file(path: Path, proc, timeout=240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc={proc.returncode}) before {path} appeared:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            kill_job(proc)
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def read_log(run: Path) -> dict:
    """The log's attributes and tables, read with a plain h5py.File (no SWMR, no fda helper)."""
    import h5py

    with h5py.File(run / "metrics.h5", "r") as f:
        tables = {g: {k: f[g][k][()] for k in f[g]} for g in ("steps", "evals")}
        return {"attrs": dict(f.attrs), **tables}


def assert_consistent_rows(log: dict) -> None:
    for group in ("steps", "evals"):
        lengths = {k: len(v) for k, v in log[group].items()}
        assert len(set(lengths.values())) == 1, f"{group}: datasets of different lengths {lengths}"
    steps = log["steps"]["step"]
    assert np.array_equal(steps, np.arange(1, len(steps) + 1)), f"step rows not 1..n: {steps}"
    assert np.all(np.diff(log["evals"]["step"]) > 0), "duplicated or unordered eval rows"
