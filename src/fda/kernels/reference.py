"""Pure-torch reference implementation of the drift-state op.

Computes, for u = w - w0 (float32 subtraction, as the drift vector itself):

* ``sqnorm = sum(u_i^2)`` accumulated in float64,
* ``dot = sum(xi_i * u_i)`` accumulated in float64 (when ``xi`` is given),
* the AMS sketch ``sk[r, h_r(i)] += s_r(i) * u_i`` (accumulated in float64, returned as float32).

The hashes are exactly those of ``csrc/hash.h`` (see the comment there): tabulation hashing, row r's
32-bit value ``T0_r[i >> 8] ^ T1_r[i & 255] ^ T2_r[(i >> 8) + (i & 255)]``, sign and bucket from one
16-bit field (widths up to 4096) or from all 32 bits.  The table entries come from
:func:`hash_tables` (splitmix64 of the seed, no torch/numpy RNG), so every rank and every backend
gets the same hashes.
"""

from __future__ import annotations

import numpy as np
import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
LOW_BITS = 8  # i = (a, b) with a = i >> 8, b = i & 255
NARROW_MAX_WIDTH = 4096  # widths whose sign and bucket come from 16 bits of the row value
MAX_INDEX = 1 << 31  # vectors have at most 2^31 elements
# Elements hashed per step of the reference (bounds its int64 temporaries).
_BLOCK = 1 << 20


def _splitmix64_mix(z: int) -> int:
    """splitmix64's finaliser on a Python integer (taken modulo 2^64)."""
    z &= _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


def _splitmix64_mix_array(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on uint64 arrays (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_tables(seed: int, depth: int, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The tables ``(T0, T1, T2)`` (uint32, shapes ``[depth, ceil(d / 256)]``, ``[depth, 256]`` and
    ``[depth, ceil(d / 256) + 255]``) of the sketch rows for vectors of ``d`` elements.

    Rows 2p and 2p + 1 take the low and the high half of
    ``splitmix64_mix(seed + (1 + k + 2^32 (3 p + t)) * 0x9E3779B97F4A7C15)`` for entry k of table t,
    with the seed taken modulo 2^64: ``fda::hash::table_pair`` in ``csrc/hash.h``.
    """
    seed = np.uint64(int(seed) & _MASK64)
    high = -(-int(d) // (1 << LOW_BITS))
    sizes = (high, 1 << LOW_BITS, high + (1 << LOW_BITS) - 1)
    tables = []
    with np.errstate(over="ignore"):
        for t, n in enumerate(sizes):
            out = np.empty((depth, n), dtype=np.uint32)
            k = np.arange(n, dtype=np.uint64)
            for p in range((depth + 1) // 2):
                z = _splitmix64_mix_array(seed + (np.uint64(1) + k + (np.uint64(3 * p + t) << np.uint64(32)))
                                    * np.uint64(_GOLDEN))
                out[2 * p] = (z & np.uint64(0xFFFFFFFF)).astype(np.uint32)
                if 2 * p + 1 < depth:
                    out[2 * p + 1] = (z >> np.uint64(32)).astype(np.uint32)
            tables.append(out)
    return tables[0], tables[1], tables[2]


def hash_rows(idx: torch.Tensor, tables, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Buckets (int64, [depth, n]) and signs (int64 +-1, [depth, n]) of int64 indices ``idx``,
    with ``tables`` from :func:`hash_tables`."""
    i = idx.to(torch.int64).numpy()
    a, b = i >> LOW_BITS, i & ((1 << LOW_BITS) - 1)
    t0, t1, t2 = tables
    v = (t0[:, a] ^ t1[:, b] ^ t2[:, a + b]).astype(np.int64)
    if width <= NARROW_MAX_WIDTH:
        sign, bucket = (v >> 15) & 1, ((v & 0x7FFF) * width) >> 15
    else:
        sign, bucket = v >> 31, ((v & 0x7FFFFFFF) * width) >> 31
    return torch.from_numpy(bucket), torch.from_numpy(1 - 2 * sign)


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
        tables = hash_tables(seed, depth, u.numel())
        acc = torch.zeros(depth * width, dtype=torch.float64)
        offsets = (torch.arange(depth, dtype=torch.int64) * width)[:, None]
        for start in range(0, u.numel(), _BLOCK):
            stop = min(start + _BLOCK, u.numel())
            idx = torch.arange(start, stop, dtype=torch.int64)
            buckets, signs = hash_rows(idx, tables, width)
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
