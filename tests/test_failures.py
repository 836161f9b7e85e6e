"""No hangs: a failure on any rank ends the whole `mpiexec` job with the log marked failed."""
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from fda.h5log import open_log

REPO = Path(__file__).resolve().parents[1]
from conftest import MPIEXEC, child_env  # noqa: E402
ENV = child_env()
TRAIN = [sys.executable, "-m", "fda", "train", "--no-progress", "dataset=synthetic", "model=mlp", "threads=1"]
# Once the failing rank has printed its error, the job must be gone within this many seconds
# (the failure path waits at most 10 s for rank 0 to record it); a hang turns into a test failure.
END_WITHIN_S = 30


def _run_until_failure(cmd: list, marker: str, start_timeout: float = 240.0):
    """Run cmd; after `marker` appears on stderr the job must end within END_WITHIN_S."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=ENV)
    lines, seen = [], threading.Event()

    def pump():
        for line in proc.stderr:
            lines.append(line)
            if marker in line:
                seen.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    out = []
    threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True).start()
    try:
        if not seen.wait(start_timeout):
            pytest.fail(f"no '{marker}' on stderr within {start_timeout} s:\n{''.join(lines)[-3000:]}")
        try:
            proc.wait(timeout=END_WITHIN_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job was still running {END_WITHIN_S} s after the failure (a hang)")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return proc.returncode, "".join(lines), "".join(out)


@pytest.mark.parametrize("ranks,fail_rank", [(4, 1), (2, 0)])
def test_injected_failure_ends_every_rank_and_marks_the_log(tmp_path, ranks, fail_rank):
    run = tmp_path / "run"
    cmd = [str(MPIEXEC), "-n", str(ranks), *TRAIN, "max_steps=50", "fail_at_step=3", f"fail_rank={fail_rank}",
           "--out", str(run)]
    marker = f"fda: error on rank {fail_rank}:"
    rc, err, _ = _run_until_failure(cmd, marker)
    assert rc != 0
    assert err.count(marker) == 1, err
    assert err.count("fda: error") == 1, err  # the message once, from the failing rank only
    assert "injected failure at step 3" in err
    # Open MPI SIGTERMs the surviving ranks after the abort: they must not promise a checkpoint
    assert "stopping after this step" not in err, err
    with open_log(run) as f:
        assert f.attrs["status"] == "failed"
        assert f.attrs["error"].startswith(f"rank {fail_rank}: InjectedFailure: injected failure at step 3")
        # the other ranks were stopped inside step 3's collective: rows 1 and 2 are all there is
        assert list(f["steps"]["step"][()]) == [1, 2]


def test_divergence_is_detected_on_every_rank(tmp_path):
    run = tmp_path / "run"
    p = subprocess.run([str(MPIEXEC), "-n", "2", *TRAIN, "max_steps=50", "lr=1e30", "--out", str(run)],
                       capture_output=True, text=True, timeout=240, cwd=REPO, env=ENV)
    assert p.returncode == 1, p.stderr
    assert p.stderr.count("fda: error") == 1, p.stderr
    assert "non-finite loss, drift or state" in p.stderr
    assert "Traceback" not in p.stderr
    with open_log(run) as f:
        assert f.attrs["status"] == "failed"
        assert "non-finite" in f.attrs["error"]
        steps = f["steps"]["step"][()]
        assert len(steps) < 50 and list(steps) == list(range(1, len(steps) + 1))


def test_uncaught_exception_in_a_library_script_ends_the_job(tmp_path):
    """The library path (fda.init's excepthook), with rank 0 blocked in a collective."""
    script = tmp_path / "boom.py"
    script.write_text(textwrap.dedent("""
        import time
        import fda
        ctx = fda.init(seed=0, threads=1)
        if ctx.rank == 1:
            time.sleep(0.5)
            raise RuntimeError("boom in user code")
        ctx.mpi_comm.Barrier()  # rank 0 waits here forever unless the failure path ends it
        print("rank 0 passed the barrier", flush=True)
    """))
    rc, err, out = _run_until_failure([str(MPIEXEC), "-n", "2", sys.executable, str(script)],
                                      "fda: error on rank 1:")
    assert rc != 0
    assert "RuntimeError: boom in user code" in err
    assert "passed the barrier" not in out


@pytest.mark.parametrize("strategy", [["strategy=fedavg", "tau=1000"],
                                      ["strategy=fda", "monitor=linear", "theta=1e9", "check_every=1000"]],
                         ids=["fedavg", "fda-between-checks"])
def test_a_quiet_step_that_diverges_on_one_rank_ends_every_rank(tmp_path, strategy):
    """A step without a sync or a check makes no collective: the rank that sees the NaN fails alone,
    and the failure path ends the others."""
    run = tmp_path / "run"
    cmd = [str(MPIEXEC), "-n", "2", *TRAIN, *strategy, "max_steps=5000", "fail_mode=nan",
           "fail_at_step=3", "fail_rank=1", "--out", str(run)]
    marker = "fda: error on rank 1:"
    rc, err, _ = _run_until_failure(cmd, marker)
    assert rc != 0
    assert "non-finite loss on rank 1 at step 3" in err, err
    assert "Traceback" not in err
    with open_log(run) as f:
        assert f.attrs["status"] == "failed"
        assert f.attrs["error"].startswith("rank 1: DivergedLocally: non-finite loss on rank 1 at step 3"), \
            f.attrs["error"]
        assert len(f["steps"]["step"][()]) < 5000
