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

    def sketch_seed(self, step: int) -> int:
        """The kernel's hash seed for the check at `step`; unused without a sketch."""
        return 0

    def describe(self) -> str:
        return self.name


def exact_variance(mean_sqnorm: float, mean_drift_sqnorm: float) -> float:
    """Var = mean_k ||u_k||^2 - ||mean_k u_k||^2 (FDA.md section 2)."""
    return mean_sqnorm - mean_drift_sqnorm


def bound_audit(bound: np.ndarray, exact: np.ndarray) -> dict:
    """How an audited run's bound did (audit=true logs Var beside H at every step): over the
    checked steps, the share where H >= Var (up to float32 rounding of the drift) and the median
    H/Var over those where the models had moved apart (Var > 0): validity and tightness."""
    bound, exact = np.asarray(bound, dtype=np.float64), np.asarray(exact, dtype=np.float64)
    checked = np.isfinite(bound) & np.isfinite(exact)
    bound, exact = bound[checked], exact[checked]
    holds = bound >= exact - 1e-6 * np.maximum(1.0, np.abs(exact))
    apart = exact > 1e-12
    return {"audited_checks": int(checked.sum()),
            "bound_holds": float(holds.mean()) if holds.size else float("nan"),
            "median_bound_over_var": float(np.median(bound[apart] / exact[apart])) if apart.any() else float("nan")}
