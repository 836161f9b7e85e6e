"""target_acc: a time-to-accuracy run stops at the first evaluation that reaches the target, on
every rank, with the same metrics as the full run up to there, and a resume has nothing to do."""
import numpy as np
import pytest

from conftest import read_log, run_fda

SETTINGS = ["dataset=synthetic", "model=mlp", "threads=1", "max_steps=240", "eval_every=20", "seed=5"]


def _train(*args, n=2):
    done = run_fda("train", "--no-progress", *args, n=n, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_a_run_stops_at_the_first_evaluation_reaching_target_acc(tmp_path):
    _train(*SETTINGS, "--out", tmp_path / "full")
    full = read_log(tmp_path / "full")
    acc, steps = full["evals"]["test_acc"], full["evals"]["step"]
    target = float(np.max(acc[:5]))  # reached at or before the 5th evaluation, long before the end
    first = int(np.argmax(acc >= target))
    assert steps[first] < 240

    stopped = tmp_path / "stopped"
    _train(*SETTINGS, f"target_acc={target!r}", "checkpoint_every=1000", "--out", stopped)
    log = read_log(stopped)
    assert log["attrs"]["status"] == "completed"
    assert log["attrs"]["summary_steps"] == steps[first]
    assert log["attrs"]["summary_reached_target_step"] == steps[first]
    assert np.array_equal(log["evals"]["test_acc"], acc[:first + 1])  # the same run, cut short
    assert len(log["steps"]["step"]) == steps[first]

    again = _train("--resume", stopped)  # a requeued job: the checkpoint says it has finished
    assert "already complete" in again.stdout
    assert len(read_log(stopped)["steps"]["step"]) == steps[first]


@pytest.mark.slow
def test_a_target_never_reached_runs_the_whole_budget(tmp_path):
    _train(*SETTINGS, "max_steps=60", "target_acc=1.0", "--out", tmp_path / "run", n=1)
    log = read_log(tmp_path / "run")
    assert log["attrs"]["summary_steps"] == 60
    assert "summary_reached_target_step" not in log["attrs"]


def test_target_acc_must_be_an_accuracy(tmp_path):
    bad = run_fda("train", "--no-progress", *SETTINGS, "target_acc=1.5", "--out", tmp_path / "bad", n=2,
                  timeout=120)
    assert bad.returncode == 2
    assert "target_acc" in bad.stderr


def test_cosine_schedule_goes_from_lr_to_zero_over_the_budget():
    from fda.config import make_config
    from fda.train import local_lr

    cfg = make_config({"lr": 0.01, "lr_schedule": "cosine"})
    lrs = [local_lr(cfg, step, 100) for step in range(1, 101)]
    assert lrs[0] == 0.01
    assert lrs[50] == pytest.approx(0.005)
    assert 0 < lrs[-1] < 1e-5
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert local_lr(make_config({"lr": 0.01}), 77, 100) == 0.01
