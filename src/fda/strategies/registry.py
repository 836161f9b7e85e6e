"""`make_strategy`: the strategy a configuration names, built from its settings.

A module of its own so that `base` (imported by every strategy) never imports its subclasses.
"""
from __future__ import annotations

from typing import Callable

from fda.config import Config
from fda.monitor import Monitor, make_monitor
from fda.strategies.base import Strategy
from fda.strategies.fda import FDA, FDAOpt
from fda.strategies.periodic import Periodic


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


STRATEGIES: dict[str, Callable[[_Build], Strategy]] = {
    "synchronous": lambda b: Periodic("synchronous", period=1),
    "fedavg": lambda b: Periodic("fedavg", period=b.cfg.resolved("tau")),
    "diloco": lambda b: Periodic("diloco", period=b.cfg.resolved("tau")),
    "fedopt": lambda b: Periodic("fedopt", period=b.cfg.local_epochs * b.epoch_length()),
    "fda": lambda b: FDA(b.monitor(), theta=b.theta(), check_every=b.cfg.check_every),
    "kamp": lambda b: FDA(b.monitor("per_worker"), theta=b.theta(), check_every=b.cfg.check_every, name="kamp"),
    "fda_opt": lambda b: FDAOpt(b.monitor(), steps_per_epoch=b.epoch_length(), max_epochs=b.cfg.max_epochs),
}


def make_strategy(cfg: Config, *, num_params: int, steps_per_epoch: int | None) -> Strategy:
    if cfg.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{cfg.strategy}' ({', '.join(STRATEGIES)})")
    return STRATEGIES[cfg.strategy](_Build(cfg, num_params, steps_per_epoch))
