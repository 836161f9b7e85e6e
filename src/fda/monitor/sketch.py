from __future__ import annotations

import math

import numpy as np
import torch

from fda.kernels import packed_size
from fda.monitor.base import Monitor


class SketchMonitor(Monitor):
    """S_k = (||u_k||^2, sk(u_k)), sk an l x m AMS sketch; H = mean ||u_k||^2 - M2(mean sk)/(1+eps).

    The sketch is linear, so mean_k sk(u_k) = sk(mean u); M2 is within (1 +- eps) of
    ||mean u||^2 with probability >= 1 - delta, eps = 1/sqrt(m). All workers must use
    the same `seed` (same hash functions) or their sketches cannot be added.
    """

    name = "sketch"

    def __init__(self, depth: int, width: int, seed: int):
        if depth < 1 or width < 1:
            raise ValueError("sketch depth and width must be >= 1")
        self.sketch_depth = depth
        self.sketch_width = width
        self.seed = seed
        self.eps = 1.0 / math.sqrt(width)

    @property
    def state_size(self) -> int:
        return 1 + self.sketch_depth * self.sketch_width

    def local_state(self, packed: torch.Tensor) -> torch.Tensor:
        if packed.numel() != packed_size(self.sketch_depth, self.sketch_width):
            raise ValueError("the sketch monitor needs the kernel's sketch of its depth and width")
        return torch.cat([packed[:1], packed[2:]])

    def bound(self, mean_state: np.ndarray) -> float:
        sk = np.asarray(mean_state[1:]).reshape(self.sketch_depth, self.sketch_width)
        return float(mean_state[0] - ams_m2(sk) / (1.0 + self.eps))


def ams_m2(sketch: np.ndarray) -> float:
    """M2(sk): the median over rows of each row's sum of squares, an estimate of ||x||^2."""
    return float(np.median(np.square(sketch, dtype=np.float64).sum(axis=1)))
