"""The Sketch monitor (docs/algorithm.md, "The Sketch monitor") with a correction that keeps its promise (docs/algorithm.md, "The Sketch correction")."""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import torch

from fda.kernels import packed_size
from fda.kernels.reference import _GOLDEN, _MASK64, _splitmix64_mix  # the hash family's own mixer
from fda.kernels.reference import ams_m2
from fda.monitor.base import Monitor

CORRECTIONS = ("delta", "paper")
DEFAULT_DELTA = 0.01


class SketchMonitor(Monitor):
    """S_k = (||u_k||^2, sk(u_k)), sk an l x m AMS sketch; H = mean ||u_k||^2 - M2(mean sk)/(1+eps).

    The sketch is linear, so mean_k sk(u_k) = sk(mean u), and H >= Var unless M2 overestimates
    ||mean u||^2 by more than the factor (1+eps). correction='delta' (default) takes the eps for
    which that happens with probability <= delta at each check (`delta_correction`);
    correction='paper' takes the paper's eps = 1/sqrt(m) (about 9% per check at l=5, m=250).

    The hash functions are drawn afresh at every check, from (seed, step) (`check_seed`): all
    workers agree without talking, and the checks are independent trials, so an unlucky draw
    costs one check (with fixed hashes, or hashes fixed for a round, it lasts as long as the
    drift keeps its direction: the audit measured whole rounds, up to 10% of a run, below Var).
    """

    name = "sketch"

    def __init__(self, depth: int, width: int, seed: int, *, correction: str = "delta",
                 delta: float = DEFAULT_DELTA):
        if depth < 1 or width < 1:
            raise ValueError("sketch depth and width must be >= 1")
        if correction not in CORRECTIONS:
            raise ValueError(f"unknown sketch correction '{correction}' ({', '.join(CORRECTIONS)})")
        self.sketch_depth = depth
        self.sketch_width = width
        self.seed = seed
        self.correction = correction
        self.delta = delta
        self.eps = paper_correction(width) if correction == "paper" else delta_correction(depth, width, delta)

    @property
    def state_size(self) -> int:
        return 1 + self.sketch_depth * self.sketch_width

    def sketch_seed(self, step: int) -> int:
        return check_seed(self.seed, step)

    def local_state(self, packed: torch.Tensor) -> torch.Tensor:
        if packed.numel() != packed_size(self.sketch_depth, self.sketch_width):
            raise ValueError("the sketch monitor needs the kernel's sketch of its depth and width")
        return torch.cat([packed[:1], packed[2:]])

    def bound(self, mean_state: np.ndarray) -> float:
        sk = np.asarray(mean_state[1:]).reshape(self.sketch_depth, self.sketch_width)
        return float(mean_state[0] - ams_m2(sk) / (1.0 + self.eps))

    def describe(self) -> str:
        how = f"delta={self.delta:g}" if self.correction == "delta" else "paper 1/sqrt(m)"
        return f"sketch({self.sketch_depth}x{self.sketch_width}, eps={self.eps:.4f} from {how})"


def check_seed(seed: int, step: int) -> int:
    """The hash seed of the check at `step`:  splitmix64(splitmix64(seed) + step * G) mod 2^64,
    G = 0x9E3779B97F4A7C15 (the kernel's own mixing function and constant; csrc/hash.h).

    The kernel takes its hash tables' entries from splitmix64(s + c * G) for consecutive counters c,
    i.e. points of one stream; mixing (seed, step) first scatters the checks' streams over 2^64, so
    checks (and runs with other seeds) do not share tables. Pure arithmetic on
    values every rank holds (the seed and the step count, both in the checkpoint): no communication.
    """
    return _splitmix64_mix(_splitmix64_mix(int(seed)) + int(step) * _GOLDEN) & _MASK64


def paper_correction(width: int) -> float:
    """The paper's eps = 1/sqrt(m): about 0.7 of one row's relative standard deviation sqrt(2/m)."""
    return 1.0 / math.sqrt(width)


def median_failure(depth: int, p: float) -> float:
    """P(Binomial(l, p) >= ceil(l/2)): the chance that the median of l independent rows exceeds a
    level that each row exceeds with probability p (for even l the median is the mean of the two
    middle rows, which exceeds it only if the upper one, the l/2-th largest, does)."""
    need = (depth + 1) // 2
    return sum(math.comb(depth, j) * p ** j * (1.0 - p) ** (depth - j) for j in range(need, depth + 1))


def row_exceedance(depth: int, delta: float) -> float:
    """The largest per-row probability p with median_failure(l, p) <= delta (bisection; it is increasing in p)."""
    lo, hi = 0.0, 0.5
    if median_failure(depth, hi) <= delta:
        return hi
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if median_failure(depth, mid) <= delta else (lo, mid)
    return lo


def chi2_quantile(dof: int, upper: float) -> float:
    """The point that chi^2 with `dof` degrees of freedom exceeds with probability `upper`
    (Wilson-Hilferty: within 1e-3 relative of the exact quantile for the dof and tails used here)."""
    z = -NormalDist().inv_cdf(upper)
    a = 2.0 / (9.0 * dof)
    return dof * max(0.0, 1.0 - a + z * math.sqrt(a)) ** 3


def delta_correction(depth: int, width: int, delta: float) -> float:
    """The eps that makes the Sketch bound fail with probability <= delta at one check.

    In the terms of docs/algorithm.md, "The Sketch monitor", with x = mean_k u_k (the mean drift), row r's estimate
    Y_r = sum_j sk[r][j]^2 and M2 = median_r Y_r: the ||u_k||^2 term of H is exact, so
    H < Var exactly when M2 > (1+eps) ||x||^2.

    1. One row. E[Y_r] = ||x||^2 and Var[Y_r] = (2/m)(||x||^4 - sum_i x_i^4) <= 2||x||^4/m
       (s_r 4-wise, h_r 2-wise independent): a relative standard deviation of sqrt(2/m).
       Each bucket sum sum_{h_r(i)=j} s_r(i) x_i adds many small signed terms when the drift
       is spread over many more coordinates than m (a model's drift: d >> m, no coordinate
       carrying a sizeable share of ||x||^2), so it is close to Gaussian and
       Y_r / ||x||^2 is distributed as chi^2_m / m: mean 1, variance 2/m, skewed to the right.
       So P(Y_r > (1+eps) ||x||^2) = P(chi^2_m > m (1+eps)) =: p(eps).
    2. The median of l rows. The rows have their own hash coefficients, hence independent
       estimates, and the median exceeds a level only when at least ceil(l/2) rows do:
       P(H < Var) <= P(Binomial(l, p(eps)) >= ceil(l/2)).
    3. So take the largest p* with P(Binomial(l, p*) >= ceil(l/2)) <= delta
       (`row_exceedance`) and the smallest eps with p(eps) <= p*:
           eps = q_m(1 - p*) / m - 1,    q_m the chi^2_m quantile (`chi2_quantile`).

    At l = 5, m = 250: delta = 0.05 -> eps = 0.078; delta = 0.01 -> p* = 0.106, eps = 0.113;
    delta = 0.001 -> eps = 0.154. The paper's 1/sqrt(m) = 0.063 is delta ~ 0.09.
    The model fails for a drift carried by a handful of coordinates: then collisions of
    heavy coordinates in one bucket, not Gaussian noise, make the error (rarer, but larger).
    tests/monitor measure the failure rate on spread, shared-direction and sparse drifts.

    Why delta = 0.01 by default: with fresh hashes at every check the checks are independent
    trials, so a run's share of checks with H < Var concentrates near delta (the 20-seed audit
    of tests/monitor/test_sketch_audit.py: 1.1% on average, no run above 2%); a failure is
    soft (H then falls short of Var by M2's overshoot beyond eps, a few per cent of ||x||^2 at
    most in practice); and each further factor of 10 costs about +0.04 in eps, i.e. a looser H
    by 0.04 ||x||^2 and earlier syncs when the workers drift together.
    """
    if not 0.0 < delta < 0.5:
        raise ValueError(f"sketch_delta must be in (0, 0.5), got {delta}")
    p = row_exceedance(depth, delta)
    return chi2_quantile(width, p) / width - 1.0
