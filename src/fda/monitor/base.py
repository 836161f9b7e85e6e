from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
import torch


class Monitor(ABC):
    """Turns one worker's drift statistics into a state vector, and a mean state into a bound."""

    name: str = ""
    reduce_op: str = "sum"  # how states combine across workers
    uses_xi: bool = False
    sketch_depth: int = 0
    sketch_width: int = 0

    @property
    @abstractmethod
    def state_size(self) -> int:
        """Floats per worker per check (the paper's |S_k|)."""

    @abstractmethod
    def local_state(self, packed: torch.Tensor) -> torch.Tensor:
        """S_k (float64, `state_size` values, on the packed tensor's device: no host sync) from the
        kernel's packed output [||u_k||^2, <xi,u_k>, sketch row-major] (fda.kernels.drift_state_out)."""

    @abstractmethod
    def bound(self, mean_state: np.ndarray) -> float:
        """H(mean state) (for MAX monitors: the reduced state itself)."""


def exact_variance(mean_sqnorm: float, mean_drift_sqnorm: float) -> float:
    """Var = mean_k ||u_k||^2 - ||mean_k u_k||^2 (FDA.md section 2)."""
    return mean_sqnorm - mean_drift_sqnorm

