from __future__ import annotations

import numpy as np

from fda.kernels import DriftState
from fda.monitor.base import Monitor


class PerWorkerMonitor(Monitor):
    """Kamp et al. (2018): sync when max_k ||u_k||^2 > theta. One float per worker, MAX-reduced."""

    name = "per_worker"
    reduce_op = "max"

    @property
    def state_size(self) -> int:
        return 1

    def local_state(self, drift: DriftState) -> np.ndarray:
        return np.array([drift.sqnorm], dtype=np.float64)

    def bound(self, mean_state: np.ndarray) -> float:
        return float(mean_state[0])
