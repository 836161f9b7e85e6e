"""Graceful preemption: SIGTERM / SIGUSR1 at a random step -> checkpoint, status=interrupted, exit 75;
--resume then ends bit-identical to an uninterrupted run, with no step lost or repeated."""
import json
import os
import signal
import time

import h5py
import numpy as np
import pytest

from _helpers import seeded_random
from conftest import (TIMING, assert_consistent_rows, kill_job, rank_pids, read_log, run_fda, start_fda,
                      wait_for_file)
from fda import preemption
from fda.h5log import EVAL_FIELDS, STEP_FIELDS

STEPS = 300
# no checkpoint_every: the checkpoints the signals ask for are the only ones
SETTINGS = ["dataset=synthetic", "model=mlp", "threads=1", f"max_steps={STEPS}", "eval_every=25",
            "log_flush_every=1", "seed=5", "--no-progress"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: K=4 workers on 4 ranks x 1 (made once per module)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    res = run_fda("train", *SETTINGS, "--out", out, n=4)
    assert res.returncode == 0, res.stderr[-3000:]
    return read_log(out)


def _rows_logged(path) -> int:
    try:
        with h5py.File(path, "r") as f:  # a live reader of the running job's log
            return f["steps/step"].shape[0]
    except (OSError, KeyError):
        return 0


def _signal_at_step(proc, run, target: int, sig: int, to: str, rng) -> None:
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
        os.kill(rng.choice(rank_pids(proc)), sig)


def _interrupt(proc, run, target: int, sig: int, to: str, rng) -> int:
    """Signal the job after `target` steps; check the resumable stop; return the step it stopped at."""
    why = f"{signal.Signals(sig).name} to {to} after step {target}"
    try:
        _signal_at_step(proc, run, target, sig, to, rng)
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
@pytest.mark.parametrize("chain", [
    # K=4 throughout; the first job 4x1, resumed on 2 ranks (2 workers each), then on 1 rank (4 workers)
    [(4, 1, signal.SIGTERM, "one rank"), (2, 2, signal.SIGUSR1, "mpiexec"), (1, 4, None, None)],
    [(2, 2, signal.SIGTERM, "one rank"), (4, 1, signal.SIGUSR1, "mpiexec"), (2, 2, None, None)],
], ids=["4x1-TERM.2x2-USR1.1x4", "2x2-TERM.4x1-USR1.2x2"])
def test_signals_at_random_steps_then_resume_on_any_layout_is_bit_identical(tmp_path, reference, chain):
    """Stopped twice at random steps (the first may be 0: as soon as the log exists, before the first
    step), resumed each time on a layout of the same K=4 (workers_per_rank follows from the ranks),
    the run ends with the same bits as the uninterrupted 4x1 run: no step lost or repeated."""
    run = tmp_path / "run"
    rng = seeded_random()
    stopped = -1
    for i, (ranks, per_rank, sig, to) in enumerate(chain):
        args = (["train", *SETTINGS, f"workers_per_rank={per_rank}", "--out", run] if i == 0
                else ["train", "--resume", run, "--no-progress"])
        if sig is None:
            res = run_fda(*args, n=ranks)
            assert res.returncode == 0, res.stderr[-3000:]
            break
        target = rng.randint(stopped + 1, stopped + 1 + STEPS // 3)
        stopped = _interrupt(start_fda(*args, n=ranks), run, target, sig, to, rng)

    got = read_log(run)
    assert got["attrs"]["status"] == "completed" and got["attrs"]["workers_per_rank"] == chain[-1][1]
    assert_consistent_rows(got)  # and so no step repeated: the rows are 1..STEPS once each
    for group, fields in (("steps", STEP_FIELDS), ("evals", EVAL_FIELDS)):
        assert len(got[group]["step"]) == len(reference[group]["step"]), group
        # the bytes MPI moved depend on the number of ranks; everything else is bit-identical
        for name in set(fields) - TIMING - {"comm_bytes_mpi", "comm_bytes_eval"}:
            assert np.array_equal(got[group][name], reference[group][name], equal_nan=True), (group, name)
    assert reference["steps"]["synced"].sum() > 1, "no synchronisation: the test would prove little"
    history = json.loads(got["attrs"]["history"])
    assert [(h["world_size"], h["workers_per_rank"]) for h in history] == [c[:2] for c in chain[1:]]
    assert [h["previous_status"] for h in history] == ["interrupted", "interrupted"]


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["sync_delay=8", "sync_compression=int8"]], ids=["blocking", "overlapped"])
def test_a_schedule_stopped_by_a_signal_resumes_bit_identical(tmp_path, extra):
    """FedAvg makes no collective between its syncs: the stop agreement (fda.comm.stops) still stops
    every rank after the same step with a checkpoint, and the resumed run (on another layout) ends
    with the bits of the uninterrupted one. Overlapped: a sync is in flight at 9 steps out of 10."""
    settings = [*SETTINGS, "strategy=fedavg", "tau=10", *extra]
    reference, run = tmp_path / "reference", tmp_path / "run"
    res = run_fda("train", *settings, "--out", reference, n=2)
    assert res.returncode == 0, res.stderr[-3000:]
    rng = seeded_random()
    target = rng.randint(1, STEPS // 3)
    _interrupt(start_fda("train", *settings, "--out", run, n=2), run, target, signal.SIGTERM, "one rank", rng)
    res = run_fda("train", "--resume", run, "--no-progress", "workers_per_rank=2", n=1)
    assert res.returncode == 0, res.stderr[-3000:]
    got, want = read_log(run), read_log(reference)
    assert got["attrs"]["status"] == "completed"
    for group, fields in (("steps", STEP_FIELDS), ("evals", EVAL_FIELDS)):
        for name in set(fields) - TIMING - {"comm_bytes_mpi", "comm_bytes_eval"}:
            assert np.array_equal(got[group][name], want[group][name], equal_nan=True), (group, name)
    steps = want["steps"]
    talked = steps["exchange_bytes"] > 0
    assert np.array_equal(np.flatnonzero(talked) + 1, np.arange(25, STEPS + 1, 25)), \
        "a schedule exchanged its loss at a step without an evaluation"


SECOND_SIGNAL_PROBE = """
import importlib.util, sys, threading
spec = importlib.util.spec_from_file_location("preemption", sys.argv[1])
preemption = importlib.util.module_from_spec(spec)
spec.loader.exec_module(preemption)
preemption.install("probe")

def answer():  # the handshake: every line on stdin is answered with whether a stop was asked for
    for _ in sys.stdin:
        print("stop requested" if preemption.requested() else "running", flush=True)

threading.Thread(target=answer, daemon=True).start()
print("ready", flush=True)
lock = threading.Lock()
lock.acquire()
lock.acquire()  # blocked for good, as a rank in a collective whose peers never come
"""


def _ask(probe) -> str:
    """One handshake with the probe: '' when it has ended."""
    probe.stdin.write("?\n")
    probe.stdin.flush()
    return probe.stdout.readline().strip()


def test_a_second_signal_ends_the_process_at_once_even_when_blocked(tmp_path):
    import subprocess
    import sys

    probe = subprocess.Popen([sys.executable, "-c", SECOND_SIGNAL_PROBE, preemption.__file__],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert probe.stdout.readline().strip() == "ready"
        assert _ask(probe) == "running"
        probe.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        while (answer := _ask(probe)) == "running":  # until the signal has been handled
            assert time.monotonic() < deadline, "the first signal was not handled within 20 s"
        # it answered after handling the signal: still alive
        assert answer == "stop requested", "the first signal only asks for a stop at the next step"
        time.sleep(preemption.REPEAT_WINDOW_S + 0.5)  # past the window in which a repeat is the same request
        probe.send_signal(signal.SIGUSR1)
        _, err = probe.communicate(timeout=20)
    finally:
        if probe.poll() is None:
            probe.kill()
    assert "probe got SIGTERM: stopping after this step" in err
    assert "probe got another signal (SIGUSR1): exiting now" in err
    assert probe.returncode == 128 + signal.SIGUSR1


@pytest.mark.mpi
@pytest.mark.parametrize("settings, talks", [
    ({"strategy": "fedavg", "tau": 100_000}, False),  # no collective between syncs
    ({"strategy": "fda", "monitor": "linear", "theta": 1e9, "check_every": 100_000}, False),  # nor between checks
    ({"strategy": "fda", "monitor": "linear", "theta": 1e9}, True),  # a check at every step
], ids=["fedavg", "fda-rare-checks", "fda-every-step"])
def test_a_stop_reaches_every_rank_at_the_same_step_without_a_collective(mpi_ctx, settings, talks):
    """In-process: rank K-1's request reaches every rank through the stop agreement (fda.comm.stops),
    not through a collective, whether the steps make one (FDA checking every step) or not."""
    import torch

    from fda import Synchronizer

    model = torch.nn.Linear(4, 2)
    sync = Synchronizer(model, mpi_ctx, eval_every=100_000, **settings)
    collectives = []
    comm = mpi_ctx.fda_comm
    real = comm._collective

    def counting(what, *a, **k):
        collectives.append(what)
        return real(what, *a, **k)

    comm._collective = counting
    stopped_at, requested_at, error = None, 4, None
    try:
        for step in range(1, 50_000):
            if step == requested_at and mpi_ctx.rank == mpi_ctx.world_size - 1:
                preemption.request("test")
            time.sleep(0.001)  # a step's compute: the agreement takes a few of the watcher's polls
            sync.step(0.5)
            if sync.stop_requested:
                stopped_at = step
                break
    except Exception as e:  # reported after the gather: a rank that raised must not leave the others in it
        error = repr(e)
    finally:
        comm._collective = real
        preemption.uninstall()  # also forgets the request
    everyone = comm.allgather_object((stopped_at, collectives, error))
    sync.close()
    assert all(e is None for _, _, e in everyone), everyone
    stops = [at for at, _, _ in everyone]
    assert stops == [stops[0]] * mpi_ctx.world_size and stops[0] >= requested_at, stops
    expected = ["state Allreduce"] * stops[0] if talks else []
    assert all(calls == expected for _, calls, _ in everyone), everyone


def _stopped_run(ctx, out, monkeypatch, where: str, at_step: int = 0):
    """train.run in-process on every rank; rank 0 alone asks for a stop `where` (before the first
    step, during an evaluation or during a checkpoint write) at `at_step`."""
    from fda import checkpoint, train
    from fda.config import make_config

    # the ranks agree on the step while they run on: slow steps (the jitter aid) keep the end far off
    cfg = make_config({"dataset": "synthetic", "model": "mlp", "max_steps": 300, "eval_every": 5,
                       "checkpoint_every": 10, "threads": 1, "step_jitter_ms": 20})
    if ctx.rank == 0:
        if where == "before the first step":
            monkeypatch.setattr(preemption, "install", lambda label: preemption.request("test"))
        else:
            target = {"evaluation": train, "checkpoint": checkpoint}[where]
            name = {"evaluation": "evaluate", "checkpoint": "save"}[where]
            real = getattr(target, name)

            def signalled(*a, **k):
                if ctx.fda_comm.position.step == at_step:
                    preemption.request("test")
                return real(*a, **k)
            monkeypatch.setattr(target, name, signalled)
    return train.run(cfg, out, ctx=ctx, progress=False, overwrite=True)


@pytest.mark.mpi
@pytest.mark.parametrize("where,at_step,earliest", [
    ("before the first step", 0, 1), ("evaluation", 15, 16), ("checkpoint", 20, 21),
])
def test_a_signal_anywhere_ends_in_a_resumable_state(mpi_ctx, shared_dir, monkeypatch, where, at_step, earliest):
    """Every rank stops after the same step: the next one at the earliest (the step in flight, or
    its evaluation or checkpoint, finishes), or a later one the ranks reached while agreeing."""
    out = shared_dir / "run"
    summary = _stopped_run(mpi_ctx, out, monkeypatch, where, at_step)
    stopped = summary["steps"]
    assert summary.get("interrupted") and stopped >= earliest
    assert mpi_ctx.fda_comm.allgather_object(stopped) == [stopped] * mpi_ctx.world_size
    if mpi_ctx.rank == 0:
        log = read_log(out)
        assert log["attrs"]["status"] == "interrupted" and log["attrs"]["stopped_at_step"] == stopped
        assert int((out / "checkpoints" / "LATEST").read_text()) == stopped
        assert_consistent_rows(log)
        assert list(log["evals"]["step"]) == list(range(5, stopped + 1, 5))  # the evaluation finished
    assert not preemption.requested()  # train.run leaves no handler and no request behind
