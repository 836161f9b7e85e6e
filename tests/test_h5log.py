"""The log is a closed, complete HDF5 file at every moment: any reader opens it, during a run and after a crash."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from fda import h5log
from fda.h5log import EVAL_FIELDS, STEP_FIELDS, H5Log, run_status


def _row(step):
    return {**{k: 0 for k in STEP_FIELDS}, "step": step, "loss": float(step)}


def _eval(step):
    return {**{k: 0 for k in EVAL_FIELDS}, "step": step, "test_acc": step / 100}


def test_plain_h5py_reads_the_log_while_it_is_written(tmp_path):
    path = tmp_path / "metrics.h5"
    log = H5Log(path, {"config": "{}", "world_size": 2, "workers_per_rank": 1}, flush_every=3, max_flush_share=1.0)
    for step in range(1, 8):
        log.append_step(_row(step))
        with h5py.File(path, "r") as f:  # no SWMR, no libver: what pandas or HDFView would do
            assert f.attrs["status"] == "running"
            assert list(f["steps/step"][()]) == list(range(1, 3 * (step // 3) + 1))  # up to the last flush
            assert run_status(f) == "running"  # its writer (this process) is alive
    log.append_eval(_eval(7))  # an evaluation flushes
    with h5py.File(path, "r") as f:
        assert list(f["steps/step"][()]) == list(range(1, 8)) and list(f["evals/step"][()]) == [7]
    log.close("interrupted", extra_attrs={"stopped_at_step": 7})
    with h5py.File(path, "r") as f:
        assert f.attrs["status"] == "interrupted" and f.attrs["stopped_at_step"] == 7
    assert not path.with_name("metrics.h5.writing").exists()


def test_a_kill_during_a_flush_leaves_the_previous_version(tmp_path, monkeypatch):
    path = tmp_path / "metrics.h5"
    log = H5Log(path, {"config": "{}"}, flush_every=2, max_flush_share=1.0)
    log.append_step(_row(1))
    log.append_step(_row(2))

    def killed(*a, **k):  # the process dies after writing .writing, before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(h5log.os, "replace", killed)
    log.append_step(_row(3))
    with pytest.raises(KeyboardInterrupt):
        log.append_step(_row(4))  # the second buffered row triggers the flush
    monkeypatch.undo()
    assert path.with_name("metrics.h5.writing").exists()
    with h5py.File(path, "r") as f:
        assert list(f["steps/step"][()]) == [1, 2]
    # the resumed writer removes the stale file and keeps the rows up to the checkpoint
    H5Log(path, {"config": "{}"}, resume_step=1).close()
    assert not path.with_name("metrics.h5.writing").exists()
    with h5py.File(path, "r") as f:
        assert list(f["steps/step"][()]) == [1] and f.attrs["status"] == "completed"


def test_running_with_its_writer_gone_reads_crashed(tmp_path):
    path = tmp_path / "metrics.h5"
    log = H5Log(path, {"config": "{}"}, flush_every=1)
    log.append_step(_row(1))
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    with h5py.File(path, "r+") as f:  # as if written by that (now finished) process
        f.attrs["writer_pid"] = int(gone.stdout)
    assert run_status(path) == "crashed"
    # resuming repairs it: running again (this process), the crash noted in the history
    H5Log(path, {"config": "{}", "world_size": 1, "workers_per_rank": 4}, resume_step=1)
    with h5py.File(path, "r") as f:
        assert run_status(f) == "running" and f.attrs["writer_pid"] == os.getpid()
        history = json.loads(f.attrs["history"])
    assert history[-1]["event"] == "resumed" and history[-1]["previous_status"] == "crashed"
    assert history[-1]["step"] == 1 and history[-1]["workers_per_rank"] == 4


def test_resume_drops_rows_after_the_checkpoint_and_the_old_summary(tmp_path):
    path = tmp_path / "metrics.h5"
    log = H5Log(path, {"config": "{}"}, flush_every=100)
    for step in range(1, 11):
        log.append_step(_row(step))
        if step % 4 == 0:
            log.append_eval(_eval(step))
    log.close("interrupted", extra_attrs={"summary_steps": 10, "stopped_at_step": 10})
    H5Log(path, {"config": "{}"}, resume_step=6)
    with h5py.File(path, "r") as f:
        assert list(f["steps/step"][()]) == list(range(1, 7)) and list(f["evals/step"][()]) == [4]
        assert np.array_equal(f["steps/loss"][()], np.arange(1.0, 7.0))
        assert "summary_steps" not in f.attrs and f.attrs["status"] == "running"
        assert f.attrs["stopped_at_step"] == -1


def test_step_flushes_are_spaced_to_cost_at_most_a_small_share(tmp_path, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(h5log.time, "monotonic", lambda: clock[0])
    path = tmp_path / "metrics.h5"
    log = H5Log(path, {"config": "{}"}, flush_every=1, max_flush_share=0.5)
    real_publish = log._publish

    def publish_taking_one_second(*a, **k):
        real_publish(*a, **k)
        clock[0] += 1.0

    log._publish = publish_taking_one_second
    log.append_step(_row(1))  # flushes (took 1 s): the next step flush waits until 2 s after it started
    clock[0] += 0.5
    log.append_step(_row(2))
    with h5py.File(path, "r") as f:
        assert list(f["steps/step"][()]) == [1]
    clock[0] += 0.5
    log.append_step(_row(3))
    with h5py.File(path, "r") as f:
        assert list(f["steps/step"][()]) == [1, 2, 3]
    log.append_eval(_eval(3))  # evaluations always flush
    with h5py.File(path, "r") as f:
        assert list(f["evals/step"][()]) == [3]
