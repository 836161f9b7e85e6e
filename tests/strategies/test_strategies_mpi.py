"""Each strategy's sync schedule in real 2-rank runs (synthetic data)."""
import math

import numpy as np
import pytest

import fda
from fda import train
from fda.config import make_config
from fda.h5log import open_log

pytestmark = pytest.mark.mpi
BASE = dict(dataset="synthetic", model="mlp", threads=1, lr=0.003, batch_size=32)


@pytest.fixture(scope="module")
def ctx(mpi_ctx):
    return mpi_ctx


def run(ctx, out, **settings):
    cfg = make_config({**BASE, **settings})
    train.run(cfg, out, ctx=ctx, progress=False, overwrite=True)
    if ctx.rank != 0:
        return None
    with open_log(out) as f:
        return {n: f["steps"][n][()] for n in f["steps"]}, dict(f.attrs)


def test_fedopt_syncs_every_local_epochs(ctx, shared_dir):
    got = run(ctx, shared_dir / "fedopt", strategy="fedopt", local_epochs=2, server_optimizer="adam",
              server_lr=0.01, optimizer="sgd", lr=0.01, epochs=6)
    if got is None:
        return
    steps, attrs = got
    spe = attrs["steps_per_epoch"]
    np.testing.assert_array_equal(np.flatnonzero(steps["synced"]) + 1, np.arange(2 * spe, 6 * spe + 1, 2 * spe))
    assert np.all(np.isnan(steps["var_bound"]))
    k, d = attrs["workers"], attrs["num_params"]
    assert steps["comm_bytes"][-1] == 3 * 2 * k * 4 * d  # no monitoring bytes, three syncs


def test_fda_opt_forced_rounds_and_theta_rule(ctx, shared_dir):
    got = run(ctx, shared_dir / "fdaopt", strategy="fda_opt", monitor="linear", max_epochs=2,
              server_optimizer="sgd", server_lr=1.0, epochs=8, audit=True)
    if got is None:
        return
    steps, attrs = got
    spe = attrs["steps_per_epoch"]
    sync_steps = np.flatnonzero(steps["synced"]) + 1
    assert sync_steps[0] == spe                         # the first round is one epoch
    assert np.all(sync_steps % spe == 0)                # checked once per epoch only
    assert np.all(np.diff(sync_steps) <= 2 * spe)       # forced after max_epochs
    checked = ~np.isnan(steps["var_bound"])
    np.testing.assert_array_equal(np.flatnonzero(checked) + 1, np.arange(spe, 8 * spe + 1, spe))
    # theta after each sync = (max_epochs/2) / E_r * Var_r, Var_r = the exact variance at the sync
    for prev, cur in zip(sync_steps[:-1], sync_steps[1:]):
        e_r = (cur - prev) / spe
        var_r = steps["var_exact"][cur - 1]
        theta_next = steps["theta"][cur]  if cur < len(steps["theta"]) else None
        if theta_next is not None:
            assert theta_next == pytest.approx((2 / 2) / e_r * var_r, rel=1e-3, abs=1e-9)


def test_kamp_syncs_only_when_a_worker_drifted_past_theta(ctx, shared_dir):
    got = run(ctx, shared_dir / "kamp", strategy="kamp", theta=0.05, max_steps=60, audit=True)
    if got is None:
        return
    steps, _ = got
    synced = steps["synced"] == 1
    assert synced.any() and not synced.all()
    assert np.all(steps["var_bound"][synced] > 0.05) and np.all(steps["var_bound"][~synced] <= 0.05)
    # max_k ||u_k||^2 >= mean_k ||u_k||^2 >= Var
    assert np.all(steps["var_bound"] >= steps["var_exact"] - 1e-9)


def test_sync_optimizer_state_average_and_reset_run(ctx, shared_dir):
    for policy in ("average", "reset"):
        got = run(ctx, shared_dir / policy, strategy="fedavg", tau=4, max_steps=12, sync_optimizer_state=policy)
        if got is not None:
            assert got[1]["status"] == "completed" and got[0]["synced"].sum() == 3
