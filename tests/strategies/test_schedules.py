"""Sync schedules as pure logic (no MPI)."""
import math

import pytest
import torch

from fda.config import make_config
from fda.monitor import NaiveMonitor
from fda.strategies import FDA, FDAOpt, Periodic, make_strategy


def test_periodic_every_tau():
    s = Periodic("fedavg", period=3)
    assert [s.decide(t, math.nan) for t in range(1, 10)] == [False, False, True] * 3


def test_the_fewest_steps_between_two_syncs():
    """What an overlapped sync (sync_delay) must land within: a schedule's period, FDA-Opt's epoch."""
    assert Periodic("fedavg", period=7).min_sync_interval == 7
    assert FDAOpt(NaiveMonitor(), steps_per_epoch=10, max_epochs=4).min_sync_interval == 10
    assert FDA(NaiveMonitor(), theta=1.0, check_every=5).min_sync_interval is None  # its first check after a landing decides


def test_fda_threshold_and_check_every():
    s = FDA(NaiveMonitor(), theta=1.0, check_every=2)
    assert [s.wants_check(t) for t in range(1, 5)] == [False, True, False, True]
    assert s.decide(2, 1.5) and not s.decide(2, 0.5) and not s.decide(1, math.nan)


def test_theta_zero_syncs_at_every_check_even_on_a_zero_bound():
    s = FDA(NaiveMonitor(), theta=0.0)
    assert s.decide(1, 0.0)


def test_fda_opt_first_round_one_epoch_then_theta_from_variance():
    s = FDAOpt(NaiveMonitor(), steps_per_epoch=10, max_epochs=4)
    assert [s.wants_check(t) for t in (5, 10, 20)] == [False, True, True]
    assert s.decide(10, 0.0)                       # first round: theta = 0 -> sync after one epoch
    s.after_sync(10, var_exact=3.0)                # round of 1 epoch, Var 3
    assert s.theta == pytest.approx((4 / 2) / 1 * 3.0)
    assert not s.decide(20, 5.0) and s.decide(20, 6.5)
    s.after_sync(30, var_exact=1.0)                # round of 2 epochs
    assert s.theta == pytest.approx((4 / 2) / 2 * 1.0)
    assert s.decide(70, 0.0)                       # forced after max_epochs = 4 epochs
    assert not s.decide(60, 0.5)


def test_make_strategy_theta_auto_rule():
    cfg = make_config({"strategy": "fda", "theta": "auto", "theta_profile": "hpc"})
    s = make_strategy(cfg, num_params=61_706, steps_per_epoch=100)
    assert s.theta == pytest.approx(2.7e-5 * 61_706)


def test_fedopt_period_is_local_epochs():
    cfg = make_config({"strategy": "fedopt", "local_epochs": 3})
    assert make_strategy(cfg, num_params=10, steps_per_epoch=7).period == 21
    with pytest.raises(ValueError, match="steps per epoch"):
        make_strategy(cfg, num_params=10, steps_per_epoch=None)
