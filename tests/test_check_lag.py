"""Pipelined checks (check_lag) through real `mpiexec` runs: decisions the same on every layout,
taken check_lag steps after the state was measured, never on a state a sync has made stale."""
import numpy as np
import pytest

from conftest import TIMING, read_log, run_fda
from fda.config import ConfigError, make_config
from fda.h5log import STEP_FIELDS

SETTINGS = ["dataset=synthetic", "model=mlp", "threads=1", "max_steps=120", "eval_every=40", "seed=7",
            "theta=0.5", "--no-progress"]


def _train(out, *extra, n=2):
    res = run_fda("train", *SETTINGS, *extra, "--out", out, n=n, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return read_log(out)


@pytest.mark.slow
def test_pipelined_decisions_are_the_same_on_every_layout_and_lag_behind_the_state(tmp_path):
    lag = 2
    two_ranks = _train(tmp_path / "2x1", f"check_lag={lag}", "workers_per_rank=1", n=2)
    one_rank = _train(tmp_path / "1x2", f"check_lag={lag}", "workers_per_rank=2", n=1)
    for name in set(STEP_FIELDS) - TIMING - {"comm_bytes_mpi"}:
        assert np.array_equal(two_ranks["steps"][name], one_rank["steps"][name], equal_nan=True), name

    steps = two_ranks["steps"]
    assert steps["synced"].sum() > 1, "no sync: the test would prove little"
    assert np.all(steps["exchange_lag"] == lag) and np.all(steps["exchange_bytes"] > 0)
    # the first decisions fall at step lag + 1: no bound before
    assert np.all(np.isnan(steps["var_bound"][:lag]))
    # a check measured before a sync (in flight when it happened) never decides
    synced_at = np.flatnonzero(steps["synced"])
    for i in synced_at:
        after = steps["var_bound"][i + 1:i + 1 + lag]
        assert np.all(np.isnan(after)), f"a stale state decided after the sync of step {i + 1}"
    assert two_ranks["attrs"]["summary_exchanges_waited"] == 120 - lag  # the last lag ones are discarded at the end


def test_check_lag_is_refused_where_the_decision_is_not_the_state_alone():
    with pytest.raises(ConfigError, match="check_lag applies to strategy=fda or kamp only"):
        make_config(overrides=["strategy=fedavg", "check_lag=2"])
    assert make_config(overrides=["strategy=kamp", "check_lag=2"]).check_lag == 2


@pytest.mark.slow
def test_adaptive_checks_are_the_same_on_every_layout_and_fewer(tmp_path):
    settings = ["check_every=auto", "check_max_interval=8", "check_lag=1"]
    two_ranks = _train(tmp_path / "2x1", *settings, "workers_per_rank=1", n=2)
    one_rank = _train(tmp_path / "1x2", *settings, "workers_per_rank=2", n=1)
    for name in set(STEP_FIELDS) - TIMING - {"comm_bytes_mpi"}:
        assert np.array_equal(two_ranks["steps"][name], one_rank["steps"][name], equal_nan=True), name

    steps = two_ranks["steps"]
    checked_at = np.flatnonzero(steps["exchange_bytes"] > 4 * 8) + 1  # a state beyond the 4-float head
    assert 1 < steps["synced"].sum() and len(checked_at) < 120 / 2, "the schedule did not space the checks"
    assert np.all(np.diff(checked_at) <= 8 + 1)  # at most check_max_interval apart (+1: the lag's wait)
    for i in np.flatnonzero(steps["synced"]):  # a round's first check one step after its sync
        if i + 2 <= 120:
            assert steps["exchange_bytes"][i + 1] > 4 * 8, f"no check right after the sync of step {i + 1}"


def test_check_every_auto_is_refused_where_nothing_is_checked():
    with pytest.raises(ConfigError, match="check_every=auto applies to strategy=fda or kamp only"):
        make_config(overrides=["strategy=synchronous", "check_every=auto"])
