"""When to synchronise, and what a synchronisation does to the global model.

A `Strategy` answers two questions each step: check the variance monitor now?
sync now? Every strategy runs through the same loop (`fda.Synchronizer`).
"""
from fda.strategies.base import Strategy
from fda.strategies.fda import FDA, FDAOpt
from fda.strategies.periodic import Periodic
from fda.strategies.registry import STRATEGIES, STRATEGY_DEFAULTS, make_strategy, strategy_names

__all__ = ["Strategy", "FDA", "FDAOpt", "Periodic", "STRATEGIES", "STRATEGY_DEFAULTS", "make_strategy", "strategy_names"]
