"""The strategy registry: every strategy's name, its builder, and the defaults it chooses.

`fda.config` validates the `strategy` setting against `STRATEGIES` and takes a strategy's
defaults (settings left at None) from `STRATEGY_DEFAULTS`; adding a strategy is one entry here.
A module of its own so that `base` (imported by every strategy) never imports its subclasses.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from fda.monitor import Monitor, make_monitor
from fda.strategies.base import Strategy
from fda.strategies.check_schedule import AdaptiveChecks
from fda.strategies.fda import FDA, FDAOpt
from fda.strategies.periodic import Periodic

if TYPE_CHECKING:  # fda.config imports this registry
    from fda.config import Config


class _Build:
    """What a strategy's builder may ask of the configuration and the run."""

    def __init__(self, cfg: Config, num_params: int, steps_per_epoch: int | None):
        self.cfg, self.num_params, self.steps_per_epoch = cfg, num_params, steps_per_epoch

    def epoch_length(self) -> int:
        if not self.steps_per_epoch:
            raise ValueError(f"strategy={self.cfg.strategy} needs the number of steps per epoch (steps_per_epoch)")
        return self.steps_per_epoch

    def monitor(self, name: str | None = None) -> Monitor:
        cfg = self.cfg
        return make_monitor(name or cfg.monitor, sketch_depth=cfg.sketch_depth, sketch_width=cfg.sketch_width,
                            seed=cfg.seed, sketch_correction=cfg.sketch_correction, sketch_delta=cfg.sketch_delta)

    def theta(self) -> float:
        return self.cfg.theta_for(self.num_params)

    def theta_rule(self) -> str:
        """'given', or theta=auto's rule of thumb written out."""
        cfg = self.cfg
        if cfg.theta != "auto":
            return "given"
        c = cfg.theta_rule_constant()
        return f"auto: {cfg.theta_profile} rule {c:g} x d = {c:g} x {self.num_params} = {self.theta():.4g}"

    def fda(self, monitor: str | None = None, name: str = "fda") -> FDA:
        cfg = self.cfg
        checks = AdaptiveChecks(cfg.check_margin, cfg.check_max_interval) if cfg.check_every == "auto" else None
        return FDA(self.monitor(monitor), theta=self.theta(), check_every=1 if checks else cfg.check_every,
                   name=name, theta_rule=self.theta_rule(), checks=checks)


STRATEGIES: dict[str, Callable[[_Build], Strategy]] = {
    "synchronous": lambda b: Periodic("synchronous", period=1),
    "fedavg": lambda b: Periodic("fedavg", period=b.cfg.resolved("tau")),
    "diloco": lambda b: Periodic("diloco", period=b.cfg.resolved("tau")),
    "fedopt": lambda b: Periodic("fedopt", period=b.cfg.local_epochs * b.epoch_length()),
    "fda": lambda b: b.fda(),
    "kamp": lambda b: b.fda("per_worker", name="kamp"),
    "fda_opt": lambda b: FDAOpt(b.monitor(), steps_per_epoch=b.epoch_length(), max_epochs=b.cfg.max_epochs),
}

# The settings whose default (None in fda.config.Config) a strategy chooses. DiLoCo (Douillard et
# al. 2023) is fedavg with tau = H = 500, outer SGD with Nesterov momentum 0.9 and lr 0.7, inner
# AdamW (weight decay 0.1); FedOpt and FDA-Opt default to FedAvgM's outer step.
STRATEGY_DEFAULTS: dict[str, dict] = {
    "diloco": {"tau": 500, "server_optimizer": "nesterov", "server_lr": 0.7, "optimizer": "adamw",
               "weight_decay": 0.1},
    "fedopt": {"server_optimizer": "sgdm"},
    "fda_opt": {"server_optimizer": "sgdm"},
}

# The strategies whose theta may be chosen by the paper's rule of thumb (theta=auto).
AUTO_THETA = ("fda",)
# The strategies whose decision depends on the checked state alone, so it may be taken check_lag steps later.
LAGGED_CHECKS = ("fda", "kamp")
# The strategies whose checks check_every=auto may space (fda_opt checks once per epoch).
ADAPTIVE_CHECKS = ("fda", "kamp")


def strategy_names() -> tuple[str, ...]:
    return tuple(STRATEGIES)


def make_strategy(cfg: Config, *, num_params: int, steps_per_epoch: int | None) -> Strategy:
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{cfg.strategy}' ({', '.join(STRATEGIES)})")
    return STRATEGIES[cfg.strategy](_Build(cfg, num_params, steps_per_epoch))
