"""The CUDA kernel's real source (csrc/drift_state_cuda.cu: kernels, launch plan, finalize) run on
the CPU under an emulation of CUDA (tests/kernels/cuda_emu/: threads as cooperative fibers,
__syncthreads and warp shuffles as barriers, blocks one after the other), so that its logic is
tested where there is no GPU: results against the reference within the documented tolerance
(cuda_checks.py), bit equality across grid sizes and devices, row groups, non-finite inputs.  What
emulation cannot show (races, the memory model, speed) is left to test_drift_state_cuda.py on a GPU.

Two builds: the production constants, and small tiles and units (FDA_CUDA_MAX_TILES_LOG2=3,
FDA_CUDA_UNIT_BUDGET_LOG2=12) so that multi-chunk tiles and multi-tile units occur at small sizes.
"""

from __future__ import annotations

import ctypes
import hashlib
import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import fda.kernels as K
from cuda_checks import check_against_reference, chunk_scaled_vectors, max_width, vectors

REPO = Path(__file__).resolve().parents[2]
CSRC = REPO / "src/fda/kernels/csrc"
EMU = Path(__file__).resolve().parent / "cuda_emu"
BUILD = REPO / "build/cuda-emu"
SMALL = ["-DFDA_CUDA_MAX_TILES_LOG2=3", "-DFDA_CUDA_UNIT_BUDGET_LOG2=12"]

pytestmark = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or shutil.which("g++") is None,
                                reason="the CUDA emulation needs x86-64 and g++")


def _build(name: str, flags: list[str]) -> ctypes.CDLL:
    """Compiles the emulation once per source version (cached in build/cuda-emu/)."""
    sources = [CSRC / "drift_state_cuda.cu", CSRC / "hash.h", CSRC / "drift_state.h",
               EMU / "cuda_runtime.h", EMU / "emulate.cpp"]
    key = hashlib.sha256(b"".join(p.read_bytes() for p in sources) + " ".join(flags).encode()).hexdigest()[:16]
    lib = BUILD / f"libemu_{name}_{key}.so"
    if not lib.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        for old in BUILD.glob(f"libemu_{name}_*.so"):
            old.unlink()
        cu = (CSRC / "drift_state_cuda.cu").read_text()
        inc = BUILD / f"{name}/drift_state_cuda_emu.inc"
        inc.parent.mkdir(exist_ok=True)
        inc.write_text(cu.replace("extern __shared__", "extern").replace("__shared__", "static"))
        tmp = lib.with_suffix(".tmp")
        cmd = ["g++", "-std=c++20", "-O2", "-fPIC", "-shared", "-D__CUDACC__", "-DFDA_PROFILING", *flags, f"-I{inc.parent}",
               f"-I{EMU}", f"-I{CSRC}", str(EMU / "emulate.cpp"), "-o", str(tmp)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-4000:]
        tmp.rename(lib)
    dll = ctypes.CDLL(str(lib))
    dll.emu_drift_state.argtypes = [ctypes.c_void_p] * 3 + [ctypes.c_int64, ctypes.c_int, ctypes.c_uint32,
                                                             ctypes.c_uint64, ctypes.c_int, ctypes.c_void_p]
    dll.emu_max_width.restype = ctypes.c_longlong
    dll.emu_take_races.restype = ctypes.c_longlong
    dll.emu_set_device.argtypes = [ctypes.c_int] * 3
    return dll


def _device(dll, sms=132, smem_optin=227 * 1024, blocks_per_sm=2):  # an H100 by default
    dll.emu_set_device(sms, smem_optin, blocks_per_sm)
    return dll


@pytest.fixture(scope="module")
def emu():
    """The production build."""
    return _device(_build("default", []))


@pytest.fixture(scope="module")
def emu_small():
    """Small tiles (at most 8) and units (4096 floats of partials)."""
    return _device(_build("small", SMALL))


def _runner(dll, mode=0):
    def run(w, w0, xi, depth, width, seed):
        out = torch.full((2 + depth * width,), float("nan"), dtype=torch.float64)
        rc = dll.emu_drift_state(w.data_ptr(), w0.data_ptr(), None if xi is None else xi.data_ptr(), w.numel(),
                                 depth, width, seed & (2**64 - 1), mode, out.data_ptr())
        assert rc == 0, f"launcher returned cudaError {rc}"
        return out
    return run


@pytest.mark.parametrize("d", [0, 1, 4097, 61_706, 150_001])
@pytest.mark.parametrize("depth,width", [(0, 0), (1, 1), (5, 250), (3, 1023), (8, 64)])
def test_matches_reference_within_documented_tolerance(emu, d, depth, width):
    w, w0, xi = vectors(d, depth + width)
    check_against_reference(_runner(emu), w, w0, xi if d % 2 else None, depth, width)


@pytest.mark.parametrize("depth,width", [(0, 0), (5, 250), (3, 1023)])
def test_small_tiles_and_units_match_reference(emu_small, depth, width):
    w, w0, xi = vectors(150_001, depth)  # 37 chunks: tiles of 5 chunks, units of 3 tiles
    check_against_reference(_runner(emu_small), w, w0, xi, depth, width)


@pytest.mark.parametrize("seed", [0, -5, (1 << 63) + 12345])
def test_seeds_give_the_reference_hashes(emu, seed):
    w, w0, _ = vectors(20_000, 1, integer=True)
    out = _runner(emu)(w, w0, None, 3, 97, seed)
    sk = K.drift_state(w, w0, sketch_depth=3, sketch_width=97, seed=seed).sketch
    assert torch.equal(out[2:], sk.reshape(-1).double())  # integer data: exact, so equal to the CPU's


@pytest.mark.parametrize("depth,width", [(10, 2000), (20, 1500)])
def test_row_groups_and_devices_give_the_same_bits(emu, depth, width):
    """Width 2000 needs 32 KB of shared memory a row: 7 rows a launch on an H100 (227 KB opt-in),
    5 on an A100 (163 KB), 3 on a 99 KB GPU; width 1500 (24 KB a row): 8, 6 and 4 rows.  The bits
    must not depend on the device."""
    w, w0, xi = vectors(20_001, depth)
    h100 = check_against_reference(_runner(emu), w, w0, xi, depth, width)
    try:
        a100 = _runner(_device(emu, 108, 163 * 1024, 3))(w, w0, xi, depth, width, 5)
        small = _runner(_device(emu, 16, 99 * 1024, 1))(w, w0, xi, depth, width, 5)
    finally:
        _device(emu)
    assert torch.equal(a100, h100) and torch.equal(small, h100)


@pytest.mark.parametrize("build,depth,width", [("small", 0, 0), ("small", 5, 250), ("default", 5, 250),
                                                 ("default", 10, 2000)])
def test_bits_identical_across_grid_sizes(request, monkeypatch, build, depth, width):
    """FDA_CUDA_GRID forces the number of blocks (1: one block does everything)."""
    w, w0, xi = vectors(150_001, 2)
    monkeypatch.delenv("FDA_CUDA_GRID", raising=False)
    run = _runner(request.getfixturevalue("emu_small" if build == "small" else "emu"))
    first = run(w, w0, xi, depth, width, 5)
    for grid in (1, 2, 3, 5, 17, 100_000):
        monkeypatch.setenv("FDA_CUDA_GRID", str(grid))
        assert torch.equal(run(w, w0, xi, depth, width, 5), first), f"FDA_CUDA_GRID={grid}"


def test_norms_do_not_depend_on_the_sketch(emu):
    w, w0, xi = vectors(50_003, 1)
    run = _runner(emu)
    outs = [run(w, w0, xi, dep, wid, 5) for dep, wid in [(0, 0), (5, 250), (10, 2000)]]
    for o in outs[1:]:
        assert torch.equal(o[:2], outs[0][:2])


def test_equals_the_cpu_kernel_bitwise_on_integer_data(emu):
    w, w0, _ = vectors(50_000, 7, integer=True)
    cpu = K.drift_state(w, w0, sketch_depth=7, sketch_width=1000, seed=3)
    out = _runner(emu)(w, w0, None, 7, 1000, 3)
    assert out[0].item() == cpu.sqnorm and torch.equal(out[2:], cpu.sketch.reshape(-1).double())


def test_non_finite_terms_propagate_like_the_reference(emu):
    from fda.kernels import reference as R
    w, w0, xi = vectors(30_000, 8)
    w[17], w[20_000], w[29_999] = float("inf"), float("-inf"), float("nan")
    w[5000], w0[5000] = float("inf"), float("inf")  # inf - inf: NaN
    out = _runner(emu)(w, w0, xi, 5, 250, 5)
    sq, dot, sk = R.drift_state(w, w0, xi, 5, 250, 5)
    got = out[2:].view(5, 250).float()
    assert torch.equal(got.isnan(), sk.isnan())
    assert torch.equal(got == float("inf"), sk == float("inf"))
    assert torch.equal(got == float("-inf"), sk == float("-inf"))
    assert int(got.isfinite().sum()) >= 5 * 250 - 20
    assert out[0].isnan().item() and out[1].isnan().item()


def test_width_limit_and_profiling_variants(emu):
    assert emu.emu_max_width() == max_width(227 * 1024)
    w, w0, _ = vectors(10_000, 9)
    out = torch.empty(2 + 20_000, dtype=torch.float64)
    assert emu.emu_drift_state(w.data_ptr(), w0.data_ptr(), None, w.numel(), 1, 20_000, 0, 0, out.data_ptr()) != 0
    for mode in (1, 2):
        assert not _runner(emu, mode)(w, w0, None, 5, 250, 1).isnan().any()
    assert emu.emu_drift_state(w.data_ptr(), w0.data_ptr(), None, w.numel(), 3, 250, 0, 1, out.data_ptr()) != 0


@pytest.mark.parametrize("build,d,depth,width", [("small", 150_001, 5, 250), ("small", 150_001, 3, 1023),
                                                 ("default", 150_001, 5, 250), ("default", 300_001, 10, 2000),
                                                 ("default", 61_706, 8, 64)])
@pytest.mark.parametrize("grid", ["1", "3", None])
def test_chunks_with_their_own_scales_match_reference(request, monkeypatch, build, d, depth, width, grid):
    """Several chunks per block (FDA_CUDA_GRID=1 and 3; small units), each chunk of another order of
    magnitude: the two chunk tables, their flush and the unit partials must keep every chunk's scale."""
    if grid is None:
        monkeypatch.delenv("FDA_CUDA_GRID", raising=False)
    else:
        monkeypatch.setenv("FDA_CUDA_GRID", grid)
    w, w0, xi = chunk_scaled_vectors(d, depth)
    run = _runner(request.getfixturevalue("emu_small" if build == "small" else "emu"))
    check_against_reference(run, w, w0, xi, depth, width)


def test_shared_memory_opt_in_survives_requests_of_any_order(emu):
    """The opt-in attribute is per kernel: a large table (128 KB), then a smaller one above 48 KB
    (64 KB), then the large one again must all launch (the same kernel, 5 rows)."""
    _device(emu)  # a fresh device: nothing cached
    w, w0, xi = vectors(9_000, 10)
    run = _runner(emu)
    for width in (1600, 800, 1600, 400, 1600):
        check_against_reference(run, w, w0, xi, 5, width)


@pytest.mark.parametrize("grid", ["1", "2", None])
def test_non_finite_codes_across_unit_ends_without_races(emu_small, monkeypatch, grid):
    """Non-finite terms in the first chunks of units whose predecessors also had some: the unit
    flush reads and clears the codes while the next unit's codes are OR-ed in, and only the barrier
    before those atomics keeps them apart (the emulation counts any access pair between the same
    two barriers by two threads to one code word, one of them atomic)."""
    from fda.kernels import reference as R
    if grid is None:
        monkeypatch.delenv("FDA_CUDA_GRID", raising=False)
    else:
        monkeypatch.setenv("FDA_CUDA_GRID", grid)
    d = 150_001
    w, w0, xi = chunk_scaled_vectors(d, 11)
    unit = 15 * 4096  # the small build: units of 3 tiles of 5 chunks
    g = torch.Generator().manual_seed(11)
    for start in (0, unit, 2 * unit):
        for k, v in zip(torch.randint(0, 4096, (12,), generator=g).tolist(),
                        [float("inf"), float("-inf"), float("nan")] * 4):
            if start + k < d:
                w[start + k] = v
    emu_small.emu_take_races()
    out = _runner(emu_small)(w, w0, xi, 5, 250, 5)
    assert emu_small.emu_take_races() == 0
    _, _, sk = R.drift_state(w, w0, xi, 5, 250, 5)
    got = out[2:].view(5, 250).float()
    assert torch.equal(got.isnan(), sk.isnan())
    assert torch.equal(got == float("inf"), sk == float("inf"))
    assert torch.equal(got == float("-inf"), sk == float("-inf"))
    fin = sk.isfinite()
    assert bool((got[fin] - sk[fin]).abs().le(1e-3 * sk[fin].abs() + 1e-3).all())


def test_all_nan_vector(emu):
    """The diverged case: every term NaN (the codes path for all of them)."""
    w = torch.full((20_000,), float("nan"))
    out = _runner(emu)(w, torch.zeros_like(w), None, 5, 250, 5)
    assert out[0].isnan().item() and out[1].item() == 0.0  # no xi: the dot is 0
    assert out[2:].isnan().all()  # 20,000 terms: every bucket of every row is hit
