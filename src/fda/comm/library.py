"""What the loaded MPI library is and can do: its version, its thread level, CUDA device pointers."""
from __future__ import annotations

import ctypes
import os

from mpi4py import MPI

_THREAD_LEVELS = {MPI.THREAD_SINGLE: "SINGLE", MPI.THREAD_FUNNELED: "FUNNELED",
                  MPI.THREAD_SERIALIZED: "SERIALIZED", MPI.THREAD_MULTIPLE: "MULTIPLE"}


def mpi_cuda_support() -> bool:
    """True when the loaded MPI library says it can take CUDA device pointers.

    The symbol is looked up through mpi4py's extension module: libmpi is its dependency,
    loaded RTLD_LOCAL, so it is not in the global namespace that CDLL(None) searches.
    FDA_MPI_CUDA_AWARE=1|0 overrides the answer for libraries that can't report it.
    """
    forced = os.environ.get("FDA_MPI_CUDA_AWARE", "").strip().lower()
    if forced in ("1", "true", "yes"):
        return True
    if forced in ("0", "false", "no"):
        return False
    try:
        lib = ctypes.CDLL(MPI.__file__)
        fn = lib.MPIX_Query_cuda_support
    except (AttributeError, OSError):
        return False
    fn.restype = ctypes.c_int
    try:
        return bool(fn())
    except Exception:  # pragma: no cover - a broken MPI library
        return False


def resolve_gpu_aware(mode: str) -> bool:
    """gpu_aware_mpi ('auto' | 'true' | 'false') -> whether CUDA buffers go to MPI directly."""
    supported = mpi_cuda_support()
    if mode == "true" and not supported:
        raise ValueError("gpu_aware_mpi=true, but this MPI library does not report CUDA support "
                         "(MPIX_Query_cuda_support); use gpu_aware_mpi=auto or false")
    return supported if mode == "auto" else mode == "true"


def library_version() -> str:
    """The first line of the MPI library's version string, whitespace collapsed."""
    return " ".join(MPI.Get_library_version().strip().splitlines()[0].split())


def thread_level() -> str:
    """The thread support MPI was initialised with: SINGLE, FUNNELED, SERIALIZED or MULTIPLE."""
    level = MPI.Query_thread()
    return _THREAD_LEVELS.get(level, str(level))


def threads_may_call_mpi() -> bool:
    """True at MPI_THREAD_MULTIPLE, which the failure watcher thread needs beside the main thread."""
    return MPI.Query_thread() >= MPI.THREAD_MULTIPLE
