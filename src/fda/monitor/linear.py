from __future__ import annotations

import numpy as np

from fda.kernels import DriftState
from fda.monitor.base import Monitor


class LinearMonitor(Monitor):
    """S_k = (||u_k||^2, <xi, u_k>) with ||xi|| = 1; H = mean ||u_k||^2 - (mean <xi, u_k>)^2.

    Cauchy-Schwarz gives <xi, mean u>^2 <= ||mean u||^2, so H >= Var for any unit xi.
    """

    name = "linear"
    uses_xi = True

    @property
    def state_size(self) -> int:
        return 2

    def local_state(self, drift: DriftState) -> np.ndarray:
        if drift.dot is None:
            raise ValueError("the linear monitor needs <xi, u> from the kernel")
        return np.array([drift.sqnorm, drift.dot], dtype=np.float64)

    def bound(self, mean_state: np.ndarray) -> float:
        return float(mean_state[0] - mean_state[1] ** 2)
