from __future__ import annotations

from fda.strategies.base import Strategy


class Periodic(Strategy):
    """Sync every `period` steps: Synchronous (1), FedAvg / Local SGD and DiLoCo (tau), FedOpt (E epochs)."""

    def __init__(self, name: str, period: int):
        super().__init__()
        if period < 1:
            raise ValueError("the sync period must be >= 1 step")
        self.name = name
        self.period = period

    @property
    def min_sync_interval(self) -> int:
        return self.period

    def decide(self, step: int, bound: float) -> bool:
        return step % self.period == 0

    def describe(self) -> str:
        return f"{self.name}(every {self.period} steps)"
