from __future__ import annotations

import numpy as np
import torch
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

    def local_state(self, packed: torch.Tensor) -> torch.Tensor:
        return packed[:2]

    def bound(self, mean_state: np.ndarray) -> float:
        return float(mean_state[0] - mean_state[1] ** 2)
