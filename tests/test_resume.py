"""Checkpoint / resume and the crash-safe log, through real `mpiexec` runs killed with SIGKILL."""
import time

import numpy as np
import pytest
import torch

from _helpers import seeded_random
from conftest import TIMING, assert_consistent_rows, kill_job, read_log, run_fda, start_fda, wait_for_file
from fda.h5log import EVAL_FIELDS, STEP_FIELDS, run_status

SETTINGS = ["dataset=synthetic", "model=mlp", "threads=1", "max_steps=300", "checkpoint_every=40",
            "eval_every=25", "log_flush_every=10", "seed=3"]


def _run(*args, n=2, timeout=300):
    return run_fda("train", "--no-progress", *args, n=n, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("extra", [
    [],
    ["strategy=diloco", "tau=20", "lr_schedule=cosine"],  # outer momentum in the state; lr from the step
    ["sync_compression=int8", "server_optimizer=nesterov", "server_lr=0.7"],  # + the residuals
    ["check_lag=3", "theta=0.5"],  # exchanges in flight at every checkpoint
    ["check_every=auto", "check_lag=1", "theta=0.5"],  # the adaptive schedule's state
    # a sync in flight at every checkpoint (they fall at multiples of 40), its fields sent a step later
    ["strategy=fedavg", "tau=8", "sync_delay=3", "sync_compression=int8", "server_optimizer=nesterov",
     "server_lr=0.7"],
], ids=["fda", "diloco", "int8-fda-nesterov", "fda-check_lag3", "fda-check_auto", "fedavg-sync_delay3"])
def test_kill_and_resume_equals_uninterrupted_run(tmp_path, extra):
    a, b = tmp_path / "a", tmp_path / "b"
    settings = [*SETTINGS, *extra]
    done = _run(*settings, "--out", a)
    assert done.returncode == 0, done.stderr[-3000:]

    proc = start_fda("train", "--no-progress", *settings, "--out", b)
    wait_for_file(b / "checkpoints" / "LATEST", proc)
    kill_job(proc)
    assert proc.returncode != 0, "the run finished before it could be killed: make it longer"
    killed_at = int((b / "checkpoints" / "LATEST").read_text())
    assert 0 < killed_at < 300
    killed = read_log(b)
    assert killed["attrs"]["status"] == "running"
    assert_consistent_rows(killed)
    assert len(killed["steps"]["step"]) >= killed_at  # every row up to the checkpoint was flushed

    resumed = _run("--resume", b)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Traceback" not in resumed.stderr

    la, lb = read_log(a), read_log(b)
    assert lb["attrs"]["status"] == "completed"
    assert_consistent_rows(lb)
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
    final_a, final_b = a / "checkpoints" / "step_300", b / "checkpoints" / "step_300"
    for worker in (0, 1):
        ca = torch.load(final_a / f"worker_{worker}.pt", weights_only=False)
        cb = torch.load(final_b / f"worker_{worker}.pt", weights_only=False)
        assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
        for pid, st in ca["optimizer"]["state"].items():
            assert all(torch.equal(v, cb["optimizer"]["state"][pid][k]) for k, v in st.items() if torch.is_tensor(v))
        assert ca["loader"] == cb["loader"]
        assert ca["sync"].keys() == cb["sync"].keys()  # the compression residual, when there is one
        assert all(torch.equal(ca["sync"][k], cb["sync"][k]) for k in ca["sync"])
    sa, sb = (torch.load(d / "sync.pt", weights_only=False) for d in (final_a, final_b))
    assert sa["mpi_bytes"] == sb["mpi_bytes"] and torch.equal(sa["ref"], sb["ref"])
    assert (sa["outer"] is None) == (sb["outer"] is None)

    # a requeued job whose run had finished: nothing to do, exit 0, the log untouched
    again = _run("--resume", b)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "already complete" in again.stdout
    after = read_log(b)
    assert after["attrs"]["status"] == "completed"
    assert np.array_equal(after["steps"]["loss"], lb["steps"]["loss"], equal_nan=True)


@pytest.mark.slow
def test_log_readable_after_sigkill_at_a_random_moment(tmp_path):
    rng = seeded_random()
    for trial in range(2):
        run = tmp_path / f"k{trial}"
        proc = start_fda("train", "--no-progress", "dataset=synthetic", "model=mlp", "threads=1", "max_steps=100000", "log_flush_every=1",
                      "eval_every=7", "--out", run)
        wait_for_file(run / "metrics.h5", proc)
        time.sleep(rng.uniform(0.5, 3.0))
        kill_job(proc)
        log = read_log(run)
        assert log["attrs"]["status"] == "running"
        assert run_status(run) == "crashed"  # running, and its writer is gone
        assert_consistent_rows(log)
        n = len(log["steps"]["step"])
        assert np.all(np.isfinite(log["steps"]["loss"])), "a row holds unwritten (fill) values"
        assert np.all(log["evals"]["step"] <= n)
