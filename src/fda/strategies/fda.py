from __future__ import annotations

import math

from fda.monitor import Monitor
from fda.strategies.base import Strategy
from fda.strategies.check_schedule import AdaptiveChecks, EveryN


class FDA(Strategy):
    """Sync iff H(mean state) > theta, checked every `check_every` steps (docs/algorithm.md, "The training step")
    or on an adaptive schedule (`checks`: fda.strategies.check_schedule.AdaptiveChecks).

    With the per-worker monitor this is Kamp et al.'s rule (max_k ||u_k||^2 > theta).
    theta = 0 syncs at every check: the Synchronous baseline when check_every = 1.
    """

    def __init__(self, monitor: Monitor, theta: float, check_every: int = 1, name: str = "fda",
                 theta_rule: str = "given", checks: AdaptiveChecks | None = None):
        super().__init__()
        if not (theta >= 0 and math.isfinite(theta)):
            raise ValueError(f"theta must be a finite number >= 0, got {theta}")
        self.name = name
        self.monitor = monitor
        self._theta = float(theta)
        self.checks = checks or EveryN(check_every)
        self._theta_rule = theta_rule

    @property
    def theta(self) -> float:
        return self._theta

    @property
    def theta_rule(self) -> str:
        """'given', or the rule that chose it (theta=auto: the paper's rule of thumb)."""
        return self._theta_rule

    def wants_check(self, step: int) -> bool:
        return self.checks.wants(step)

    def after_check(self, checked_at: int, step: int, bound: float) -> None:
        self.checks.checked(checked_at, step, bound, self._theta, self.last_sync_step)

    def decide(self, step: int, bound: float) -> bool:
        # theta = 0 means "always": a numerically zero bound (e.g. right after a sync) still syncs
        return (not math.isnan(bound)) and (bound > self._theta or self._theta == 0.0)

    def after_sync(self, step: int, var_exact: float) -> None:
        super().after_sync(step, var_exact)
        self.checks.synced(step)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "checks": self.checks.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.checks.load_state_dict(state.get("checks", {}))

    def describe(self) -> str:
        return (f"{self.name}(monitor={self.monitor.describe()}, theta={self._theta:g}, "
                f"check_every={self.checks.describe()})")


class FDAOpt(FDA):
    """FDA-Opt (docs/algorithm.md, "FDA-Opt"): checked once per local epoch, a sync forced after
    `max_epochs` (its outer optimizer, by default FedAvgM's, is fda.outer's), and theta set after each round r from
    the exact variance of the models received:  theta_{r+1} = ((max_epochs/2) / E_r) * Var_r.
    The first round has theta = 0, so it syncs after one epoch.
    """

    wants_sync_variance = True
    theta_rule = "per round: ((max_epochs/2)/E_r) * Var_r"

    def __init__(self, monitor: Monitor, *, steps_per_epoch: int, max_epochs: int):
        super().__init__(monitor, theta=0.0, check_every=steps_per_epoch, name="fda_opt")
        self.steps_per_epoch = steps_per_epoch
        self.max_epochs = max_epochs

    @property
    def min_sync_interval(self) -> int:
        return self.steps_per_epoch  # one check per epoch: an overlapped sync must land before the next

    def decide(self, step: int, bound: float) -> bool:
        if not self.wants_check(step):
            return False
        epochs_in_round = (step - self.last_sync_step) / self.steps_per_epoch
        if epochs_in_round >= self.max_epochs or self._theta == 0.0:
            return True
        return bound > self._theta

    def after_sync(self, step: int, var_exact: float) -> None:
        round_epochs = (step - self.last_sync_step) / self.steps_per_epoch
        super().after_sync(step, var_exact)
        if math.isfinite(var_exact) and round_epochs > 0:
            self._theta = max(0.0, (self.max_epochs / 2.0) / round_epochs * var_exact)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "theta": self._theta}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._theta = float(state["theta"])

    def describe(self) -> str:
        return f"fda_opt(monitor={self.monitor.describe()}, max_epochs={self.max_epochs}, theta=auto per round)"
