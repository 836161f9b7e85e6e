"""The only module that speaks MPI.

World and node-local ranks, rank -> device binding, flat-buffer collectives with
byte accounting, and the failure path: an exception on any rank ends every rank
promptly (never a hang), after rank 0 has marked the log as failed; and with
`stall_timeout`, a rank that does not reach a collective in time is named on every rank
and the job ends the same way (see `_StallWatch`).
"""
from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from mpi4py import MPI

_ERR_TAG = 77
_ACK_TAG = 78
_STALL_REPORT_TAG, _STALL_QUERY_TAG, _STALL_POSITION_TAG, _STALL_VERDICT_TAG = 79, 80, 81, 82
QUERY_TIMEOUT_S = 5.0  # how long rank 0 waits for the other ranks' positions after a stall
RECORD_TIMEOUT_S = 10.0  # how long rank 0 may take to mark the log failed before the job is aborted
_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}


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


def cpu_threads_for_rank(local_size: int) -> int:
    """Cores given to this rank: the launcher's CPU binding if it set one, else a fair share."""
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        mine = os.cpu_count() or 1
    total = os.cpu_count() or mine
    if mine < total:  # srun --cpus-per-task / mpirun --bind-to bound us: use what we were given
        return max(1, mine)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:  # SLURM without CPU binding (task/none): its count still holds
        return min(int(slurm), total)
    return max(1, total // max(1, local_size))


@dataclass
class ByteCounter:
    """Bytes that MPI calls moved, summed over ranks, by purpose."""
    by_kind: dict = field(default_factory=dict)

    def add(self, kind: str, nbytes: int) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + nbytes

    def get(self, kind: str) -> int:
        return self.by_kind.get(kind, 0)


class RemoteFailure(RuntimeError):
    pass


@dataclass
class Position:
    """Where this rank's main thread is, as far as collectives go (read by the watcher thread).

    seq: collectives entered so far (every rank calls the same sequence, so equal seq = the same
    collective); inside: in collective `seq` now, since `since` (time.monotonic()); what: which;
    step: the training step, as the Synchronizer last set it (0: before the first)."""
    seq: int = 0
    inside: bool = False
    since: float = 0.0
    what: str = ""
    step: int = 0

    def describe(self, now: float) -> str:
        where = f"step {self.step}" if self.step else "before the first step"
        if self.inside:
            return f"in the {self.what} at {where} for {now - self.since:.1f} s"
        return f"at {where}, outside any collective for {now - self.since:.1f} s"


class Comm:
    """An MPI communicator with the operations the trainer needs.

    Collective byte accounting (`bytes`): an Allreduce of n bytes over P ranks is
    counted as 2*n*P, every rank's buffer up and the result down, which is the
    paper's model applied to the buffers the calls really passed.
    """

    def __init__(self, comm: MPI.Comm | None = None, *, gpu_aware: str = "auto"):
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self.host = socket.gethostname()
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank = local.Get_rank()
        self.local_size = local.Get_size()
        local.Free()
        self.bytes = ByteCounter()
        self.cuda_aware = self._resolve_gpu_aware(gpu_aware)
        self._staging: dict = {}
        self._watcher: _FailureWatcher | None = None
        self._failure_callback: Callable[[int, str], None] | None = None
        self.position = Position(since=time.monotonic())
        self.stall_timeout: float | None = None  # seconds; None: off (set_stall_timeout)

    # ------------------------------------------------------------------ set-up
    def _resolve_gpu_aware(self, mode: str) -> bool:
        supported = mpi_cuda_support()
        if mode == "true" and not supported:
            raise ValueError("gpu_aware_mpi=true, but this MPI library does not report CUDA support "
                             "(MPIX_Query_cuda_support); use gpu_aware_mpi=auto or false")
        return supported if mode == "auto" else mode == "true"

    def device_for_rank(self, requested: str = "auto") -> torch.device:
        """Node-local rank -> CUDA device (round robin), or the CPU."""
        if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
            return torch.device("cpu")
        if not torch.cuda.is_available():
            raise ValueError("device=cuda, but torch sees no CUDA device on " + self.host)
        index = self.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)

    # ------------------------------------------------------------- collectives
    def _host_view(self, t: torch.Tensor) -> tuple[np.ndarray | torch.Tensor, torch.Tensor | None]:
        """What to hand MPI: the tensor itself, or a pinned host copy when MPI can't read GPU memory."""
        if t.device.type == "cpu":
            return t.numpy(), None
        if self.cuda_aware:
            torch.cuda.current_stream().synchronize()
            return t, None
        host = self._pinned(t.numel(), t.dtype)
        host.copy_(t.reshape(-1))
        return host.numpy(), host

    def _pinned(self, numel: int, dtype: torch.dtype) -> torch.Tensor:
        """A pinned host staging view of `numel` elements: ONE buffer per dtype, grown to the largest
        request (the flat model, for a sync) and reused, so pinned memory stays bounded."""
        buf = self._staging.get(dtype)
        if buf is None or buf.numel() < numel:
            buf = torch.empty(numel, dtype=dtype, pin_memory=True)
            self._staging[dtype] = buf
        return buf[:numel]

    def allreduce_to_host(self, t: torch.Tensor, op: str = "sum", kind: str = "state") -> np.ndarray:
        """Allreduce a small 1-D float64 tensor and return the result on the host, with ONE
        device->host copy for a CUDA tensor: of the local values before MPI (staged), or of the
        reduced values after an Allreduce in device memory (GPU-aware MPI)."""
        if t.device.type == "cpu":
            arr = t.numpy().copy()  # the caller's buffer stays its local values
        elif self.cuda_aware:
            reduced = t.clone()
            torch.cuda.current_stream().synchronize()
            self._enter(f"{kind} Allreduce")
            self.comm.Allreduce(MPI.IN_PLACE, reduced, op=_OPS[op])
            self._leave()
            self.bytes.add(kind, 2 * t.numel() * t.element_size() * self.size)
            return reduced.cpu().numpy()
        else:
            arr = self._pinned(t.numel(), t.dtype)
            arr.copy_(t)
            arr = arr.numpy()
        self._enter(f"{kind} Allreduce")
        self.comm.Allreduce(MPI.IN_PLACE, arr, op=_OPS[op])
        self._leave()
        self.bytes.add(kind, 2 * arr.nbytes * self.size)
        return arr.copy() if t.device.type != "cpu" else arr

    def allreduce_(self, t: torch.Tensor, op: str = "sum", kind: str = "train") -> torch.Tensor:
        """In-place Allreduce of one contiguous tensor."""
        if not t.is_contiguous():
            raise ValueError("allreduce_ needs a contiguous tensor")
        buf, staged = self._host_view(t)
        self._enter(f"{kind} Allreduce")
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=_OPS[op])
        self._leave()
        if staged is not None:
            t.copy_(staged.view_as(t))
        self.bytes.add(kind, 2 * t.numel() * t.element_size() * self.size)
        return t

    def allreduce_fields_(self, t: torch.Tensor, kind: str = "sync") -> torch.Tensor:
        """In-place exact SUM of packed unsigned integer fields. `t` (uint8, a multiple of 8 bytes)
        is reduced as 64-bit unsigned words, so each field is summed on its own as long as no
        field's total exceeds its width (the caller's guarantee): no carry crosses a field, and
        integer addition is exact and order-independent, so every rank gets the same bits."""
        if t.dtype != torch.uint8 or t.numel() % 8 or not t.is_contiguous():
            raise ValueError("allreduce_fields_ needs a contiguous uint8 tensor of a multiple of 8 bytes")
        buf, staged = self._host_view(t)
        self._enter(f"{kind} Allreduce (integer fields)")
        self.comm.Allreduce(MPI.IN_PLACE, [buf, t.numel() // 8, MPI.UINT64_T], op=MPI.SUM)
        self._leave()
        if staged is not None:
            t.copy_(staged.view_as(t))
        self.bytes.add(kind, 2 * t.numel() * self.size)
        return t

    def bcast_(self, t: torch.Tensor, root: int = 0, kind: str = "setup") -> torch.Tensor:
        buf, staged = self._host_view(t)
        self._enter(f"{kind} broadcast")
        self.comm.Bcast(buf, root=root)
        self._leave()
        if staged is not None:
            t.copy_(staged.view_as(t))
        self.bytes.add(kind, t.numel() * t.element_size() * (self.size - 1))
        return t

    def allreduce_values(self, values, op: str = "sum", kind: str = "log") -> np.ndarray:
        """Allreduce a few float64 numbers (losses, counts)."""
        arr = np.ascontiguousarray(values, dtype=np.float64)
        self._enter(f"{kind} Allreduce")
        self.comm.Allreduce(MPI.IN_PLACE, arr, op=_OPS[op])
        self._leave()
        self.bytes.add(kind, 2 * arr.nbytes * self.size)
        return arr

    def bcast_object(self, obj, root: int = 0):
        self._enter("broadcast")
        try:
            return self.comm.bcast(obj, root=root)
        finally:
            self._leave()

    def allgather_object(self, obj) -> list:
        self._enter("allgather")
        try:
            return self.comm.allgather(obj)
        finally:
            self._leave()

    def barrier(self) -> None:
        self._enter("barrier")
        self.comm.Barrier()
        self._leave()

    # ------------------------------------------------------------------ stalls
    def _enter(self, what: str) -> None:
        p = self.position
        p.seq += 1
        p.what = what
        p.since = time.monotonic()
        p.inside = True

    def _leave(self) -> None:
        self.position.inside = False
        self.position.since = time.monotonic()

    def set_step(self, step: int) -> None:
        """The training step the next collectives belong to (named when a rank stalls)."""
        self.position.step = step

    def set_stall_timeout(self, seconds: float | None) -> None:
        """A rank that waits in a collective longer than this makes rank 0 ask every rank where it
        is; the ranks that have not reached that collective are named on every rank, the log is
        marked failed (rank 0's failure callback) and the job is aborted. None: never."""
        self.stall_timeout = seconds

    # ---------------------------------------------------------------- failures
    def watch_failures(self, on_remote_failure: Callable[[int, str], None] | None = None) -> None:
        """Start listening for failures announced by other ranks (see `fail`)."""
        if on_remote_failure is not None:
            self._failure_callback = on_remote_failure
        if self._watcher is None and self.size > 1:
            self._watcher = _FailureWatcher(self)
            self._watcher.start()

    def set_failure_callback(self, cb: Callable[[int, str], None] | None) -> None:
        """What rank 0 runs (failing rank, message) before the job is aborted: e.g. mark the log failed."""
        self._failure_callback = cb

    def record_failure(self, source: int, message: str) -> None:
        """Rank 0: run the failure callback once, never raising (the job must end regardless)."""
        cb, self._failure_callback = self._failure_callback, None
        if self.rank != 0 or cb is None:
            return

        def record():
            try:
                cb(source, message)
            except Exception as e:  # the log is best effort here
                print(f"fda: rank 0 could not record the failure: {e}", file=sys.stderr, flush=True)
        # bounded: the main thread may hold the log (a flush on a hung file system)
        writer = threading.Thread(target=record, daemon=True, name="fda-record-failure")
        writer.start()
        writer.join(timeout=RECORD_TIMEOUT_S)
        if writer.is_alive():
            print(f"fda: rank 0 could not record the failure within {RECORD_TIMEOUT_S:g} s (the log is busy)",
                  file=sys.stderr, flush=True)

    def fail(self, message: str, exit_code: int = 1, grace_s: float = 10.0) -> None:
        """End every rank now: print once, tell the others (rank 0 marks the log), then Abort."""
        print(f"fda: error on rank {self.rank}: {message}", file=sys.stderr, flush=True)
        if self.rank == 0:
            self.record_failure(0, message)
        if self.size > 1 and self._watcher is not None:
            self._watcher.announce(message, grace_s)
        sys.stderr.flush()
        sys.stdout.flush()
        self.comm.Abort(exit_code)

    def stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher = None


class _FailureWatcher(threading.Thread):
    """A daemon thread that polls a private communicator for 'rank r failed: msg'.

    Polling with sleeps (not a blocking receive) keeps it from spinning a core that
    the training process needs.
    """

    def __init__(self, owner: Comm):
        super().__init__(daemon=True, name="fda-failure-watcher")
        self.owner = owner
        self.errcomm = owner.comm.Dup()
        self._halt = threading.Event()
        self._buf = bytearray(1 << 16)
        self._req = self.errcomm.Irecv(self._buf, source=MPI.ANY_SOURCE, tag=_ERR_TAG)
        self.stalls = _StallWatch(owner, self.errcomm)

    def run(self) -> None:
        status = MPI.Status()
        while not self._halt.is_set():
            if self._req.Test(status):
                n = status.Get_count(MPI.BYTE)
                message = bytes(self._buf[:n]).decode("utf-8", "replace")
                self._handle(status.Get_source(), message)
                return
            self.stalls.poll()
            time.sleep(0.02)

    def _handle(self, source: int, message: str) -> None:
        owner = self.owner
        if owner.rank == 0:
            owner.record_failure(source, message)
            self.errcomm.Send(b"ok", dest=source, tag=_ACK_TAG)
            time.sleep(0.2)
            owner.comm.Abort(1)

    def announce(self, message: str, grace_s: float) -> None:
        """Tell every other rank; wait (bounded) for rank 0 to record it."""
        self._halt.set()
        data = message.encode("utf-8")[: len(self._buf)]
        reqs = [self.errcomm.Isend(data, dest=r, tag=_ERR_TAG)
                for r in range(self.owner.size) if r != self.owner.rank]
        if self.owner.rank != 0:
            ack = bytearray(8)
            ack_req = self.errcomm.Irecv(ack, source=0, tag=_ACK_TAG)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and not ack_req.Test():
                time.sleep(0.01)
        del reqs

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=1.0)
        if not self._req.Test():
            self._req.Cancel()
            self._req.Wait()
        self.errcomm.Free()


class _StallWatch:
    """Stall detection, run by the failure watcher thread of every rank (also while the main thread
    is blocked in a collective or asleep in a data loader).

    A rank inside collective n for more than stall_timeout seconds reports it to rank 0 (once per
    collective). Rank 0 asks every rank where it is (the other watcher threads answer their main
    thread's Position); the ranks that have not reached collective n, or do not answer within
    QUERY_TIMEOUT_S, are late. Rank 0 sends the verdict to every rank, every rank prints it, rank
    0 marks the log failed naming the late ranks, and aborts the job. If every rank reached it, the
    verdict says the collective itself hangs (network or MPI). No message is exchanged until a
    rank has waited stall_timeout: it costs nothing while the run is healthy.
    """

    def __init__(self, owner: Comm, errcomm: MPI.Comm):
        self.owner, self.errcomm = owner, errcomm
        self._reported_seq = 0
        self._sends: list = []
        self._decided = False

    def poll(self) -> None:
        owner, timeout = self.owner, self.owner.stall_timeout
        if not timeout:  # the same setting on every rank: then no rank asks anything
            return
        pos = owner.position
        if pos.inside and pos.seq != self._reported_seq and time.monotonic() - pos.since > timeout:
            self._reported_seq = pos.seq
            report = {"rank": owner.rank, "seq": pos.seq, "step": pos.step, "what": pos.what}
            if owner.rank == 0:
                self._coordinate(report)
            else:
                self._send(report, 0, _STALL_REPORT_TAG)
        status = MPI.Status()
        if owner.rank == 0 and self.errcomm.iprobe(source=MPI.ANY_SOURCE, tag=_STALL_REPORT_TAG, status=status):
            self._coordinate(self.errcomm.recv(source=status.Get_source(), tag=_STALL_REPORT_TAG))
        if self.errcomm.iprobe(source=0, tag=_STALL_QUERY_TAG):
            self.errcomm.recv(source=0, tag=_STALL_QUERY_TAG)
            self._send(self._where(), 0, _STALL_POSITION_TAG)
        if self.errcomm.iprobe(source=0, tag=_STALL_VERDICT_TAG):
            self._say(self.errcomm.recv(source=0, tag=_STALL_VERDICT_TAG))

    def _send(self, obj, dest: int, tag: int) -> None:
        self._sends = [r for r in self._sends if not r.Test()]
        self._sends.append(self.errcomm.isend(obj, dest=dest, tag=tag))

    def _where(self) -> dict:
        p = self.owner.position
        return {"rank": self.owner.rank, "seq": p.seq, "inside": p.inside, "step": p.step,
                "where": p.describe(time.monotonic())}

    def _say(self, verdict: str) -> None:
        print(f"fda: rank {self.owner.rank}: {verdict}", file=sys.stderr, flush=True)

    def _coordinate(self, report: dict) -> None:
        """Rank 0: find the late ranks, tell everyone, record it, abort."""
        owner = self.owner
        if self._decided:
            return
        positions = {0: self._where()}
        for r in range(1, owner.size):
            self._send(report["seq"], r, _STALL_QUERY_TAG)
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        status = MPI.Status()
        while len(positions) < owner.size and time.monotonic() < deadline:
            if self.errcomm.iprobe(source=MPI.ANY_SOURCE, tag=_STALL_POSITION_TAG, status=status):
                reply = self.errcomm.recv(source=status.Get_source(), tag=_STALL_POSITION_TAG)
                positions[reply["rank"]] = reply
            else:
                time.sleep(0.01)
        late = [r for r in range(owner.size) if r not in positions or positions[r]["seq"] < report["seq"]]
        if not late and any(not p["inside"] or p["seq"] != report["seq"] for p in positions.values()):
            self._reported_seq = 0  # it moved on meanwhile: a slow rank, not a stalled one
            return
        self._decided = True
        verdict = _verdict(report, late, positions, owner.stall_timeout)
        for r in range(1, owner.size):
            self._send(verdict, r, _STALL_VERDICT_TAG)
        self._say(verdict)
        owner.record_failure(late[0] if late else report["rank"], verdict)
        time.sleep(0.5)  # let the others print the verdict
        sys.stderr.flush()
        owner.comm.Abort(1)


def _verdict(report: dict, late: list[int], positions: dict, timeout: float) -> str:
    where = f"step {report['step']}" if report["step"] else "before the first step"
    if not late:
        return (f"stall: every rank reached the {report['what']} at {where}, but it has not completed "
                f"within stall_timeout={timeout:g} s (a network or MPI problem)")
    ranks = ", ".join(map(str, late))
    detail = "; ".join(f"rank {r} is {positions[r]['where']}" if r in positions
                       else f"rank {r} does not answer (frozen?)" for r in late)
    plural = "ranks" if len(late) > 1 else "rank"
    return (f"stall: {plural} {ranks} did not reach the {report['what']} at {where} within "
            f"stall_timeout={timeout:g} s ({detail}); the other ranks are waiting there")
