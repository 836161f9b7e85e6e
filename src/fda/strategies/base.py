from __future__ import annotations

import math

from fda.monitor import Monitor


class Strategy:
    """The sync schedule. `monitor` is None for strategies that never look at the drift."""

    name = ""
    monitor: Monitor | None = None
    wants_sync_variance = False  # after_sync needs the exact variance of the models averaged

    def __init__(self) -> None:
        self.last_sync_step = 0

    @property
    def theta(self) -> float:
        return math.nan

    @property
    def theta_rule(self) -> str:
        """How theta was chosen (logged with the run)."""
        return "none (no variance check)"

    @property
    def min_sync_interval(self) -> int | None:
        """The fewest steps between two syncs (None: one may follow as soon as the last has landed);
        an overlapped sync (sync_delay) must land within it."""
        return None

    def wants_check(self, step: int) -> bool:
        """Compute and Allreduce the monitor state at this step? Asked once per step."""
        return False

    def after_check(self, checked_at: int, step: int, bound: float) -> None:
        """The bound of the check started at step `checked_at` is known at `step` (NaN: stale)."""

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
