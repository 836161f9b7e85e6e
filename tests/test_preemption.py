"""Graceful preemption: SIGTERM / SIGUSR1 at a random step -> checkpoint, status=interrupted, exit 75;
--resume then ends bit-identical to an uninterrupted run, with no step lost or repeated."""
import os
import random
import signal
import time

import h5py
import numpy as np
import pytest

from conftest import (TIMING, assert_consistent_rows, kill_job, rank_pids, read_log, run_fda, start_fda,
                      wait_for_file)
from fda import preemption
from fda.h5log import EVAL_FIELDS, STEP_FIELDS

STEPS = 500
# no checkpoint_every: the checkpoint the signal asks for is the only one
SETTINGS = ["dataset=synthetic", "model=mlp", "threads=1", f"max_steps={STEPS}", "eval_every=25",
            "log_flush_every=1", "seed=5", "--no-progress"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, by rank count (made once per module)."""
    logs = {}

    def get(n):
        if n not in logs:
            out = tmp_path_factory.mktemp(f"reference{n}")
            res = run_fda("train", *SETTINGS, "--out", out / "run", n=n)
            assert res.returncode == 0, res.stderr[-3000:]
            logs[n] = read_log(out / "run")
        return logs[n]
    return get


def _rows_logged(path) -> int:
    try:
        with h5py.File(path, "r") as f:  # a live reader of the running job's log
            return f["steps/step"].shape[0]
    except (OSError, KeyError):
        return 0


def _signal_at_step(proc, run, target: int, sig: int, to: str) -> None:
    """Send `sig` once the log shows `target` steps, to one random rank or to mpiexec (which forwards it)."""
    wait_for_file(run / "metrics.h5", proc)
    deadline = time.monotonic() + 240
    while _rows_logged(run / "metrics.h5") < target:
        assert proc.poll() is None, f"the run ended (rc={proc.returncode}) before step {target}"
        assert time.monotonic() < deadline, f"step {target} not reached in time"
        time.sleep(0.02)
    if to == "mpiexec":
        os.kill(proc.pid, sig)
    else:
        os.kill(random.choice(rank_pids(proc)), sig)


def _interrupt(proc, run, target: int, sig: int, to: str) -> int:
    """Signal the job after `target` steps; check the resumable stop; return the step it stopped at."""
    why = f"{signal.Signals(sig).name} to {to} after step {target}"
    try:
        _signal_at_step(proc, run, target, sig, to)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            kill_job(proc)
    err = err.decode()
    assert proc.returncode == preemption.RESUMABLE_EXIT, f"{why}: rc {proc.returncode}\n{err[-3000:]}"
    assert f"got {signal.Signals(sig).name}: stopping after this step" in err, why
    assert "continue with: fda train --resume" in err and "Traceback" not in err, why
    log = read_log(run)
    stopped = int(log["attrs"]["stopped_at_step"])
    assert log["attrs"]["status"] == "interrupted", why
    assert target <= stopped < STEPS, why
    assert_consistent_rows(log)
    # nothing lost: the checkpoint is of the last step the job made and logged
    assert int((run / "checkpoints" / "LATEST").read_text()) == stopped == len(log["steps"]["step"]), why
    return stopped


@pytest.mark.slow
@pytest.mark.parametrize("ranks,first,second", [
    (2, (signal.SIGTERM, "one rank"), (signal.SIGUSR1, "mpiexec")),
    (4, (signal.SIGUSR1, "one rank"), (signal.SIGTERM, "mpiexec")),
])
def test_signals_at_random_steps_then_resume_is_bit_identical(tmp_path, reference, ranks, first, second):
    """Two interruptions in one run: the first at a random step (0: as soon as the log exists, before
    the first step), the second at a random later step of the resumed job; then it runs to the end."""
    run = tmp_path / "run"
    target = random.randint(0, STEPS // 3)
    stopped = _interrupt(start_fda("train", *SETTINGS, "--out", run, n=ranks), run, target, *first)
    target = random.randint(stopped + 1, stopped + STEPS // 3)
    stopped = _interrupt(start_fda("train", "--resume", run, "--no-progress", n=ranks), run, target, *second)

    resumed = run_fda("train", "--resume", run, "--no-progress", n=ranks)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ref, got = reference(ranks), read_log(run)
    assert got["attrs"]["status"] == "completed"
    assert_consistent_rows(got)  # and so no step repeated: the rows are 1..STEPS once each
    for group, fields in (("steps", STEP_FIELDS), ("evals", EVAL_FIELDS)):
        assert len(got[group]["step"]) == len(ref[group]["step"]), group
        for name in set(fields) - TIMING:
            assert np.array_equal(got[group][name], ref[group][name], equal_nan=True), (group, name)
    assert ref["steps"]["synced"].sum() > 1, "no synchronisation: the test would prove little"


@pytest.mark.slow
def test_a_second_signal_ends_the_job_at_once(tmp_path):
    run = tmp_path / "run"
    proc = start_fda("train", "dataset=synthetic", "model=mlp", "threads=1", "max_steps=100000", "log_flush_every=1",
                     "--no-progress", "--out", run, n=2)
    try:
        _signal_at_step(proc, run, 5, signal.SIGTERM, "mpiexec")
        time.sleep(0.05)
        os.kill(proc.pid, signal.SIGTERM)
        t = time.monotonic()
        _, err = proc.communicate(timeout=60)
        assert time.monotonic() - t < 20
    finally:
        if proc.poll() is None:
            kill_job(proc)
    assert proc.returncode not in (0, preemption.RESUMABLE_EXIT), err.decode()[-2000:]
    assert "a second signal (SIGTERM): exiting now" in err.decode()


@pytest.mark.mpi
def test_the_flag_of_one_rank_stops_every_rank_at_the_same_step(mpi_ctx):
    """In-process: rank 1's request rides in the step's Allreduce; no other collective."""
    import torch

    from fda import Synchronizer

    model = torch.nn.Linear(4, 2)
    sync = Synchronizer(model, mpi_ctx, strategy="fedavg", tau=1000)
    collectives = []
    real = mpi_ctx.world.allreduce_to_host

    def counting(*a, **k):
        collectives.append(k.get("kind", a[2] if len(a) > 2 else ""))
        return real(*a, **k)

    mpi_ctx.world.allreduce_to_host = counting
    try:
        stopped_at = None
        for step in range(1, 8):
            if step == 4 and mpi_ctx.rank == mpi_ctx.world_size - 1:
                preemption.request("test")
            sync.step(0.5)
            if sync.stop_requested:
                stopped_at = step
                break
    finally:
        mpi_ctx.world.allreduce_to_host = real
        preemption.uninstall()  # also forgets the request
    assert stopped_at == 4
    assert mpi_ctx.world.allgather_object(stopped_at) == [4] * mpi_ctx.world_size
    assert len(collectives) == 4  # one state Allreduce per step, the flag included
