"""GPU tests of the CUDA drift-state kernel (csrc/drift_state_cuda.cu); skipped without a GPU.

The documented tolerance against the reference and the shared checks are in cuda_checks.py (the
same checks run the kernel's source on the CPU, under emulation, in
test_drift_state_cuda_emulated.py).  Against the CPU kernel (float32 accumulation) the looser
tolerance of test_drift_state.py applies; on data whose partial sums are exact (small integers) GPU
and CPU agree bit for bit.  The GPU results are bit-reproducible: the same on every run, for every
grid size (FDA_CUDA_GRID), stream and memory offset.
"""

from __future__ import annotations

import pytest
import torch

import fda.kernels as K
from fda.kernels import reference as R
from cuda_checks import check_against_reference, chunk_scaled_vectors, max_width
from cuda_checks import vectors as _cpu_vectors

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU (torch.cuda.is_available() is False)")


@pytest.fixture(autouse=True)
def _native_loaded():
    """torch.ops.fda exists once the facade has loaded libfda_kernels.so."""
    assert K.backend() == "native", f"the native op is not loaded: {K._native_state['error']}"


def _vectors(d, seed, device="cuda", integer=False):
    return _cpu_vectors(d, seed, device=device, integer=integer)


def _packed(w, w0, xi, depth, width, seed=5):
    out = torch.full((2 + depth * width,), float("nan"), dtype=torch.float64, device=w.device)
    torch.ops.fda.drift_state_out(w, w0, xi, depth, width, seed, out)
    return out


def _check_against_reference(w, w0, xi, depth, width, seed=5):
    return check_against_reference(_packed, w, w0, xi, depth, width, seed)


@pytest.mark.parametrize("d", [0, 1, 4095, 4097, 61_706, 1_000_003])
@pytest.mark.parametrize("depth,width", [(0, 0), (1, 1), (5, 250), (3, 1023), (8, 64)])
@pytest.mark.parametrize("with_xi", [True, False])
def test_matches_reference_within_documented_tolerance(d, depth, width, with_xi):
    w, w0, xi = _vectors(d, depth + width)
    _check_against_reference(w, w0, xi if with_xi else None, depth, width)


@pytest.mark.parametrize("depth,width", [(10, 2000), (3, 2000), (20, 4000)])
def test_large_sketches_shared_memory_opt_in_and_row_groups(depth, width):
    """Tables of 16 bytes per entry and row: width 2000 needs 32 KB a row, so 3 rows (96 KB) or
    7 rows (224 KB) per launch use the opt-in shared memory above 48 KB; depth 10 and 20 need
    several launches (row groups)."""
    w, w0, xi = _vectors(300_001, depth)
    _check_against_reference(w, w0, xi, depth, width)


@pytest.mark.parametrize("d,depth,width", [(150_001, 5, 250), (1_000_003, 5, 250), (300_001, 10, 2000),
                                           (3_000_017, 3, 1023)])
@pytest.mark.parametrize("grid", ["1", "3", None])
def test_chunks_with_their_own_scales_match_reference(monkeypatch, d, depth, width, grid):
    """Chunk k scaled by 2^(k mod 23 - 11), several chunks per block (FDA_CUDA_GRID=1, 3): each
    chunk's table must be flushed with its own scale."""
    if grid is None:
        monkeypatch.delenv("FDA_CUDA_GRID", raising=False)
    else:
        monkeypatch.setenv("FDA_CUDA_GRID", grid)
    w, w0, xi = chunk_scaled_vectors(d, depth, device="cuda")
    _check_against_reference(w, w0, xi, depth, width)


def test_shared_memory_opt_in_survives_requests_of_any_order():
    """128 KB, then 64 KB (above the 48 KB default), then 128 KB again, on the same 5-row kernel."""
    w, w0, xi = _vectors(9_000, 10)
    for width in (1600, 800, 1600, 400, 1600):
        _check_against_reference(w, w0, xi, 5, width)


@pytest.mark.parametrize("grid", ["1", "7", None])
def test_non_finite_terms_in_every_unit(monkeypatch, grid):
    """inf, -inf and NaN in many chunks, across unit ends (where the unit flush reads and clears the
    codes that the next unit's atomics set: the barrier before them is what keeps this right;
    bench/gpu_session.sh also runs this under compute-sanitizer --tool racecheck)."""
    if grid is None:
        monkeypatch.delenv("FDA_CUDA_GRID", raising=False)
    else:
        monkeypatch.setenv("FDA_CUDA_GRID", grid)
    w, w0, xi = chunk_scaled_vectors(3_000_017, 12)
    g = torch.Generator().manual_seed(12)
    idx = torch.randint(0, w.numel(), (3000,), generator=g)
    w[idx] = torch.tensor([float("inf"), float("-inf"), float("nan")]).repeat(1000)
    w, w0, xi = w.cuda(), w0.cuda(), xi.cuda()
    out = _packed(w, w0, xi, 5, 250)
    _, _, sk = R.drift_state(w, w0, xi, 5, 250, 5)
    gpu = out[2:].view(5, 250).float()
    assert torch.equal(gpu.isnan(), sk.isnan())
    assert torch.equal(gpu == float("inf"), sk == float("inf"))
    assert torch.equal(gpu == float("-inf"), sk == float("-inf"))
    for _ in range(5):
        assert torch.equal(_packed(w, w0, xi, 5, 250), out)


def test_all_nan_vector_is_flagged():
    w = torch.full((25_000_000,), float("nan"), device="cuda")
    out = _packed(w, torch.zeros_like(w), None, 5, 250)
    assert out[0].isnan().item() and out[2:].isnan().all().item()


def test_width_limit():
    optin = torch.cuda.get_device_properties(0).shared_memory_per_block_optin
    x = torch.zeros(10, device="cuda")
    w = max_width(optin)
    torch.ops.fda.drift_state_out(x, x, None, 1, w, 0, torch.zeros(2 + w, dtype=torch.float64, device="cuda"))
    with pytest.raises(RuntimeError, match="too large for this GPU's shared memory"):
        torch.ops.fda.drift_state_out(x, x, None, 1, w + 1, 0,
                                      torch.zeros(3 + w, dtype=torch.float64, device="cuda"))


def test_norms_do_not_depend_on_the_sketch():
    w, w0, xi = _vectors(2_000_003, 1)
    outs = [_packed(w, w0, xi, dep, wid) for dep, wid in [(0, 0), (5, 250), (10, 2000)]]
    for o in outs[1:]:
        assert torch.equal(o[:2], outs[0][:2])


@pytest.mark.parametrize("depth,width", [(0, 0), (5, 250), (10, 2000)])
def test_bits_identical_across_runs_and_grid_sizes(monkeypatch, depth, width):
    w, w0, xi = _vectors(3_000_017, 2)
    monkeypatch.delenv("FDA_CUDA_GRID", raising=False)
    first = _packed(w, w0, xi, depth, width)
    for _ in range(3):
        assert torch.equal(_packed(w, w0, xi, depth, width), first)
    for grid in (1, 2, 3, 7, 64, 131, 1000, 100_000):
        monkeypatch.setenv("FDA_CUDA_GRID", str(grid))
        assert torch.equal(_packed(w, w0, xi, depth, width), first), f"FDA_CUDA_GRID={grid}"


def test_offset_views_give_the_same_bits():
    d = 1_000_003
    w, w0, xi = _vectors(d, 3)
    ref = _packed(w, w0, xi, 5, 250)
    for off in (1, 2, 3, 5):
        big = torch.empty(3 * (d + off), device="cuda")
        wv, w0v, xv = (big[k * (d + off) + off:(k + 1) * (d + off)] for k in range(3))
        wv.copy_(w)
        w0v.copy_(w0)
        xv.copy_(xi)
        assert wv.is_contiguous() and wv.storage_offset() % 4 != 0  # not 16-byte aligned
        assert torch.equal(_packed(wv, w0v, xv, 5, 250), ref)


def test_runs_on_the_current_stream():
    """Inputs written on a side stream after a long sleep: the op must wait for them, i.e. run on
    that (current) stream, not the default one."""
    d = 1_000_003
    w, w0, xi = _vectors(d, 4)
    ref = _packed(w, w0, xi, 5, 250)
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        wl, w0l, xil = torch.zeros_like(w), torch.zeros_like(w0), torch.zeros_like(xi)
        out = torch.full_like(ref, float("nan"))
        torch.cuda._sleep(200_000_000)  # ~0.1 s of GPU time on this stream
        wl.copy_(w)
        w0l.copy_(w0)
        xil.copy_(xi)
        torch.ops.fda.drift_state_out(wl, w0l, xil, 5, 250, 5, out)
    s.synchronize()
    assert torch.equal(out, ref)


def test_out_variant_allocates_nothing_and_never_syncs():
    """drift_state_out can be captured in a CUDA graph (any host synchronisation or cudaMalloc
    during capture would fail it) and replays to the same bits as drift_state."""
    w, w0, xi = _vectors(500_001, 6)
    stats, sk = torch.ops.fda.drift_state(w, w0, xi, 5, 250, 5)
    out = torch.full((2 + 5 * 250,), float("nan"), dtype=torch.float64, device="cuda")
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up (occupancy and shared-memory attributes are cached)
        torch.ops.fda.drift_state_out(w, w0, xi, 5, 250, 5, out)
    torch.cuda.current_stream().wait_stream(s)
    out.fill_(float("nan"))
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        torch.ops.fda.drift_state_out(w, w0, xi, 5, 250, 5, out)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out[:2], stats)
    assert torch.equal(out[2:], sk.reshape(-1).double())


def test_cuda_matches_cpu_bitwise_on_integer_data():
    w, w0, _ = _vectors(1_000_000, 7, device="cpu", integer=True)
    c = torch.ops.fda.drift_state(w, w0, None, 7, 1000, 3)
    g = torch.ops.fda.drift_state(w.cuda(), w0.cuda(), None, 7, 1000, 3)
    assert torch.equal(g[0].cpu(), c[0]) and torch.equal(g[1].cpu(), c[1])


def test_non_finite_terms_propagate_like_the_reference():
    w, w0, xi = _vectors(100_000, 8)
    w[17] = float("inf")
    w[40_000] = float("-inf")
    w[99_999] = float("nan")
    out = _packed(w, w0, xi, 5, 250)
    sq, dot, sk = R.drift_state(w, w0, xi, 5, 250, 5)
    gpu = out[2:].view(5, 250).float()
    assert torch.equal(gpu.isnan(), sk.isnan())
    assert torch.equal(gpu.isinf() & (gpu > 0), sk.isinf() & (sk > 0))
    assert torch.equal(gpu.isinf() & (gpu < 0), sk.isinf() & (sk < 0))
    assert bool(gpu.isfinite().sum() > 1000)  # only the touched buckets
    assert out[0].isnan().item()


def test_rejects_a_buffer_on_another_device_and_too_wide_sketches():
    x = torch.zeros(10, device="cuda")
    with pytest.raises(RuntimeError, match="is on"):
        torch.ops.fda.drift_state_out(x, x, None, 2, 3, 0, torch.zeros(8, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="too large for this GPU's shared memory"):
        torch.ops.fda.drift_state_out(x, x, None, 1, 1 << 20, 0,
                                      torch.zeros(2 + (1 << 20), dtype=torch.float64, device="cuda"))


def test_profiling_variants_run():
    """Only in the benchmark build (cmake -DFDA_BENCHMARK=ON), which bench/kernel.py makes."""
    try:
        torch.ops.fda._drift_state_profile
    except (AttributeError, RuntimeError):
        pytest.skip("not the benchmark build: no fda::_drift_state_profile")
    w, w0, _ = _vectors(100_000, 9)
    for mode in (1, 2):
        stats, sk = torch.ops.fda._drift_state_profile(w, w0, 5, 250, 1, mode)
        assert sk.shape == (5, 250) and stats.shape == (2,)
    with pytest.raises(RuntimeError, match="depth must be 5"):
        torch.ops.fda._drift_state_profile(w, w0, 3, 250, 1, 1)


def test_facade_uses_the_cuda_kernel():
    assert K._native_has(torch.device("cuda"), "drift_state_out"), "libfda_kernels.so was built without CUDA"
