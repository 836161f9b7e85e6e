from __future__ import annotations

import numpy as np
import torch
from fda.monitor.base import Monitor


class NaiveMonitor(Monitor):
    """S_k = (||u_k||^2); H = mean ||u_k||^2 (drops the -||mean u||^2 term entirely)."""

    name = "naive"

    @property
    def state_size(self) -> int:
        return 1

    def local_state(self, packed: torch.Tensor) -> torch.Tensor:
        return packed[:1]

    def bound(self, mean_state: np.ndarray) -> float:
        return float(mean_state[0])
