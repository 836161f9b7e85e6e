"""check_every=auto: the adaptive check schedule as pure logic (no MPI)."""
import math

import pytest

from fda.config import ConfigError, make_config
from fda.monitor import NaiveMonitor
from fda.strategies import FDA, make_strategy
from fda.strategies.check_schedule import AdaptiveChecks, EveryN, next_interval


def test_next_interval_by_hand():
    # 10 steps into the round H = Θ/4: quadratic growth reaches Θ after 10 * (2 - 1) = 10 more steps
    assert next_interval(0.25, 1.0, 10, margin=1.0, max_interval=100, last_interval=3) == 10
    assert next_interval(0.25, 1.0, 10, margin=0.5, max_interval=100, last_interval=3) == 5
    # H = Θ/100 after 4 steps: 4 * (10 - 1) = 36 steps to Θ, 0.5 of it is 18, capped at 12
    assert next_interval(0.01, 1.0, 4, margin=0.5, max_interval=100, last_interval=1) == 18
    assert next_interval(0.01, 1.0, 4, margin=0.5, max_interval=12, last_interval=1) == 12
    # close to Θ: never less than one step
    assert next_interval(0.99, 1.0, 3, margin=0.5, max_interval=100, last_interval=7) == 1
    assert next_interval(1.0, 1.0, 3, margin=0.5, max_interval=100, last_interval=7) == 1


def test_a_bound_at_or_below_zero_doubles_the_interval_up_to_the_cap():
    assert next_interval(0.0, 1.0, 5, margin=0.5, max_interval=100, last_interval=3) == 6
    assert next_interval(-0.2, 1.0, 5, margin=0.5, max_interval=100, last_interval=3) == 6
    assert next_interval(-0.2, 1.0, 5, margin=0.5, max_interval=4, last_interval=3) == 4


def test_a_round_checks_one_step_after_its_sync_then_spaces_the_checks():
    s = FDA(NaiveMonitor(), theta=1.0, checks=AdaptiveChecks(margin=0.5, max_interval=50))
    asked = [t for t in range(1, 4) if s.wants_check(t)]
    assert asked == [1]                           # in flight: no second check until its bound is known
    s.after_check(1, 3, 1e-4)                     # known at step 3 (check_lag 2): 0.5 * 1 * (100 - 1) = 49
    assert not s.wants_check(49) and s.wants_check(50)
    s.after_check(50, 50, 0.25)                   # 0.5 * 50 * (2 - 1) = 25
    assert not s.wants_check(74) and s.wants_check(75)
    s.after_check(75, 75, 2.0)
    assert s.decide(75, 2.0)
    s.after_sync(75, math.nan)
    assert s.wants_check(76)                      # the next round starts over


def test_a_late_bound_never_schedules_a_check_in_the_past():
    s = AdaptiveChecks(margin=0.5, max_interval=50)
    assert s.wants(1)
    s.checked(1, 30, 0.5, 1.0, round_start=0)     # interval 1, but the bound arrived at step 30
    assert not s.wants(30) and s.wants(31)


def test_a_stale_check_leaves_the_sync_schedule_alone():
    s = AdaptiveChecks(margin=0.5, max_interval=50)
    assert s.wants(1)
    s.synced(2)
    s.checked(1, 3, math.nan, 1.0, round_start=0)
    assert s.wants(3)


def test_the_schedule_survives_a_checkpoint():
    a = FDA(NaiveMonitor(), theta=1.0, checks=AdaptiveChecks(margin=0.5, max_interval=50))
    a.wants_check(1)
    a.after_check(1, 1, 1e-4)
    b = FDA(NaiveMonitor(), theta=1.0, checks=AdaptiveChecks(margin=0.5, max_interval=50))
    b.load_state_dict(a.state_dict())
    assert [t for t in range(2, 60) if a.wants_check(t)] == [t for t in range(2, 60) if b.wants_check(t)] == [50]


def test_every_n_is_the_fixed_schedule():
    s = EveryN(3)
    assert [t for t in range(1, 10) if s.wants(t)] == [3, 6, 9]
    assert [t for t in range(1, 10) if s.wants(t)] == [3, 6, 9]  # asking twice changes nothing


def test_config_check_every_auto():
    cfg = make_config({"strategy": "kamp", "check_every": "auto", "check_margin": 0.25, "check_max_interval": 9})
    s = make_strategy(cfg, num_params=10, steps_per_epoch=5)
    assert isinstance(s.checks, AdaptiveChecks) and (s.checks.margin, s.checks.max_interval) == (0.25, 9)
    assert "check_every=auto(margin=0.25, max=9)" in s.describe()
    assert make_config({"check_every": "AUTO"}).check_every == "auto"
    assert make_config({"check_every": "4"}).check_every == 4


@pytest.mark.parametrize("value", ["0", "-2", "2.5", "often", 1.5])
def test_config_refuses_a_bad_check_every(value):
    with pytest.raises(ConfigError, match="check_every"):
        make_config({"check_every": value})


def test_config_refuses_auto_for_a_strategy_without_checks():
    with pytest.raises(ConfigError, match="check_every=auto applies to strategy=fda or kamp"):
        make_config({"strategy": "fedavg", "check_every": "auto"})
    with pytest.raises(ConfigError, match="check_margin"):
        make_config({"check_every": "auto", "check_margin": 0})
