"""`Comm`: an MPI communicator with the operations the trainer needs.

Every collective goes through one helper (`Comm._collective`): it marks where this rank is for
the stall protocol, makes the MPI call and counts its bytes. Tensors on a GPU are handed to MPI
directly when the library is CUDA-aware, else staged through one pinned host buffer per dtype.
"""
from __future__ import annotations

import socket
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
from mpi4py import MPI

from fda import preemption
from fda.comm.failures import FailureWatcher, record_within
from fda.comm.library import resolve_gpu_aware
from fda.comm.pending import PendingAllreduce
from fda.comm.placement import device_for_local_rank, node_local
from fda.comm.stalls import Position
from fda.comm.stops import Stops

_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}


@dataclass
class ByteCounter:
    """Bytes that MPI calls moved, summed over ranks, by purpose."""
    by_kind: dict = field(default_factory=dict)

    def add(self, kind: str, nbytes: int) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + nbytes

    def get(self, kind: str) -> int:
        return self.by_kind.get(kind, 0)


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


class Comm:
    """An MPI communicator with byte accounting, staging, and the failure and stall protocols.

    Collective byte accounting (`bytes`): an Allreduce of n bytes over P ranks is counted as
    2*n*P, every rank's buffer up and the result down, which is the paper's model applied to the
    buffers the calls really passed; a broadcast of n bytes as n*(P-1).
    """

    def __init__(self, comm: MPI.Comm | None = None, *, gpu_aware: str = "auto"):
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.host = socket.gethostname()
        self.local_rank, self.local_size = node_local(self.comm, self.rank)
        self.bytes = ByteCounter()
        self.cuda_aware = resolve_gpu_aware(gpu_aware)
        self._staging: dict = {}
        self._async_staging: dict = {}
        self._watcher: FailureWatcher | None = None
        self._failure_callback: Callable[[int, str], None] | None = None
        self.position = Position(since=time.monotonic())
        self.stall_timeout: float | None = None  # seconds; None: off (set_stall_timeout)
        self.stops = Stops()

    def device_for_rank(self, requested: str = "auto") -> torch.device:
        """Node-local rank -> CUDA device (round robin), or the CPU."""
        return device_for_local_rank(self.local_rank, requested, self.host)

    # ------------------------------------------------------------- the one helper
    def _collective(self, what: str, call: Callable, *args, kind: str | None = None, nbytes: int = 0, **kw):
        """Make one MPI call, marked as collective `what` for the stall protocol; count `nbytes`
        under `kind` (None: not counted). Returns what the call returns."""
        self.position.enter(what)
        try:
            result = call(*args, **kw)
        finally:
            self.position.leave()
        if kind is not None:
            self.bytes.add(kind, nbytes)
        return result

    def _allreduce(self, buf, nbytes: int, op: str, kind: str) -> None:
        self._collective(f"{kind} Allreduce", self.comm.Allreduce, MPI.IN_PLACE, buf, op=_OPS[op],
                         kind=kind, nbytes=2 * nbytes * self.size)

    # ----------------------------------------------------------------- staging
    @contextmanager
    def _mpi_view(self, t: torch.Tensor) -> Iterator[np.ndarray | torch.Tensor]:
        """What to hand MPI for `t`: the tensor itself (CPU, or GPU with CUDA-aware MPI), or a pinned
        host copy that is copied back into `t` afterwards."""
        if t.device.type == "cpu":
            yield t.numpy()
            return
        if self.cuda_aware:
            torch.cuda.current_stream().synchronize()
            yield t
            return
        host = self._pinned(t.numel(), t.dtype)
        host.copy_(t.reshape(-1))
        yield host.numpy()
        t.copy_(host.view_as(t))

    def _pinned_for_async(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A pinned host buffer of its own for a non-blocking Allreduce, one per (dtype, size) and
        reused: an overlapped sync sends messages of the same sizes every time, one at a time."""
        key = (dtype, numel)
        if key not in self._async_staging:
            self._async_staging[key] = torch.empty(numel, dtype=dtype, pin_memory=True)
        return self._async_staging[key]

    def _pinned(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A pinned host staging view of `numel` elements: ONE buffer per dtype, grown to the largest
        request (the flat model, for a sync) and reused, so pinned memory stays bounded."""
        buf = self._staging.get(dtype)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, pin_memory=True)
            self._staging[dtype] = buf
        return buf[:numel]

    # ------------------------------------------------------------- collectives
    def allreduce_to_host(self, t: torch.Tensor, op: str = "sum", kind: str = "state") -> np.ndarray:
        """Allreduce a small 1-D float64 tensor and return the result on the host, with ONE
        device->host copy for a CUDA tensor: of the local values before MPI (staged), or of the
        reduced values after an Allreduce in device memory (GPU-aware MPI)."""
        if t.device.type != "cpu" and self.cuda_aware:
            reduced = t.clone()
            torch.cuda.current_stream().synchronize()
            self._allreduce(reduced, _nbytes(t), op, kind)
            return reduced.cpu().numpy()
        if t.device.type == "cpu":
            arr = t.numpy().copy()  # the caller's buffer stays its local values
        else:
            staged = self._pinned(t.numel(), t.dtype)
            staged.copy_(t)
            arr = staged.numpy()
        self._allreduce(arr, arr.nbytes, op, kind)
        return arr.copy() if t.device.type != "cpu" else arr

    def iallreduce_to_host(self, t: torch.Tensor, op: str = "sum", kind: str = "state") -> PendingAllreduce:
        """Start a non-blocking Allreduce of a copy of a small tensor, on the host (the caller's
        buffer stays free); its `wait()` gives the reduced values. Every rank must start the same
        non-blocking collectives in the same order."""
        arr = t.detach().to("cpu", copy=True).numpy().reshape(-1)
        request = self._collective(f"{kind} Iallreduce", self.comm.Iallreduce, MPI.IN_PLACE, arr, op=_OPS[op],
                                   kind=kind, nbytes=2 * arr.nbytes * self.size)
        return PendingAllreduce(request, arr, lambda r: self._collective(f"wait on a {kind} Iallreduce", r.Wait))

    def iallreduce_(self, t: torch.Tensor, op: str = "sum", kind: str = "sync", *, fields: bool = False) -> PendingAllreduce:
        """Start a non-blocking in-place Allreduce of a contiguous tensor (a model, for an overlapped
        sync): `t` holds the reduced values once `wait()` returns, and must not be touched before.
        fields: an exact SUM of packed integer fields (see `allreduce_fields_`). A GPU tensor is
        staged through a host buffer of its own (per size), so other collectives may use the staging
        meanwhile; one Iallreduce of a size in flight at a time."""
        if not t.is_contiguous():
            raise ValueError("iallreduce_ needs a contiguous tensor")
        if fields and (t.dtype != torch.uint8 or t.numel() % 8):
            raise ValueError("iallreduce_ of fields needs a uint8 tensor of a multiple of 8 bytes")
        finish = None
        if t.device.type == "cpu":
            buf = t.numpy()
        elif self.cuda_aware:
            torch.cuda.current_stream().synchronize()
            buf = t
        else:
            host = self._pinned_for_async(t.numel(), t.dtype)
            host.copy_(t.reshape(-1))
            buf = host.numpy()
            finish = lambda: t.copy_(host.view_as(t))  # noqa: E731
        message = [buf, t.numel() // 8, MPI.UINT64_T] if fields else buf
        request = self._collective(f"{kind} Iallreduce", self.comm.Iallreduce, MPI.IN_PLACE, message,
                                   op=MPI.SUM if fields else _OPS[op], kind=kind, nbytes=2 * _nbytes(t) * self.size)
        return PendingAllreduce(request, t, lambda r: self._collective(f"wait on a {kind} Iallreduce", r.Wait), finish)

    def allreduce_(self, t: torch.Tensor, op: str = "sum", kind: str = "train") -> torch.Tensor:
        """In-place Allreduce of one contiguous tensor."""
        if not t.is_contiguous():
            raise ValueError("allreduce_ needs a contiguous tensor")
        with self._mpi_view(t) as buf:
            self._allreduce(buf, _nbytes(t), op, kind)
        return t

    def allreduce_fields_(self, t: torch.Tensor, kind: str = "sync") -> torch.Tensor:
        """In-place exact SUM of packed unsigned integer fields. `t` (uint8, a multiple of 8 bytes)
        is reduced as 64-bit unsigned words, so each field is summed on its own as long as no
        field's total exceeds its width (the caller's guarantee): no carry crosses a field, and
        integer addition is exact and order-independent, so every rank gets the same bits."""
        if t.dtype != torch.uint8 or t.numel() % 8 or not t.is_contiguous():
            raise ValueError("allreduce_fields_ needs a contiguous uint8 tensor of a multiple of 8 bytes")
        with self._mpi_view(t) as buf:
            self._collective(f"{kind} Allreduce (integer fields)", self.comm.Allreduce, MPI.IN_PLACE,
                             [buf, t.numel() // 8, MPI.UINT64_T], op=MPI.SUM, kind=kind, nbytes=2 * t.numel() * self.size)
        return t

    def bcast_(self, t: torch.Tensor, root: int = 0, kind: str = "setup") -> torch.Tensor:
        with self._mpi_view(t) as buf:
            self._collective(f"{kind} broadcast", self.comm.Bcast, buf, root=root,
                             kind=kind, nbytes=_nbytes(t) * (self.size - 1))
        return t

    def allreduce_values(self, values, op: str = "sum", kind: str = "log") -> np.ndarray:
        """Allreduce a few float64 numbers (losses, counts)."""
        arr = np.ascontiguousarray(values, dtype=np.float64)
        self._allreduce(arr, arr.nbytes, op, kind)
        return arr

    def bcast_object(self, obj, root: int = 0):
        return self._collective("broadcast", self.comm.bcast, obj, root=root)

    def allgather_object(self, obj) -> list:
        return self._collective("allgather", self.comm.allgather, obj)

    def gather_object(self, obj, root: int = 0) -> list | None:
        """Every rank's `obj` on `root` (in rank order); None on the other ranks."""
        return self._collective("gather", self.comm.gather, obj, root=root)

    def barrier(self) -> None:
        self._collective("barrier", self.comm.Barrier)

    # ------------------------------------------------------------------ stalls
    def set_step(self, step: int) -> None:
        """The training step the next collectives belong to (named when a rank stalls)."""
        self.position.step = step

    def set_stall_timeout(self, seconds: float | None) -> None:
        """A rank that waits in a collective longer than this makes rank 0 ask every rank where it
        is; the ranks that have not reached that collective are named on every rank, the log is
        marked failed (rank 0's failure callback) and the job is aborted. None: never."""
        self.stall_timeout = seconds

    # ------------------------------------------------------------------- stops
    def begin_run(self) -> None:
        """Call on every rank before a run's first step (a Synchronizer does, when it is made): a stop
        agreed for an earlier run on this communicator does not stop this one."""
        self.stops.new_run()

    def stop_requested_after(self, step: int) -> bool:
        """Call at the end of every step, on every rank: stop after this step? True on every rank at
        the same step once any rank got SIGTERM/SIGUSR1 (the stop agreement, `stops`), with no
        collective on this thread. Once per run, while the ranks agree, it may wait for the decision
        (a few watcher polls); then each rank runs on to the agreed step. Call `set_step(step)` at the
        beginning of the step as before."""
        if self.size == 1:
            return preemption.requested()
        if self._watcher is None:
            raise RuntimeError("stop_requested_after needs the failure watcher: call watch_failures() first")
        return self.stops.after(step)

    # ---------------------------------------------------------------- failures
    def watch_failures(self) -> None:
        """Start listening for failures announced by other ranks (see `fail`) and for stalls."""
        if self._watcher is None and self.size > 1:
            self._watcher = FailureWatcher(self)
            self._watcher.start()

    def set_failure_callback(self, cb: Callable[[int, str], None] | None) -> None:
        """What rank 0 runs (failing rank, message) before the job is aborted: e.g. mark the log failed."""
        self._failure_callback = cb

    def record_failure(self, source: int, message: str) -> None:
        """Rank 0: run the failure callback once, never raising (the job must end regardless)."""
        cb, self._failure_callback = self._failure_callback, None
        if self.rank == 0 and cb is not None:
            record_within(cb, source, message)

    def fail(self, message: str, exit_code: int = 1, grace_s: float = 10.0) -> None:
        """End every rank now: print once, tell the others (rank 0 marks the log), then Abort."""
        preemption.abandon(message)
        print(f"fda: error on rank {self.rank}: {message}", file=sys.stderr, flush=True)
        if self.rank == 0:
            self.record_failure(0, message)
        if self.size > 1 and self._watcher is not None:
            self._watcher.announce(message, grace_s)
        sys.stderr.flush()
        sys.stdout.flush()
        self.abort(exit_code)

    def abort(self, exit_code: int = 1) -> None:
        """End every process of this communicator's job at once (MPI_Abort)."""
        self.comm.Abort(exit_code)

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None
