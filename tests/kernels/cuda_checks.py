"""Checks shared by the CUDA kernel's tests on a GPU (test_drift_state_cuda.py) and on the CPU
under emulation (test_drift_state_cuda_emulated.py): both run csrc/drift_state_cuda.cu.

Documented tolerance (against the exact sketch, i.e. the float64 reference rounded to float32), per
bucket b of a row, with A_b = sum of |u_i| over the bucket's elements and L1(c) the L1 norm of u over
element i's chunk c (CHUNK consecutive indices):

    |gpu_b - ref_b| <= 2^-30 * sum_{i in b} L1(c(i))  +  2^-24 * A_b  +  2^-23 * |ref_b|

(quantisation to the chunk's fixed-point grid, half a step 2^-(s+1) <= L1(c) 2^-30 per term; float32
rounding of the unit partials; the final rounding of both results).  Squared norm and dot are
float64 sums in another order than the reference's: relative 1e-12.
"""

from __future__ import annotations

import pytest
import torch

import fda.kernels as K
from fda.kernels import reference as R

CHUNK = 4096  # kChunk of drift_state_cuda.cu (256 threads x 16 elements)


def vectors(d, seed, device="cpu", integer=False):
    g = torch.Generator().manual_seed(4321 + seed + 13 * d)
    if integer:  # u_i in {-3..3}: every partial sum is exact
        w = torch.randint(-3, 4, (d,), generator=g).float()
        w0 = torch.zeros(d)
    else:  # drift sizes spread over orders of magnitude
        w = torch.randn(d, generator=g)
        w0 = w + 1e-2 * torch.randn(d, generator=g) * torch.rand(d, generator=g).pow(4)
    xi = torch.randn(d, generator=g)
    xi /= xi.norm().clamp_min(1e-30)
    return w.to(device), w0.to(device), xi.to(device)


def chunk_scaled_vectors(d, seed, device="cpu"):
    """vectors() with chunk k (CHUNK elements) of w and w0 scaled by 2^(k mod 23 - 11): every chunk
    gets its own fixed-point scale, so a chunk table flushed with another chunk's scale, or two
    chunks' tables mixed, changes the result."""
    w, w0, xi = vectors(d, seed)
    scale = torch.pow(2.0, ((torch.arange(d) // CHUNK) % 23 - 11).float())
    return (w * scale).to(device), (w0 * scale).to(device), xi.to(device)


def max_width(smem_optin, reserve=2048):
    """The widest sketch the CUDA kernel takes: one row's tables (24 bytes an entry: the float64 unit
    table and two int32 chunk tables of a positive and a negative half) and its non-finite codes
    (1 KB per 4096 entries) within the opt-in shared memory less the reserve."""
    w = (smem_optin - reserve) // 24
    while w > 0 and 24 * w + 1024 * -(-w // 4096) > smem_optin - reserve:
        w -= 1
    return w


def sketch_tolerance(u, depth, width, seed, ref):
    """The documented per-bucket bound, [depth, width] float64."""
    d = u.numel()
    idx = torch.arange(d, device=u.device)
    u64 = u.double()
    chunk_l1 = torch.zeros((d + CHUNK - 1) // CHUNK, dtype=torch.float64, device=u.device)
    chunk_l1.index_add_(0, idx // CHUNK, u64.abs())
    l1_of_i = chunk_l1[idx // CHUNK]
    buckets, _ = R.hash_rows(idx.cpu(), K.hash_tables(seed, depth, d), width)
    buckets = buckets.to(u.device)
    quant = torch.zeros(depth, width, dtype=torch.float64, device=u.device)
    mass = torch.zeros(depth, width, dtype=torch.float64, device=u.device)
    for r in range(depth):
        quant[r].index_add_(0, buckets[r], l1_of_i)
        mass[r].index_add_(0, buckets[r], u64.abs())
    return 2.0**-30 * quant + 2.0**-24 * mass + 2.0**-23 * ref.double().abs() + 1e-300


def check_against_reference(run, w, w0, xi, depth, width, seed=5):
    """run(w, w0, xi, depth, width, seed) -> the packed float64 output; checks it against the
    reference within the documented tolerance and returns it."""
    out = run(w, w0, xi, depth, width, seed)
    assert out.shape == (2 + depth * width,) and out.dtype == torch.float64
    assert not out.isnan().any(), "an output element was not written"
    sq, dot, sk = R.drift_state(w, w0, xi, depth, width, seed)
    assert out[0].item() == pytest.approx(sq, rel=1e-12, abs=1e-300)
    if xi is None:
        assert out[1].item() == 0.0
    else:
        assert abs(out[1].item() - dot) <= 1e-12 * float((w - w0).abs().double().sum()) + 1e-300
    if depth:
        got = out[2:].view(depth, width)
        assert torch.equal(got.float().double(), got)  # float32 values, widened
        tol = sketch_tolerance(w - w0, depth, width, seed, sk)
        err = (got - sk.double()).abs()
        assert bool((err <= tol).all()), f"max err/tol {float((err / tol).max()):.3g}"
    return out
