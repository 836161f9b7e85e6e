"""K = ranks x workers_per_rank: the same K on 4x1, 2x2 and 1x4 gives the same run, bit for bit (CPU)."""
import numpy as np
import pytest

from conftest import TIMING, run_fda
from fda.h5log import open_log

SETTINGS = ["dataset=synthetic", "model=mlp", "max_steps=40", "eval_every=20", "threads=1",
            "strategy=fda", "monitor=sketch", "theta=0.05", "audit=true", "--no-progress"]


def steps_of(out):
    with open_log(out) as f:
        assert f.attrs["status"] == "completed"
        assert f.attrs["workers"] == 4
        return {n: f["steps"][n][()] for n in f["steps"]}, {n: f["evals"][n][()] for n in f["evals"]}


@pytest.mark.parametrize("extra", [[], ["sync_compression=int8", "server_optimizer=nesterov", "server_lr=0.7"],
                                   ["sync_delay=2"], ["sync_delay=3", "sync_compression=int8"]],
                         ids=["float32", "int8-nesterov", "overlapped", "overlapped-int8"])
def test_same_metrics_for_any_split_of_k_workers(tmp_path, extra):
    logs = {}
    for ranks, per_rank in ((4, 1), (2, 2), (1, 4)):
        out = tmp_path / f"{ranks}x{per_rank}"
        res = run_fda("train", *SETTINGS, *extra, f"workers_per_rank={per_rank}", "--out", out, n=ranks)
        assert res.returncode == 0, res.stderr[-2000:]
        logs[(ranks, per_rank)] = steps_of(out)
    ref_steps, ref_evals = logs[(4, 1)]
    assert 0 < ref_steps["synced"].sum() < 40
    for key, (steps, evals) in logs.items():
        # the same bits: sums over workers follow MPI's pairwise order over ranks (fda.flat.pairwise_sum_),
        # evaluation chunks do not depend on the ranks; only the MPI byte counts (P buffers) and timings differ
        for name in set(steps) - TIMING - {"comm_bytes_mpi"}:
            np.testing.assert_array_equal(steps[name], ref_steps[name], err_msg=f"{key} steps/{name}")
        for name in set(evals) - TIMING - {"comm_bytes_mpi", "comm_bytes_eval"}:
            np.testing.assert_array_equal(evals[name], ref_evals[name], err_msg=f"{key} evals/{name}")


def test_workers_per_rank_needs_enough_samples(tmp_path):
    res = run_fda("train", "dataset=synthetic", "model=mlp", "max_steps=2", "threads=1",
                  "workers_per_rank=5000", "--out", tmp_path / "x", n=1)
    assert res.returncode == 2
    assert "worker" in res.stderr.lower()
