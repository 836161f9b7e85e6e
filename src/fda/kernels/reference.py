"""Pure-torch reference implementation of the drift-state op.

Computes, for u = w - w0 (float32 subtraction, as the drift vector itself):

* ``sqnorm = sum(u_i^2)`` accumulated in float64,
* ``dot = sum(xi_i * u_i)`` accumulated in float64 (when ``xi`` is given),
* the AMS sketch ``sk[r, h_r(i)] += s_r(i) * u_i`` (accumulated in float64, returned as float32).

The hashes are exactly those of ``csrc/hash.h`` (see the comment there): one degree-3
polynomial over the Mersenne prime p = 2^31 - 1 per sketch row, sign = bit 0, bucket = bits 1..30
range-reduced to [0, m).  The coefficients come from :func:`hash_coefficients` (splitmix64 of the
seed, no torch/numpy RNG), so every rank and every backend gets the same hashes.
"""

from __future__ import annotations

import numpy as np
import torch

MERSENNE_P = (1 << 31) - 1
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
# Elements hashed per step of the reference (bounds its int64 temporaries).
_BLOCK = 1 << 20


def _splitmix64_mix(z: int) -> int:
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def hash_coefficients(seed: int, depth: int) -> list[tuple[int, int, int, int]]:
    """Polynomial coefficients ``(a0, a1, a2, a3)`` of each of the ``depth`` sketch rows.

    ``a_k(r) = splitmix64_mix(seed + (4 r + k + 1) * 0x9E3779B97F4A7C15) mod (2^31 - 1)``, with the
    seed taken modulo 2^64.  Identical to ``fda::hash::coefficient`` in ``csrc/hash.h``.
    """
    seed = int(seed) & _MASK64
    return [
        tuple(_splitmix64_mix(seed + (4 * r + k + 1) * _GOLDEN) % MERSENNE_P for k in range(4))
        for r in range(depth)
    ]


def hash_rows(idx: torch.Tensor, coeffs, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Buckets (int64, [depth, n]) and signs (int64 +-1, [depth, n]) of int64 indices ``idx`` < p."""
    x = idx.to(torch.int64)
    buckets, signs = [], []
    for a0, a1, a2, a3 in coeffs:
        g = torch.full_like(x, a3)
        for a in (a2, a1, a0):  # Horner; g * x < 2^62 fits in int64
            g = torch.remainder(g * x + a, MERSENNE_P)
        buckets.append(((g >> 1) * width) >> 30)
        signs.append(1 - 2 * (g & 1))
    return torch.stack(buckets), torch.stack(signs)


def drift_state_out(w: torch.Tensor, w0: torch.Tensor, xi: torch.Tensor | None, depth: int, width: int,
                    seed: int, out: torch.Tensor) -> torch.Tensor:
    """Unvalidated reference of the packed op: writes ``[||u||^2, <xi,u>, sketch row-major]`` (float64)
    into ``out`` with tensor operations only (no host sync); the sketch values are rounded to float32
    first, as the native op returns them."""
    u = w - w0  # float32, the drift vector
    u64 = u.to(torch.float64)
    out[0] = torch.dot(u64, u64)
    out[1] = torch.dot(xi.to(torch.float64), u64) if xi is not None else 0.0
    if depth > 0:
        u64 = u64.cpu()  # index_add_ is order-dependent (and refused in deterministic mode) on CUDA
        coeffs = hash_coefficients(seed, depth)
        acc = torch.zeros(depth * width, dtype=torch.float64)
        offsets = (torch.arange(depth, dtype=torch.int64) * width)[:, None]
        for start in range(0, u.numel(), _BLOCK):
            stop = min(start + _BLOCK, u.numel())
            idx = torch.arange(start, stop, dtype=torch.int64)
            buckets, signs = hash_rows(idx, coeffs, width)
            vals = signs.to(torch.float64) * u64[start:stop]
            acc.index_add_(0, (buckets + offsets).reshape(-1), vals.reshape(-1))
        out[2:].copy_(acc.to(torch.float32))
    return out


def drift_state(w: torch.Tensor, w0: torch.Tensor, xi: torch.Tensor | None, depth: int, width: int,
                seed: int) -> tuple[float, float | None, torch.Tensor | None]:
    """Unvalidated reference; use :func:`fda.kernels.drift_state` (it validates the inputs)."""
    out = drift_state_out(w, w0, xi, depth, width, seed,
                          torch.empty(2 + depth * width, dtype=torch.float64, device=w.device))
    sqnorm, dot = out[:2].tolist()
    sketch = out[2:].to(torch.float32).view(depth, width) if depth > 0 else None
    return sqnorm, dot if xi is not None else None, sketch


def mean_epilogue_(total: torch.Tensor, divisor: int, ref: torch.Tensor | None, update: torch.Tensor | None,
                   copies: list[torch.Tensor]) -> None:
    """fda::mean_epilogue_ with torch ops, one pass each (the same bits: see kernels.mean_epilogue_)."""
    total.div_(divisor)
    if update is not None:
        torch.sub(total[:update.numel()], ref[:update.numel()], out=update)
    if ref is not None:
        ref.copy_(total)
    for c in copies:
        c.copy_(total)


def ams_m2(sketch: np.ndarray) -> float:
    """M2(sk): the median over rows of each row's sum of squares (float64), the AMS estimate of
    ||x||^2 from the sketch sk(x); the mean of the two middle rows when the depth is even."""
    return float(np.median(np.square(sketch, dtype=np.float64).sum(axis=1)))
