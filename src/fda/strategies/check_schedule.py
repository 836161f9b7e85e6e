"""When FDA checks its variance bound: every n steps, or adaptively (check_every=auto).

The adaptive schedule (docs/algorithm.md, "Adaptive check intervals") spaces the checks of a
round by extrapolating the bound: a check at n steps after the last sync that saw H < Θ predicts
that H reaches Θ after n · (sqrt(Θ/H) - 1) more steps if H grows quadratically in the round's
steps (the fastest growth of the variance of a drift: a worker-specific mean gradient; the noise
of SGD alone grows linearly). The next check comes after `margin` times that, between 1 and
`max_interval` steps. Every input (the step, the Allreduced bound) is the same on every rank, so
is the schedule.
"""
from __future__ import annotations

import math


class EveryN:
    """A check every `n` steps (the paper's schedule with n = 1)."""

    def __init__(self, n: int):
        self.n = int(n)

    def wants(self, step: int) -> bool:
        return step % self.n == 0

    def checked(self, checked_at: int, now: int, bound: float, theta: float, round_start: int) -> None:
        pass

    def synced(self, step: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> str:
        return str(self.n)


class AdaptiveChecks:
    """The next check scheduled from the last one's bound; the first check of a round one step
    after its sync. At most one check is in flight (a pipelined check is decided before the next
    one is scheduled)."""

    def __init__(self, margin: float, max_interval: int):
        if not 0.0 < margin <= 1.0:
            raise ValueError(f"the check margin must be in (0, 1], got {margin}")
        if max_interval < 1:
            raise ValueError(f"the longest check interval must be >= 1 step, got {max_interval}")
        self.margin, self.max_interval = float(margin), int(max_interval)
        self._next = 1  # the step of the next check; inf while one is in flight
        self._interval = 1  # the last interval chosen

    def wants(self, step: int) -> bool:
        """Check at `step`? Asked once per step: a yes marks the check as in flight."""
        if step < self._next:
            return False
        self._next = math.inf
        return True

    def checked(self, checked_at: int, now: int, bound: float, theta: float, round_start: int) -> None:
        """The bound of the check made at step `checked_at` is known at step `now`."""
        if math.isnan(bound):  # a stale check (a sync came first): the sync has scheduled the next
            return
        self._interval = next_interval(bound, theta, checked_at - round_start, self.margin, self.max_interval,
                                       self._interval)
        self._next = max(now + 1, checked_at + self._interval)

    def synced(self, step: int) -> None:
        self._next, self._interval = step + 1, 1

    def state_dict(self) -> dict:
        return {"next_check": self._next, "interval": self._interval}

    def load_state_dict(self, state: dict) -> None:
        self._next, self._interval = state["next_check"], int(state["interval"])

    def describe(self) -> str:
        return f"auto(margin={self.margin:g}, max={self.max_interval})"


def next_interval(bound: float, theta: float, steps_in_round: int, margin: float, max_interval: int,
                  last_interval: int) -> int:
    """Steps to the next check after one `steps_in_round` steps after the last sync saw `bound`.

    A bound at or below zero (the Sketch's can be) says nothing about the growth: the interval
    doubles. A bound at or above Θ (no sync: theta = 0 aside, H == Θ) checks again at once.
    """
    if bound <= 0.0:
        steps = 2 * last_interval
    elif bound >= theta:
        steps = 1
    else:
        steps = math.floor(margin * max(steps_in_round, 1) * (math.sqrt(theta / bound) - 1.0))
    return int(min(max(steps, 1), max_interval))
