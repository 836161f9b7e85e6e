"""Checkpoint / resume and the crash-safe log, through real `mpiexec` runs killed with SIGKILL."""
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fda.h5log import EVAL_FIELDS, STEP_FIELDS, run_status

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = Path(sys.executable).parent / "mpiexec"
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}
# Timings differ between any two runs; everything else must be bit-identical.
TIMING = {"time_compute", "time_monitor", "time_comm", "wall_time"}
SETTINGS = ["dataset=synthetic", "model=mlp", "threads=1", "max_steps=300", "checkpoint_every=40",
            "eval_every=25", "log_flush_every=10", "seed=3"]


def _cmd(*args, n=2):
    return [str(MPIEXEC), "-n", str(n), sys.executable, "-m", "fda", "train", "--no-progress", *args]


def _run(*args, n=2, timeout=300):
    return subprocess.run(_cmd(*args, n=n), capture_output=True, text=True, timeout=timeout, cwd=REPO, env=ENV)


def _start(*args, n=2):
    return subprocess.Popen(_cmd(*args, n=n), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            env=ENV, start_new_session=True)


def _process_tree(root: int) -> list[int]:
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


def _kill_group(proc) -> None:
    """SIGKILL the whole job at once, like a node that loses power."""
    tree = _process_tree(proc.pid)
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


def _wait_for(path: Path, proc, timeout=240.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the run ended (rc={proc.returncode}) before {path} appeared:\n{err[-3000:]}")
        if time.monotonic() > deadline:
            _kill_group(proc)
            pytest.fail(f"{path} did not appear within {timeout} s")
        time.sleep(0.01)


def _read(run: Path) -> dict:
    with h5py.File(run / "metrics.h5", "r") as f:  # a plain reader: no SWMR, no fda helper
        tables = {g: {k: f[g][k][()] for k in f[g]} for g in ("steps", "evals")}
        return {"attrs": dict(f.attrs), **tables}


def _assert_consistent_rows(log: dict) -> None:
    for group in ("steps", "evals"):
        lengths = {k: len(v) for k, v in log[group].items()}
        assert len(set(lengths.values())) == 1, f"{group}: datasets of different lengths {lengths}"
    steps = log["steps"]["step"]
    assert np.array_equal(steps, np.arange(1, len(steps) + 1)), f"step rows not 1..n: {steps}"
    assert np.all(np.diff(log["evals"]["step"]) > 0), "duplicated or unordered eval rows"


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    [],
    ["strategy=diloco", "tau=20"],  # the outer optimizer's momentum is part of the state
], ids=["fda", "diloco"])
def test_kill_and_resume_equals_uninterrupted_run(tmp_path, extra):
    a, b = tmp_path / "a", tmp_path / "b"
    settings = [*SETTINGS, *extra]
    done = _run(*settings, "--out", a)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = _start(*settings, "--out", b)
    _wait_for(b / "checkpoints" / "LATEST", proc)
    _kill_group(proc)
    assert proc.returncode != 0, "the run finished before it could be killed: make it longer"
    killed_at = int((b / "checkpoints" / "LATEST").read_text())
    assert 0 < killed_at < 300
    killed = _read(b)
    assert killed["attrs"]["status"] == "running"
    _assert_consistent_rows(killed)
    assert len(killed["steps"]["step"]) >= killed_at  # every row up to the checkpoint was flushed

    resumed = _run("--resume", b)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr

    la, lb = _read(a), _read(b)
    assert lb["attrs"]["status"] == "completed"
    _assert_consistent_rows(lb)
    assert np.array_equal(lb["steps"]["step"], np.arange(1, 301))
    for group, fields in (("steps", STEP_FIELDS), ("evals", EVAL_FIELDS)):
        assert len(la[group]["step"]) == len(lb[group]["step"]), group
        for name in fields:
            if name in TIMING:
                continue
            assert np.array_equal(la[group][name], lb[group][name], equal_nan=True), f"{group}/{name} differs"
    assert la["steps"]["synced"].sum() > 1, "no synchronisation happened: the test would prove little"
    for key in ("summary_steps", "summary_syncs", "summary_comm_gb", "summary_comm_bytes_mpi",
                "summary_final_test_acc"):
        assert la["attrs"][key] == lb["attrs"][key], key

    # the final checkpoints (written at the end of both runs) hold bit-identical models and optimizers
    for rank in (0, 1):
        ca = torch.load(a / "checkpoints" / "step_300" / f"rank_{rank}.pt", weights_only=False)
        cb = torch.load(b / "checkpoints" / "step_300" / f"rank_{rank}.pt", weights_only=False)
        for sa, sb in zip(ca["models"], cb["models"]):
            assert all(torch.equal(sa[k], sb[k]) for k in sa)
        for oa, ob in zip(ca["optimizers"], cb["optimizers"]):
            for pid, st in oa["state"].items():
                assert all(torch.equal(v, ob["state"][pid][k]) for k, v in st.items() if torch.is_tensor(v))
        assert ca["sync"]["mpi_bytes"] == cb["sync"]["mpi_bytes"]
        assert ca["loaders"] == cb["loaders"]

    # a requeued job whose run had finished: nothing to do, exit 0, the log untouched
    again = _run("--resume", b)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already complete" in again.stdout
    after = _read(b)
    assert after["attrs"]["status"] == "completed"
    assert np.array_equal(after["steps"]["loss"], lb["steps"]["loss"])


@pytest.mark.slow
def test_log_readable_after_sigkill_at_a_random_moment(tmp_path):
    rng = random.Random()
    for trial in range(2):
        run = tmp_path / f"k{trial}"
        proc = _start("dataset=synthetic", "model=mlp", "threads=1", "max_steps=100000", "log_flush_every=1",
                      "eval_every=7", "--out", run)
        _wait_for(run / "metrics.h5", proc)
        time.sleep(rng.uniform(0.5, 3.0))
        _kill_group(proc)
        log = _read(run)
        assert log["attrs"]["status"] == "running"
        assert run_status(run) == "crashed"  # running, and its writer is gone
        _assert_consistent_rows(log)
        n = len(log["steps"]["step"])
        assert np.all(np.isfinite(log["steps"]["loss"])), "a row holds unwritten (fill) values"
        assert np.all(log["evals"]["step"] <= n)
