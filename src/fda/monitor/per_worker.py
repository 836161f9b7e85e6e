from __future__ import annotations

import math

import numpy as np
import torch

from fda.monitor.naive import NaiveMonitor


class PerWorkerMonitor(NaiveMonitor):
    """Kamp et al. (2018): sync when max_k ||u_k||^2 > theta. The naive state (one float per
    worker), reduced with MAX instead of averaged: it bounds each worker's drift, not the variance.
    So a checked step makes two Allreduces: the step's sum (loss, flags) and this MAX."""

    name = "per_worker"
    reduce_op = "max"
    selectable = False  # strategy=kamp's monitor

    def combine_hosted_(self, out: torch.Tensor, states: list[torch.Tensor]) -> None:
        out.copy_(states[0])
        for state in states[1:]:
            torch.maximum(out, state, out=out)

    def mean_sqnorm(self, state: np.ndarray) -> float:
        return math.nan  # the MAX state holds no mean
