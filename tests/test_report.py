"""`fda report` on logs of real 2-rank runs (synthetic data, MLP), checked against the HDF5 arrays."""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from fda import cli, report

REPO = Path(__file__).resolve().parents[1]
from conftest import MPIEXEC, child_env  # noqa: E402
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BASE = ["dataset=synthetic", "model=mlp", "max_steps=40", "eval_every=4", "threads=1", "lr=0.003"]
RUNS = {
    "sync": ["strategy=synchronous"],
    "fda": ["strategy=fda", "monitor=linear", "theta=0.05", "audit=true"],
    "failed": ["strategy=fedavg", "tau=2", "fail_at_step=3", "fail_rank=1"],
}


def _train(out: Path, settings: list[str]) -> subprocess.Popen:
    cmd = [str(MPIEXEC), "-n", "2", sys.executable, "-m", "fda", "train", "--out", str(out),
           "--no-progress", *BASE, *settings]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                            env=child_env())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-runs")
    procs = {name: _train(root / name, s) for name, s in RUNS.items()}  # all three at once
    results = {}
    try:
        for name, p in procs.items():
            out, _ = p.communicate(timeout=300)
            results[name] = (p.returncode, out)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
    assert results["sync"][0] == 0, results["sync"][1]
    assert results["fda"][0] == 0, results["fda"][1]
    assert results["failed"][0] == 1, results["failed"][1]
    return root


def h5_arrays(run_dir: Path):
    with h5py.File(run_dir / "metrics.h5", "r") as f:
        return {k: f["evals"][k][()] for k in f["evals"]}, {k: f["steps"][k][()] for k in f["steps"]}


def expected_at(run_dir: Path, target: float):
    """Steps and GB at the first evaluation reaching the target, straight from the h5 arrays."""
    evals, _ = h5_arrays(run_dir)
    for step, acc, nbytes in zip(evals["step"], evals["test_acc"], evals["comm_bytes"]):
        if acc >= target:
            return int(step), nbytes / 1e9
    return None, None


def read_csv(path: Path) -> dict:
    with open(path) as f:
        return {row["run"]: row for row in csv.DictReader(f)}


def is_png(path: Path) -> bool:
    import matplotlib.image as mpimg
    if path.read_bytes()[:8] != PNG_SIGNATURE:
        return False
    img = mpimg.imread(path)
    return img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50 and float(img.std()) > 0


def cli_report(*argv):
    return cli.main(["report", *map(str, argv)])


def test_table_matches_the_h5_arrays_and_plots_are_images(runs, tmp_path):
    sync_evals, _ = h5_arrays(runs / "sync")
    # a target that the synchronous run reaches mid-run, so "first reaching" is not trivially the last row
    target = float(np.sort(sync_evals["test_acc"])[len(sync_evals["test_acc"]) // 2])
    out = tmp_path / "rep"
    proc = subprocess.run([str(Path(sys.executable).parent / "fda"), "report", str(runs / "sync"),
                           str(runs / "fda" / "metrics.h5"), "--target-acc", str(target), "--out", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    assert f"target accuracy {target:.4f}" in proc.stdout
    assert "| sync |" in proc.stdout and "| fda |" in proc.stdout
    rows = read_csv(out / "report.csv")
    assert set(rows) == {"sync", "fda"}
    for name in ("sync", "fda"):
        steps, gb = expected_at(runs / name, target)
        row = rows[name]
        if steps is None:
            assert row["steps_to_target"] == "" and row["gb_to_target"] == ""
        else:
            assert int(row["steps_to_target"]) == steps
            assert float(row["gb_to_target"]) == pytest.approx(gb, rel=1e-12)
        evals, steps_arr = h5_arrays(runs / name)
        assert int(row["syncs"]) == int(steps_arr["synced"].sum())
        assert float(row["best_acc"]) == pytest.approx(evals["test_acc"].max())
        assert float(row["final_acc"]) == pytest.approx(evals["test_acc"][-1])
        assert float(row["compute_s"]) == pytest.approx(steps_arr["time_compute"].sum())
        assert float(row["comm_s"]) == pytest.approx(steps_arr["time_comm"].sum())
        assert int(row["K"]) == 2
    assert rows["sync"]["steps_to_target"] != ""  # the target came from this run's own accuracies
    assert int(rows["sync"]["syncs"]) == 40
    md = (out / "report.md").read_text()
    assert f"{target:.4f}" in md and "| sync |" in md
    for png in ("acc_vs_gb.png", "acc_vs_steps.png", "variance_fda.png"):
        assert is_png(out / png), png
    assert not (out / "variance_sync.png").exists()  # no variance bound without a monitor


def test_an_unreachable_target_is_reported_as_not_reached(runs, tmp_path):
    run = report.load_run(runs / "sync")
    assert report.steps_to_target(run, 1.01) is None and report.gb_to_target(run, 1.01) is None
    rows = report.comparison_table([run], 1.01)
    assert rows[0]["steps_to_target"] is None
    assert "not reached" in report.format_markdown(rows)


def test_default_target_is_synchronous_best_minus_half_a_point(runs, tmp_path, capsys):
    sync_evals, _ = h5_arrays(runs / "sync")
    expected = float(sync_evals["test_acc"].max()) - 0.005
    assert cli_report(runs / "sync", runs / "fda", "--out", tmp_path) == 0
    out = capsys.readouterr().out
    assert f"target accuracy {expected:.4f} (Synchronous's best" in out
    steps, gb = expected_at(runs / "sync", expected)
    assert int(read_csv(tmp_path / "report.csv")["sync"]["steps_to_target"]) == steps


def test_missing_file(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert cli_report(missing, "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "no such file" in err
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    assert cli_report(empty, "--out", tmp_path / "r") == 2
    assert "no metrics.h5" in capsys.readouterr().err


@pytest.mark.parametrize("status,writer_alive,says", [
    ("running", False, "the run crashed (status=running, but its writer"),
    ("interrupted", False, "interrupted by a signal at step 7"),
])
def test_unfinished_run_is_an_error(runs, tmp_path, capsys, status, writer_alive, says):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    shutil.copy(runs / "sync" / "metrics.h5", unfinished / "metrics.h5")
    with h5py.File(unfinished / "metrics.h5", "r+") as f:
        f.attrs["status"] = status
        f.attrs["stopped_at_step"] = 7
        if writer_alive:
            f.attrs["writer_pid"] = os.getpid()  # the original writer (an mpiexec run) has ended
    assert cli_report(runs / "sync", unfinished, "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert str(unfinished / "metrics.h5") in err and says in err
    assert not (tmp_path / "r" / "report.csv").exists()


def test_a_running_run_is_reported_up_to_its_last_flush_and_labelled(runs, tmp_path, capsys):
    """A live writer, caught mid-flush: the loss column holds a row more than the others."""
    live = tmp_path / "live"
    live.mkdir()
    shutil.copy(runs / "fda" / "metrics.h5", live / "metrics.h5")
    with h5py.File(live / "metrics.h5", "r+") as f:
        f.attrs["status"] = "running"
        f.attrs["writer_pid"] = os.getpid()
        f.attrs["writer_host"] = __import__("socket").gethostname()
        rows = f["steps/step"].shape[0]
        kept = rows // 2
        for name in f["steps"]:
            f["steps"][name].resize((kept + (1 if name == "loss" else 0),))
        evals_kept = int(np.searchsorted(f["evals/step"][()], kept, side="right"))
        for name in f["evals"]:
            f["evals"][name].resize((evals_kept,))
    assert cli_report(runs / "sync", live, "--out", tmp_path / "r") == 0
    captured = capsys.readouterr()
    label = f"live (running, step {kept})"
    assert "live is still running" in captured.err and label in captured.err
    row = read_csv(tmp_path / "r" / "report.csv")[label]
    assert int(row["steps"]) == kept
    assert label in (tmp_path / "r" / "report.md").read_text()
    assert "sync" in read_csv(tmp_path / "r" / "report.csv")  # a finished run keeps its plain name
    assert is_png(tmp_path / "r" / "acc_vs_steps.png") and is_png(tmp_path / "r" / "acc_vs_gb.png")


def test_failed_run_is_an_error_with_its_stored_error(runs, tmp_path, capsys):
    with h5py.File(runs / "failed" / "metrics.h5", "r") as f:
        assert f.attrs["status"] == "failed"
        stored = str(f.attrs["error"])
    assert "injected failure at step 3" in stored
    assert cli_report(runs / "failed", "--out", tmp_path / "r") == 2
    err = capsys.readouterr().err
    assert str(runs / "failed" / "metrics.h5") in err and "failed" in err and "injected failure at step 3" in err


def test_mixed_datasets_warn(runs, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(runs / "fda" / "metrics.h5", other / "metrics.h5")
    with h5py.File(other / "metrics.h5", "r+") as f:
        cfg = json.loads(f.attrs["config"])
        cfg["dataset"] = "mnist"
        f.attrs["config"] = json.dumps(cfg)
    assert cli_report(runs / "sync", other, "--out", tmp_path / "r") == 0
    err = capsys.readouterr().err
    assert "warning" in err and "different datasets" in err and "other=mnist" in err and "sync=synthetic" in err
    assert cli_report(runs / "sync", runs / "fda", "--out", tmp_path / "r2") == 0
    assert "different datasets" not in capsys.readouterr().err


def test_variance_plot_uses_the_audited_variance(runs):
    run = report.load_run(runs / "fda")
    assert np.isfinite(run.steps["var_exact"]).any()  # audit=true logged the exact variance
    bound, exact = run.steps["var_bound"], run.steps["var_exact"]
    both = np.isfinite(bound) & np.isfinite(exact)
    assert np.all(bound[both] >= exact[both] - 1e-6)  # H is an upper bound of Var


def test_network_columns_hold_the_modelled_time_to_target(runs, tmp_path, capsys):
    """CSV columns per network; the synchronous run's value against a hand computation from its log."""
    sync_evals, sync_steps = h5_arrays(runs / "sync")
    target = float(np.sort(sync_evals["test_acc"])[len(sync_evals["test_acc"]) // 2])
    out = tmp_path / "net"
    assert cli_report(runs / "sync", runs / "fda", "--target-acc", target, "--network", "wan",
                      "--network", "1Gbit/s,2ms", "--out", out) == 0
    with open(out / "report.csv") as f:
        header = next(csv.reader(f))
    assert header[-2:] == ["modelled_time_to_target_s_wan", "modelled_time_to_target_s_1Gbit_s_2ms"]
    rows = read_csv(out / "report.csv")
    steps, _ = expected_at(runs / "sync", target)
    with h5py.File(runs / "sync" / "metrics.h5", "r") as f:
        d = int(f.attrs["num_params"])
    # K = 2 workers (1 per rank), no checks: steps * median compute + the kernel time logged up to the
    # target + each blocking step exchange the log records and one sync of 4d bytes per step; both
    # over 8 bytes: MPICH's reduce-scatter + allgather, at P = 2 two latencies and the bytes once
    upto = sync_steps["step"] <= steps
    assert not sync_steps["exchange_lag"][upto].any()
    exchanged = sync_steps["exchange_bytes"][upto].astype(float)
    exchanges = float(np.sum((exchanged > 0) * (2 * 0.02 + exchanged / 12.5e6)))
    sync = 2 * 0.02 + 4 * d / 12.5e6
    monitor = float(np.sum(sync_steps["time_monitor"][upto]))
    expected = steps * float(np.median(sync_steps["time_compute"])) + monitor + exchanges + steps * sync
    assert float(rows["sync"]["modelled_time_to_target_s_wan"]) == pytest.approx(expected, rel=1e-9)
    assert float(rows["fda"]["modelled_time_to_target_s_1Gbit_s_2ms"]) > 0 or rows["fda"]["steps_to_target"] == ""
    md = (out / "report.md").read_text()
    assert "time to target, wan (modelled) s" in md and "wan: 100 Mbit/s, latency 20 ms" in md
    # which algorithm each message got: the synchronous run's syncs of 4d bytes
    assert f"sync {4 * d:,} B: reduce_scatter_allgather (2 rounds)" in md
    assert "time to target, wan (modelled) s" in capsys.readouterr().out


def test_a_bad_network_is_refused_before_anything_is_written(runs, tmp_path, capsys):
    assert cli_report(runs / "sync", "--network", "10Mb/s,1ms", "--out", tmp_path / "r") == 2
    assert "cannot read the bandwidth" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
