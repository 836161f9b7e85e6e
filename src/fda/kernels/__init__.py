"""Drift-state kernels: ||u||^2, <xi, u> and an AMS sketch of u = w - w0 in one pass.

Public API::

    drift_state(w, w0, *, xi=None, sketch_depth=0, sketch_width=0, seed=0) -> DriftState
    drift_state_out(w, w0, out, *, xi=None, sketch_depth=0, sketch_width=0, seed=0) -> out
        # the same quantities packed as float64 [||u||^2, <xi,u>, sketch...] into `out`, on w's
        # device, with no allocation and no host sync (what fda.Synchronizer uses every step)
    packed_size(sketch_depth, sketch_width) -> 2 + depth * width
    mean_epilogue_(total, divisor, *, ref=None, update=None, copies=())
        # after a sync's sum Allreduce, in one pass: total /= divisor, update = total - ref (old),
        # ref = total, each copy = total (fda.collectives.ExactMean)
    ams_m2(sketch) -> float                # numpy [depth, width]: median over rows of the row sums of squares
    hash_tables(seed, depth, d)            # the sketch rows' hash tables (numpy uint32)
    backend() -> "native" | "reference"

The native op (``torch.ops.fda.drift_state``, built by ``make native`` from ``csrc/``) is used when
its shared library is present in ``_native/``; otherwise a pure-torch reference computes the same
quantities (same hashes) and a warning is issued once. Both native ops have fake (meta) kernels
registered from Python (`torch.library.register_fake`), so `torch.compile` and `torch.library.opcheck`
can trace them.  ``FDA_KERNELS_BACKEND=reference`` forces
the reference.  CUDA tensors with a library built without its CUDA kernel (no nvcc at build time)
also fall back to the reference, with a loud warning: it is slow and, on a GPU, not bit-reproducible.
"""

from __future__ import annotations

import glob
import os
import warnings
from typing import NamedTuple

import numpy as np
import torch

from fda.kernels import reference as _reference
from fda.kernels.reference import MAX_INDEX, ams_m2, hash_tables

__all__ = ["DriftState", "drift_state", "drift_state_out", "mean_epilogue_", "packed_size", "ams_m2",
           "hash_tables", "backend", "cuda_kernel_available", "MAX_INDEX"]

_NATIVE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_native")
_native_state: dict = {"loaded": None, "error": None, "warned": False, "warned_cuda": False}


class DriftState(NamedTuple):
    sqnorm: float  # ||w - w0||^2 (float64 accumulation)
    dot: float | None  # <xi, w - w0>, None without xi
    sketch: torch.Tensor | None  # float32 [depth, width] on w's device, None without a sketch


def _load_native() -> bool:
    if _native_state["loaded"] is None:
        ok, err = False, None
        if os.environ.get("FDA_KERNELS_BACKEND", "").lower() == "reference":
            err = "FDA_KERNELS_BACKEND=reference"
        else:
            libs = sorted(glob.glob(os.path.join(_NATIVE_DIR, "*.so")))
            if not libs:
                err = f"no shared library in {_NATIVE_DIR} (run `make native`)"
            else:
                try:
                    if not hasattr(torch.ops.fda, "drift_state"):
                        torch.ops.load_library(libs[0])
                    torch.ops.fda.drift_state  # noqa: B018 -- raises if the op is missing
                    _register_fakes()
                    ok = True
                except Exception as e:  # noqa: BLE001 -- any load failure means fallback
                    err = f"{type(e).__name__}: {e}"
        _native_state["loaded"], _native_state["error"] = ok, err
    return _native_state["loaded"]


def _register_fakes() -> None:
    """Shape-only (meta) kernels of the mutating ops: they write their outputs and return nothing."""
    for op in ("fda::drift_state_out", "fda::mean_epilogue_"):
        name = op.split("::")[1]
        if hasattr(torch.ops.fda, name) and op not in _native_state.setdefault("fakes", set()):
            torch.library.register_fake(op, _nothing)
            _native_state["fakes"].add(op)


def _nothing(*args, **kwargs) -> None:
    return None


def backend() -> str:
    """``'native'`` when the compiled op is loaded, else ``'reference'``."""
    return "native" if _load_native() else "reference"


def _native_has(device: torch.device, op: str = "drift_state") -> bool:
    if not _load_native() or not hasattr(torch.ops.fda, op):
        return False
    if device.type == "cpu":
        return True
    try:
        key = "CUDA" if device.type == "cuda" else device.type.upper()
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fda::{op}", key)
    except Exception:  # noqa: BLE001
        return False


def cuda_kernel_available() -> bool:
    """True when the loaded native library has the CUDA kernel (built with nvcc against a CUDA torch)."""
    return _native_has(torch.device("cuda"))


def _warn_fallback(device: torch.device) -> None:
    if device.type == "cuda" and _load_native():
        if not _native_state["warned_cuda"]:
            _native_state["warned_cuda"] = True
            warnings.warn("fda.kernels: the tensors are on CUDA but libfda_kernels was built WITHOUT its CUDA "
                          "kernel (no nvcc, or a CPU-only torch, when `make native` ran): using the pure-torch "
                          "reference, which is slow and not bit-reproducible on a GPU. Rebuild on the GPU node "
                          "with nvcc on PATH: `rm -rf build/native && make native` (see docs/cluster.md, section GPU nodes)",
                          RuntimeWarning, stacklevel=3)
    elif not _native_state["warned"]:
        _native_state["warned"] = True
        warnings.warn(f"fda.kernels: native drift_state op unavailable ({_native_state['error']}); "
                      "using the pure-torch reference (slower)", RuntimeWarning, stacklevel=3)


def _check_vector(name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.float32:
        raise TypeError(f"{name} must be float32, got {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D (a flat parameter vector), got shape {tuple(t.shape)}")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")


def _check_int(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"{name} must be an int, got {type(v).__name__}")
    return v


def _check_inputs(w, w0, xi, sketch_depth, sketch_width, seed) -> tuple[int, int, int]:
    _check_vector("w", w)
    _check_vector("w0", w0)
    if xi is not None:
        _check_vector("xi", xi)
    for name, t in (("w0", w0), ("xi", xi)):
        if t is None:
            continue
        if t.device != w.device:
            raise ValueError(f"{name} is on {t.device} but w is on {w.device}")
        if t.numel() != w.numel():
            raise ValueError(f"{name} has {t.numel()} elements but w has {w.numel()}")
    depth = _check_int("sketch_depth", sketch_depth)
    width = _check_int("sketch_width", sketch_width)
    seed = _check_int("seed", seed)
    if depth < 0 or width < 0:
        raise ValueError(f"sketch_depth and sketch_width must be >= 0, got {depth} and {width}")
    if (depth == 0) != (width == 0):
        raise ValueError("sketch_depth and sketch_width must both be > 0 (sketch) or both be 0 "
                         f"(no sketch), got sketch_depth={depth}, sketch_width={width}")
    if depth * width >= 1 << 31:
        raise ValueError(f"the sketch must have fewer than 2^31 entries, got {depth} x {width}")
    if w.numel() > MAX_INDEX:
        raise ValueError(f"vectors longer than 2^31 elements are not supported (got {w.numel()})")
    return depth, width, seed


def _op_seed(seed: int) -> int:
    s = seed & ((1 << 64) - 1)
    return s - (1 << 64) if s >= (1 << 63) else s  # two's complement int64 for the op


def packed_size(sketch_depth: int = 0, sketch_width: int = 0) -> int:
    """Length of `drift_state_out`'s output: sqnorm, dot, then the sketch row-major."""
    return 2 + sketch_depth * sketch_width


def drift_state_out(w: torch.Tensor, w0: torch.Tensor, out: torch.Tensor, *, xi: torch.Tensor | None = None,
                    sketch_depth: int = 0, sketch_width: int = 0, seed: int = 0) -> torch.Tensor:
    """Write ``[||u||^2, <xi,u> (0 without xi), sketch row-major]`` of ``u = w - w0`` into ``out``.

    ``out``: contiguous 1-D float64 of ``packed_size(sketch_depth, sketch_width)`` elements on w's
    device.  No allocation on the native path and no host synchronisation on any path: on a GPU
    the values stay on the device until the caller moves them (fda.Synchronizer packs them with
    the loss and copies ONE buffer per step).  Same values, bit for bit, as :func:`drift_state`.
    """
    depth, width, seed = _check_inputs(w, w0, xi, sketch_depth, sketch_width, seed)
    if not (isinstance(out, torch.Tensor) and out.dtype == torch.float64 and out.dim() == 1
            and out.is_contiguous() and out.numel() == packed_size(depth, width) and out.device == w.device):
        raise ValueError(f"out must be a contiguous 1-D float64 tensor of {packed_size(depth, width)} "
                         f"elements on {w.device}")
    if _native_has(w.device, "drift_state_out"):
        torch.ops.fda.drift_state_out(w, w0, xi, depth, width, _op_seed(seed), out)
    else:
        _warn_fallback(w.device)
        _reference.drift_state_out(w, w0, xi, depth, width, seed, out)
    return out


def mean_epilogue_(total: torch.Tensor, divisor: int, *, ref: torch.Tensor | None = None,
                   update: torch.Tensor | None = None, copies=(), drift: torch.Tensor | None = None) -> torch.Tensor:
    """What a float32 sync does after its sum Allreduce, reading ``total`` once: ``total /= divisor``
    (the mean); ``update = mean - ref`` over update's length, from the OLD ``ref`` (the global
    update, which the caller normalises into the direction xi); ``ref = mean``; every tensor in
    ``copies`` = mean. Contiguous float32 tensors on one device, ``ref`` and the copies as long as
    ``total``, ``update`` no longer. The same bits as the torch sequence ``div_, sub, copy_, ...``
    (float32 true division and subtraction); the native CPU op does it in one pass, which matters
    because a sync is memory-bound. Returns ``total``. ``drift=``: a deprecated name of ``update=``."""
    if drift is not None:
        if update is not None:
            raise TypeError("mean_epilogue_: give update= only (drift= is its deprecated name)")
        warnings.warn("mean_epilogue_(drift=...) is deprecated: use update=", DeprecationWarning, stacklevel=2)
        update = drift
    copies = list(copies)
    if update is not None and ref is None:
        raise ValueError("mean_epilogue_: update needs ref")
    if _native_has(total.device, "mean_epilogue_") and total.device.type == "cpu":
        torch.ops.fda.mean_epilogue_(total, float(divisor), ref, update, copies)
    else:  # CUDA (separate launches of memory-bound ops are cheap there), or no native library
        _reference.mean_epilogue_(total, divisor, ref, update, copies)
    return total


def drift_state(w: torch.Tensor, w0: torch.Tensor, *, xi: torch.Tensor | None = None,
                sketch_depth: int = 0, sketch_width: int = 0, seed: int = 0) -> DriftState:
    """Squared norm, projection on ``xi`` and AMS sketch of ``u = w - w0`` in one pass.

    ``w``, ``w0`` (and ``xi``) must be contiguous 1-D float32 tensors of equal length on the same
    device.  ``sketch_depth`` and ``sketch_width`` must both be > 0 (sketch) or both 0 (no sketch).
    Same ``seed`` -> same hashes on every rank / process / backend.  Returns Python floats (one
    host sync); use :func:`drift_state_out` inside a training step.
    """
    depth, width, seed = _check_inputs(w, w0, xi, sketch_depth, sketch_width, seed)
    if _native_has(w.device):
        stats, sk = torch.ops.fda.drift_state(w, w0, xi, depth, width, _op_seed(seed))
        sq, dt = stats.tolist()
        return DriftState(sq, dt if xi is not None else None, sk if depth > 0 else None)
    _warn_fallback(w.device)
    return DriftState(*_reference.drift_state(w, w0, xi, depth, width, seed))
