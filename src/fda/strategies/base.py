from __future__ import annotations

import math

from fda.config import Config
from fda.monitor import Monitor, make_monitor


class Strategy:
    """The sync schedule. `monitor` is None for strategies that never look at the drift."""

    name = ""
    monitor: Monitor | None = None
    server = None  # a ServerOptimizer, or None for plain averaging
    wants_sync_variance = False  # after_sync needs the exact variance of the models averaged

    def __init__(self) -> None:
        self.last_sync_step = 0

    @property
    def theta(self) -> float:
        return math.nan

    def wants_check(self, step: int) -> bool:
        """Compute and Allreduce the monitor state at this step?"""
        return False

    def decide(self, step: int, bound: float) -> bool:
        """Sync at this step? `bound` is H(mean state) when checked, else NaN. Same inputs on every rank."""
        raise NotImplementedError

    def after_sync(self, step: int, var_exact: float) -> None:
        self.last_sync_step = step

    def state_dict(self) -> dict:
        return {"last_sync_step": self.last_sync_step}

    def load_state_dict(self, state: dict) -> None:
        self.last_sync_step = int(state["last_sync_step"])

    def describe(self) -> str:
        return self.name


def make_strategy(cfg: Config, *, num_params: int, steps_per_epoch: int | None) -> Strategy:
    from fda.strategies.fda import FDA, FDAOpt
    from fda.strategies.periodic import Periodic
    from fda.strategies.server import ServerOptimizer

    def need_epoch_length(what: str) -> int:
        if not steps_per_epoch:
            raise ValueError(f"{what} needs the number of steps per epoch (steps_per_epoch)")
        return steps_per_epoch

    def server():
        return ServerOptimizer(cfg.server_optimizer, lr=cfg.server_lr, momentum=cfg.server_momentum)

    monitor_kw = dict(sketch_depth=cfg.sketch_depth, sketch_width=cfg.sketch_width, seed=cfg.seed)
    if cfg.strategy == "synchronous":
        return Periodic("synchronous", period=1)
    if cfg.strategy == "fedavg":
        return Periodic("fedavg", period=cfg.tau)
    if cfg.strategy == "fedopt":
        period = cfg.local_epochs * need_epoch_length("strategy=fedopt")
        return Periodic("fedopt", period=period, server=server())
    if cfg.strategy == "fda":
        return FDA(make_monitor(cfg.monitor, **monitor_kw), theta=cfg.theta_for(num_params),
                   check_every=cfg.check_every)
    if cfg.strategy == "kamp":
        return FDA(make_monitor("per_worker"), theta=cfg.theta_for(num_params),
                   check_every=cfg.check_every, name="kamp")
    if cfg.strategy == "fda_opt":
        return FDAOpt(make_monitor(cfg.monitor, **monitor_kw), steps_per_epoch=need_epoch_length("strategy=fda_opt"),
                      max_epochs=cfg.max_epochs, server=server())
    raise ValueError(f"unknown strategy '{cfg.strategy}'")
