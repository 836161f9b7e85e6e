"""What a run has cost: bytes in the paper's accounting, bytes MPI really moved, and time.

The paper counts float32 values: a check sends every worker's state (|S_k| values), a sync
sends every worker's model up and the mean back down (2 x K x d values). `comm_bytes` counts
them at the width really sent (a compressed sync sends fewer bytes), `comm_bytes_float32` as
float32. MPI's own counters (fda.comm) hold every byte of every kind; a run reports its own
share, also when it shares a communicator with an earlier run.
"""
from __future__ import annotations

import time
from collections import defaultdict

FLOAT_BYTES = 4  # the paper's accounting counts float32 values
TIMED_PHASES = ("compute", "monitor", "comm")


class Accounting:
    """The paper's byte counts, this run's MPI byte counts, and the seconds per phase."""

    def __init__(self, mpi_counters):
        self.mpi_counters = mpi_counters  # fda.comm's ByteCounter: bytes moved, by kind
        self._mpi_base = dict(mpi_counters.by_kind)
        self.comm_bytes = 0
        self.comm_bytes_float32 = 0
        self.totals = defaultdict(float)  # seconds, by phase

    def count_check(self, workers: int, state_floats: int) -> None:
        self._count(workers * FLOAT_BYTES * state_floats)

    def count_sync(self, workers: int, wire_bytes: int, num_params: int) -> None:
        """wire_bytes: what one worker sends for its d values at the sync's width."""
        self._count(2 * workers * wire_bytes, 2 * workers * FLOAT_BYTES * num_params)

    def _count(self, sent: int, as_float32: int | None = None) -> None:
        self.comm_bytes += sent
        self.comm_bytes_float32 += sent if as_float32 is None else as_float32

    def add_times(self, **seconds: float) -> None:
        for phase, s in seconds.items():
            self.totals[phase] += s

    def mpi_bytes(self, kind: str) -> int:
        """Bytes this run's MPI calls of one kind moved, summed over ranks."""
        return self.mpi_counters.get(kind) - self._mpi_base.get(kind, 0)

    def mpi_kinds(self) -> list[str]:
        return sorted({*self.mpi_counters.by_kind, *self._mpi_base})

    def state_dict(self) -> dict:
        return {"comm_bytes": self.comm_bytes, "comm_bytes_float32": self.comm_bytes_float32,
                "mpi_bytes": {k: self.mpi_bytes(k) for k in self.mpi_kinds()}, "totals": dict(self.totals)}

    def load_state_dict(self, state: dict) -> None:
        self.comm_bytes = int(state["comm_bytes"])
        self.comm_bytes_float32 = int(state["comm_bytes_float32"])
        for kind, n in state["mpi_bytes"].items():
            self._mpi_base[kind] = self.mpi_counters.get(kind) - n
        self.totals = defaultdict(float, state["totals"])


def synchronous_bytes(steps: int, workers: int, num_params: int) -> int:
    """What the Synchronous baseline sends in `steps` steps (a float32 sync every step)."""
    return steps * 2 * workers * FLOAT_BYTES * num_params


class Stopwatch:
    """Seconds since the last lap (the first lap counts from construction)."""

    def __init__(self):
        self.start = self._last = time.perf_counter()

    def lap(self) -> float:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        return seconds

    def restart_lap(self) -> None:
        self._last = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.start
