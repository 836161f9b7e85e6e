"""bench/compare.py's plan: grids expanded per task and seed, Synchronous first, families that need a
missing feature stop the grid with the reason (or are skipped), the quick preset merges over the grid."""
import sys
from pathlib import Path

import pytest
import yaml
from _helpers import load_bench_script

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare():
    return load_bench_script("compare")


SPEC = {
    "seeds": [0, 1, 2],
    "families": {
        "fedavg": {"strategy": "fedavg", "tau": "{tau}"},
        "fda-sketch": {"kind": "fda", "strategy": "fda", "monitor": "sketch", "theta": "{sketch_theta}"},
        "synchronous": {"strategy": "synchronous"},
        "future": {"strategy": "fda", "not_a_setting_yet": 1, "needs": "a later issue"},
    },
    "tasks": {"t": {"common": {"dataset": "synthetic", "model": "mlp", "max_steps": 5},
                    "grids": {"tau": [2, 8], "sketch_theta": 0.5}}},
    "quick": {"seeds": [0], "tasks": {"t": {"grids": {"tau": [4]}, "families": ["synchronous", "fedavg"]}}},
}


def test_grids_seeds_and_order(compare):
    jobs, skipped = compare.plan(SPEC, quick=False, skip_unavailable=True)
    assert skipped == {"future": skipped["future"]} and "a later issue" in skipped["future"]
    assert [j.config for j in jobs[:3]] == ["synchronous"] * 3  # the target depends on it
    assert {j.config for j in jobs} == {"synchronous", "fedavg-tau2", "fedavg-tau8", "fda-sketch-theta0.5"}
    assert len(jobs) == 4 * 3
    tau8 = [j for j in jobs if j.config == "fedavg-tau8"]
    assert [j.seed for j in tau8] == [0, 1, 2]
    assert tau8[1].settings == {"dataset": "synthetic", "model": "mlp", "max_steps": 5, "strategy": "fedavg",
                                "tau": 8, "seed": 1}
    assert tau8[1].path == ("t", "fedavg-tau8", "seed1")


def test_a_missing_feature_stops_the_grid_with_the_reason(compare):
    with pytest.raises(compare.PlanError, match=r"(?s)future: needs a later issue.*not_a_setting_yet.*--skip-unavailable"):
        compare.plan(SPEC, quick=False)


def test_a_bad_setting_is_an_error_even_when_skipping(compare):
    bad = yaml.safe_load(yaml.safe_dump(SPEC))
    bad["tasks"]["t"]["grids"]["tau"] = [2, 0]
    with pytest.raises(compare.PlanError, match="t/fedavg-tau0: invalid configuration: tau=0"):
        compare.plan(bad, quick=False, skip_unavailable=True)
    missing_grid = yaml.safe_load(yaml.safe_dump(SPEC))
    del missing_grid["tasks"]["t"]["grids"]["tau"]
    with pytest.raises(compare.PlanError, match="family fedavg needs the grid"):
        compare.plan(missing_grid, quick=False, skip_unavailable=True)


def test_the_quick_preset(compare):
    jobs, _ = compare.plan(SPEC, quick=True)
    assert [(j.config, j.seed) for j in jobs] == [("synchronous", 0), ("fedavg-tau4", 0)]


def test_the_committed_grid_plans(compare):
    spec = yaml.safe_load((REPO / "bench/configs/compare.yaml").read_text())
    jobs, _ = compare.plan(spec, quick=False, skip_unavailable=True)
    assert {j.task for j in jobs} == {"fmnist-iid", "fmnist-noniid60", "shakespeare"}
    assert {j.seed for j in jobs} == {0, 1, 2}
    quick, _ = compare.plan(spec, quick=True, skip_unavailable=True)
    assert {j.task for j in quick} == {"fmnist-iid", "shakespeare"} and len(quick) == 30


def test_the_committed_plateau_grid_plans(compare):
    """One configuration per family and task (the 3-epoch grid's best), 3 seeds, stopping at the target."""
    spec = yaml.safe_load((REPO / "bench/configs/compare-plateau.yaml").read_text())
    jobs, _ = compare.plan(spec, quick=False, skip_unavailable=True)
    assert spec["stop_at_target"] is True
    for task in ("fmnist-iid", "fmnist-noniid60"):
        configs = {j.config for j in jobs if j.task == task}
        assert len(configs) == len(spec["tasks"][task]["families"]) == 12
        assert all(j.settings["epochs"] == 14 for j in jobs if j.task == task)
    assert len(jobs) == 72 and {j.seed for j in jobs} == {0, 1, 2}


def test_the_committed_network_grid_plans_with_the_same_tasks_as_the_comparison(compare):
    """The network-hiding rows: compare.yaml's tasks (same settings, so the same target), each with
    the baselines at their best and FDA blocking, pipelined, adaptive and overlapped."""
    spec = yaml.safe_load((REPO / "bench/configs/compare-network.yaml").read_text())
    full = yaml.safe_load((REPO / "bench/configs/compare.yaml").read_text())
    jobs, _ = compare.plan(spec, quick=False)
    assert len(jobs) == 156 and {j.seed for j in jobs} == {0, 1, 2}
    for task in ("fmnist-iid", "fmnist-noniid60", "shakespeare"):
        ours = next(j for j in jobs if j.task == task and j.family == "synchronous")
        theirs = next(j for j in compare.plan(full, quick=False, skip_unavailable=True)[0]
                      if j.task == task and j.family == "synchronous")
        assert ours.settings == theirs.settings, task
        settings = [j.settings for j in jobs if j.task == task]
        assert any(s.get("sync_delay") and s["strategy"] == "fda" and s.get("check_every") == "auto"
                   and s.get("check_lag") for s in settings), task
        assert any(s.get("sync_delay") and s["strategy"] == "diloco" for s in settings), task


def test_a_completed_run_stays_done_when_fda_gains_a_setting(compare, tmp_path, monkeypatch):
    """Resuming a grid after an upgrade: settings absent from a stored config count if at their default."""
    import json
    import contextlib

    from fda.config import make_config

    settings = {"dataset": "synthetic", "model": "mlp", "strategy": "fedavg", "tau": 4, "seed": 1}
    stored = json.loads(make_config(settings).to_json())
    newest = "check_every"  # pretend this setting did not exist when the run was made (default 1)
    older = {k: v for k, v in stored.items() if k != newest}

    @contextlib.contextmanager
    def fake_log(config, status="completed"):
        class F:
            attrs = {"status": status, "config": json.dumps(config)}
        yield F()

    monkeypatch.setattr(compare, "open_log", lambda out: fake_log(older))
    assert compare.is_done(tmp_path, settings)
    assert not compare.is_done(tmp_path, {**settings, "tau": 8})
    assert not compare.is_done(tmp_path, {**settings, newest: 3})  # not the default: the old run differs
    monkeypatch.setattr(compare, "open_log", lambda out: fake_log(stored, status="running"))
    assert not compare.is_done(tmp_path, settings)


def test_longest_runs_first_after_synchronous(compare):
    spec = {**SPEC, "families": {k: v for k, v in SPEC["families"].items() if k != "future"},
            "tasks": {"short": {"seconds_per_epoch": 10, "common": {"dataset": "synthetic", "model": "mlp", "epochs": 1},
                                "grids": {"tau": [2], "sketch_theta": 0.5}},
                      "long": {"seconds_per_epoch": 30, "common": {"dataset": "synthetic", "model": "mlp", "epochs": 2},
                               "grids": {"tau": [2], "sketch_theta": 0.5}}}}
    jobs, _ = compare.plan(spec, quick=False)
    assert [j.family for j in jobs[:6]] == ["synchronous"] * 6
    assert [j.task for j in jobs[:3]] == ["long"] * 3 and jobs[0].cost == 60.0
    rest = jobs[6:]
    assert [j.cost for j in rest] == sorted((j.cost for j in rest), reverse=True)
    assert [j.task for j in rest] == ["long"] * 6 + ["short"] * 6


@pytest.mark.slow
def test_stop_at_target_takes_the_target_from_synchronous(compare, tmp_path):
    """A real two-seed grid: the other families' runs get Synchronous's target as target_acc and
    stop there; Synchronous runs its whole budget; the report is written."""
    import json

    from fda import report

    spec = {"seeds": [0, 1], "stop_at_target": True, "target_below_synchronous": 0.02,
            "families": {"synchronous": {"strategy": "synchronous"},
                         "fedavg": {"strategy": "fedavg", "tau": "{tau}"}},
            "tasks": {"t": {"common": {"dataset": "synthetic", "model": "mlp", "max_steps": 120, "eval_every": 10,
                                       "threads": 1}, "grids": {"tau": [4]}}}}
    cfg = tmp_path / "grid.yaml"
    cfg.write_text(yaml.safe_dump(spec))
    runs, results = tmp_path / "runs", tmp_path / "results"
    assert compare.main(["--config", str(cfg), "--runs-dir", str(runs), "--results", str(results), "--jobs", "2"]) == 0

    sync = [report.load_run(runs / "t" / "synchronous" / f"seed{s}") for s in (0, 1)]
    target = min(report.best_accuracy(r) for r in sync) - 0.02
    assert all(r.attrs["summary_steps"] == 120 for r in sync)
    for seed in (0, 1):
        run = runs / "t" / "fedavg-tau4" / f"seed{seed}"
        assert json.loads((run / "config.json").read_text())["target_acc"] == target
        log = report.load_run(run)
        assert log.evals["test_acc"][-1] >= target and (log.evals["test_acc"][:-1] < target).all()
    assert "Target accuracy" in (results / "grid.md").read_text()  # named after the grid file
    # a second call trains nothing: every run, with its target, is done
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.h5")}
    assert compare.main(["--config", str(cfg), "--runs-dir", str(runs), "--results", str(results)]) == 0
    assert before == {p: p.stat().st_mtime_ns for p in runs.rglob("metrics.h5")}


def test_the_plateau_verdict(compare):
    """Plateaued when the best accuracy gained at most the target's margin over the last quarter."""
    import numpy as np
    from types import SimpleNamespace

    steps = np.arange(1, 9) * 100.0
    flat = SimpleNamespace(evals={"step": steps, "test_acc": np.array([.5, .7, .8, .85, .88, .89, .893, .894])})
    rising = SimpleNamespace(evals={"step": steps, "test_acc": np.linspace(.5, .9, 8)})
    assert "**plateaued**" in compare.plateau([flat], target=0.889, below=0.005)
    assert "at 75%-75% of the budget" in compare.plateau([flat], target=0.889, below=0.005)
    assert "NOT plateaued" in compare.plateau([rising], target=0.895, below=0.005)


@pytest.mark.slow
def test_an_interrupted_run_continues_from_its_checkpoint(compare, tmp_path, monkeypatch):
    """A grid cut off mid-run (SIGTERM: checkpoint, status=interrupted, exit 75) resumes that run
    with `fda train --resume` instead of training it again from step 0."""
    import os
    import signal

    import h5py
    import numpy as np

    from conftest import rank_pids, start_fda, wait_for_file

    settings = {"dataset": "synthetic", "model": "mlp", "threads": 1, "max_steps": 3000, "eval_every": 500,
                "checkpoint_every": 100, "seed": 3}
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.yaml").write_text(yaml.safe_dump(settings))
    proc = start_fda("train", "--config", str(out / "run.yaml"), "--out", str(out), "--no-progress", n=1)
    wait_for_file(out / "checkpoints" / "LATEST", proc)
    for pid in rank_pids(proc):
        os.kill(pid, signal.SIGTERM)
    proc.communicate(timeout=120)
    assert proc.returncode == 75, "the run was not interrupted (it may have finished first)"
    assert not compare.is_done(out, settings)
    assert compare.can_resume(out, settings)
    assert not compare.can_resume(out, {**settings, "seed": 4})  # another run's settings start over

    commands = []
    real_run = compare.subprocess.run
    monkeypatch.setattr(compare.subprocess, "run", lambda cmd, **kw: commands.append(cmd) or real_run(cmd, **kw))
    rc, _ = compare.train_one(out, settings, Path(sys.executable).parent / "fda")
    assert rc == 0, (out / "train.log").read_text()[-2000:]
    assert "--resume" in commands[0]
    assert compare.is_done(out, settings)
    with h5py.File(out / "metrics.h5", "r") as f:
        steps = f["steps/step"][:]
    assert np.array_equal(steps, np.arange(steps[0], steps[0] + 3000))  # no step lost or repeated


def test_the_recorded_commit_ignores_the_reports_themselves(compare, tmp_path, monkeypatch):
    """Regenerating several reports in a row records a clean commit; a changed source file does not."""
    import subprocess

    def git(*args):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "r.md").write_text("old\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", "-A")
    git("commit", "-qm", "c")
    monkeypatch.setattr(compare, "ROOT", tmp_path)
    (tmp_path / "bench" / "results" / "r.md").write_text("regenerated\n")
    assert "uncommitted" not in compare.commit()
    (tmp_path / "code.py").write_text("x = 2\n")
    assert compare.commit().endswith("(with uncommitted changes)")
