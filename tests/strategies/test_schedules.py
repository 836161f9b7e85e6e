"""Sync schedules and server optimizers as pure logic (no MPI)."""
import math

import pytest
import torch

from fda.config import make_config
from fda.monitor import NaiveMonitor
from fda.strategies import FDA, FDAOpt, Periodic, ServerOptimizer, make_strategy


def test_periodic_every_tau():
    s = Periodic("fedavg", period=3)
    assert [s.decide(t, math.nan) for t in range(1, 10)] == [False, False, True] * 3


def test_fda_threshold_and_check_every():
    s = FDA(NaiveMonitor(), theta=1.0, check_every=2)
    assert [s.wants_check(t) for t in range(1, 5)] == [False, True, False, True]
    assert s.decide(2, 1.5) and not s.decide(2, 0.5) and not s.decide(1, math.nan)


def test_theta_zero_syncs_at_every_check_even_on_a_zero_bound():
    s = FDA(NaiveMonitor(), theta=0.0)
    assert s.decide(1, 0.0)


def test_fda_opt_first_round_one_epoch_then_theta_from_variance():
    server = ServerOptimizer("sgd", lr=1.0)
    s = FDAOpt(NaiveMonitor(), steps_per_epoch=10, max_epochs=4, server=server)
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


def hand_step(kind, w, g, t, st, lr, momentum=0.9):
    """One server step written out by hand; st holds the optimizer's running state."""
    if kind == "sgd":
        return w - lr * g
    if kind == "sgdm":
        st["v"] = g if t == 1 else momentum * st["v"] + g
        return w - lr * st["v"]
    if kind == "adam":
        st["m"] = 0.9 * st.get("m", 0) + 0.1 * g
        st["s"] = 0.99 * st.get("s", 0) + 0.01 * g * g
        mhat, shat = st["m"] / (1 - 0.9 ** t), st["s"] / (1 - 0.99 ** t)
        return w - lr * mhat / (shat.sqrt() + 1e-3)
    st["acc"] = st.get("acc", 0) + g * g  # adagrad
    return w - lr * g / (st["acc"].sqrt() + 1e-3)


@pytest.mark.parametrize("kind", ["sgd", "sgdm", "adam", "adagrad"])
def test_server_optimizer_matches_hand_computation(kind):
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(50, generator=gen, dtype=torch.float64).float()
    opt, state, hand = ServerOptimizer(kind, lr=0.3, momentum=0.9), {}, w.clone()
    for t in range(1, 4):
        noise = torch.randn(50, generator=gen) * 0.1
        mean = w + noise                      # the workers' average after a round
        hand = hand_step(kind, w, w - mean, t, state, lr=0.3)
        w = opt.step(w.clone(), mean.clone())
        torch.testing.assert_close(w, hand, rtol=1e-5, atol=1e-6)
        assert not torch.allclose(w, mean)  # not plain averaging


def test_server_sgd_lr_one_is_plain_averaging():
    w0, mean = torch.randn(10), torch.randn(10)
    torch.testing.assert_close(ServerOptimizer("sgd", lr=1.0).step(w0, mean.clone()), mean)


def test_server_optimizer_state_round_trip():
    a = ServerOptimizer("adam", lr=0.1)
    w = a.step(torch.ones(4), torch.zeros(4))
    b = ServerOptimizer("adam", lr=0.1)
    b.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.step(w.clone(), w * 0.5), b.step(w.clone(), w * 0.5))
