from __future__ import annotations

from abc import ABC, abstractmethod


import numpy as np
import torch

from fda import kernels
from fda.flat import pairwise_sum_


class Monitor(ABC):
    """Turns one worker's drift statistics into a state vector, and a mean state into a bound.

    The states of the K workers are averaged (summed by the step's Allreduce, divided by K);
    a monitor whose states combine otherwise sets `reduce_op` and overrides `combine_hosted_`.
    """

    name: str = ""
    reduce_op: str = "sum"  # how states combine across workers
    uses_xi: bool = False
    sketch_depth: int = 0
    sketch_width: int = 0
    selectable: bool = True  # a value of the `monitor` setting (else chosen by a strategy only)

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

    def kernel_output(self, device: torch.device) -> torch.Tensor:
        """A buffer for `worker_state`'s kernel call (reused at every check)."""
        return torch.empty(kernels.packed_size(self.sketch_depth, self.sketch_width), dtype=torch.float64,
                           device=device)

    def worker_state(self, w: torch.Tensor, w0: torch.Tensor, xi: torch.Tensor | None, out: torch.Tensor,
                     step: int) -> torch.Tensor:
        """S_k of the worker with parameters `w` at the check of `step` (a view of `out`; the
        kernel reuses it). xi: the update direction, read only by monitors that use it."""
        packed = kernels.drift_state_out(w, w0, out, xi=xi if self.uses_xi else None,
                                         sketch_depth=self.sketch_depth, sketch_width=self.sketch_width,
                                         seed=self.sketch_seed(step))  # fresh hashes at every check
        return self.local_state(packed)

    def combine_hosted_(self, out: torch.Tensor, states: list[torch.Tensor]) -> None:
        """This rank's state into `out` from its hosted workers' states: their sum, in the order W
        ranks would add them (so the bits do not depend on the layout)."""
        out.copy_(pairwise_sum_(states))

    def from_reduced(self, reduced: np.ndarray, workers: int) -> np.ndarray:
        """The state H is evaluated on, from the states of all workers reduced with `reduce_op`."""
        return reduced / workers if self.reduce_op == "sum" else reduced

    def mean_sqnorm(self, state: np.ndarray) -> float:
        """mean_k ||u_k||^2 from the reduced state (every averaged state starts with it)."""
        return float(state[0])

    def describe(self) -> str:
        return self.name


def exact_variance(mean_sqnorm: float, mean_drift_sqnorm: float) -> float:
    """Var = mean_k ||u_k||^2 - ||mean_k u_k||^2 (docs/algorithm.md, "The variance bound"): what every bound H bounds,
    measured exactly where both terms are known (FDA-Opt's threshold at a sync, the tests)."""
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
