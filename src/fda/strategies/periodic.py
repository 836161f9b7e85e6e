from __future__ import annotations

from fda.strategies.base import Strategy


class Periodic(Strategy):
    """Sync every `period` steps: Synchronous (1), FedAvg / Local SGD (tau), FedOpt (E epochs + server optimizer)."""

    def __init__(self, name: str, period: int, server=None):
        super().__init__()
        if period < 1:
            raise ValueError("the sync period must be >= 1 step")
        self.name = name
        self.period = period
        self.server = server

    def decide(self, step: int, bound: float) -> bool:
        return step % self.period == 0

    def state_dict(self) -> dict:
        state = super().state_dict()
        if self.server is not None:
            state["server"] = self.server.state_dict()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if self.server is not None:
            self.server.load_state_dict(state["server"])

    def describe(self) -> str:
        extra = f", server={self.server.describe()}" if self.server is not None else ""
        return f"{self.name}(every {self.period} steps{extra})"
