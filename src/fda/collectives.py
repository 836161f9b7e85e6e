"""How a sync's bytes travel: the K workers' models averaged with MPI collectives.

`ExactMean` (sync_compression=none) is the float32 sync of docs/algorithm.md, "The training step": the hosted
workers' flat buffers summed locally, ONE in-place Allreduce, then ONE pass over the sum
(kernels.mean_epilogue_) that divides by K and, when the mean becomes the new global model,
also refreshes w0, the update direction and the other hosted workers' copies.

Both take `becomes_global`: True when the mean IS the new global model (no outer step, nothing
that needs the old w0 afterwards): then every hosted worker's flat buffer and `ref` end as the
new model, and `update` (if given) as new - old over its length (the caller normalises it into
xi). False: only worker 0's flat buffer holds the mean, and the caller finishes the sync.

`QuantizedMean` (int16, int8) is the compressed sync of docs/algorithm.md, "Compressed syncs". Every hosted worker
k sends v_k = u_k + e_k (its drift from the last global flat model w0 plus its error-feedback
residual), quantized; the new global model is w0 + mean_k Q(v_k), and e_k <- v_k - Q(v_k)
keeps what the quantization dropped for the next sync. It stays bit-identical on every rank:
  1. blocks of BLOCK values get a scale s_b = max_k max_b |v_k| agreed with a MAX Allreduce
     of one float32 per block (MAX is exact);
  2. each value becomes an integer q in [-L, L], L = floor((2^bits - 1) / (2K)), stored
     biased (q + L >= 0) in an unsigned field of `bits` bits, so the sum over the K workers,
     at most 2LK <= 2^bits - 1, always fits its field;
  3. the fields are summed by ONE Allreduce of 64-bit unsigned words (Comm.allreduce_fields_):
     integer addition is exact and order-independent, and no carry crosses a field;
  4. every rank decodes the same sums with the same float32 operations: the same new w0.
The arithmetic of steps 1, 2 and 4 is in pure functions (`block_peaks`, `quantize_`,
`decode_mean_`), without communication; `QuantizedMean.average_` adds the two Allreduces.

Both also start a mean without waiting for it (`start_mean`, for an overlapped sync,
sync_delay >= 1): the same arithmetic on the models of the step it starts at, its Allreduces
non-blocking; `advance()` at every later step lets MPI progress them (the compressed mean's
fields are quantized and sent at the first later step, once the scales are known), and
`wait()` gives the mean as a new flat buffer. The workers' own buffers are not touched.
"""
from __future__ import annotations

import math
import warnings

import torch

from fda import kernels
from fda.config import ConfigError
from fda.flat import FlatModel, local_sum, pairwise_sum_
from fda.sync.accounting import FLOAT_BYTES

BLOCK = 4096  # values per quantization scale: 4 bytes of scale per 4096 values (0.1% of an int8 sync)
WIDTHS = {"int16": 16, "int8": 8}
_FIELD_DTYPES = {16: torch.uint16, 8: torch.uint8}


class CollectiveError(RuntimeError):
    """An error every rank detects identically (from Allreduced values): no abort needed."""


def levels(compression: str, workers: int) -> int:
    """L: a worker's quantized values lie in [-L, L] so that the sum over K workers fits the width.
    Raises ConfigError when no L >= 1 exists (K too large for the width)."""
    bits = WIDTHS[compression]
    L = (2 ** bits - 1) // (2 * workers)
    if L < 1:
        most = (2 ** bits - 1) // 2
        raise ConfigError(f"sync_compression={compression} cannot be exact with K={workers} workers: the sum of "
                          f"K quantized values must fit in {bits} bits, which allows at most K={most}; "
                          "use a wider sync_compression or fewer workers")
    return L


def check_compression(compression: str, workers: int) -> None:
    """The same ConfigError on every rank, before training, when the setting cannot be exact."""
    if compression != "none":
        levels(compression, workers)


def _renamed(becomes_global: bool, update, kwargs: dict) -> tuple[bool, torch.Tensor | None]:
    """The deprecated keywords final= and drift= of average_, as becomes_global= and update=."""
    for old, new in (("final", "becomes_global"), ("drift", "update")):
        if old in kwargs:
            warnings.warn(f"average_({old}=...) is deprecated: use {new}=", DeprecationWarning, stacklevel=3)
    unknown = set(kwargs) - {"final", "drift"}
    if unknown:
        raise TypeError(f"average_() got unexpected keyword arguments {sorted(unknown)}")
    return kwargs.get("final", becomes_global), kwargs.get("drift", update)


# ------------------------------------------------------------------ the compressed sync's math
def block_peaks(residuals: list[torch.Tensor], blocks: int) -> torch.Tensor:
    """max over the hosted workers of max |v| per block of BLOCK values (float32, one per block);
    a non-finite peak becomes +inf (NaN would make the MAX Allreduce order-dependent)."""
    peaks = None
    for e in residuals:
        peak = e.view(blocks, BLOCK).abs().amax(dim=1)
        peaks = peak if peaks is None else torch.maximum(peaks, peak)
    return peaks.masked_fill_(~torch.isfinite(peaks), math.inf)


def quantize_(residuals: list[torch.Tensor], peaks: torch.Tensor, L: int) -> torch.Tensor:
    """Quantize every hosted worker's v_k (held in its residual buffer) against the agreed block
    peaks: returns this rank's sum of the biased integers q + L (exact small integers in float32,
    [blocks, BLOCK]) and leaves e_k <- v_k - Q(v_k) in each residual."""
    step = peaks / L                                   # one quantization step per block
    inv = torch.where(peaks > 0, L / peaks, torch.zeros_like(peaks))[:, None]
    biased = None
    for e in residuals:
        v = e.view(peaks.numel(), BLOCK)
        q = (v * inv).round_().clamp_(-L, L)
        biased = q + L if biased is None else biased.add_(q).add_(L)
        v.sub_(q.mul_(step[:, None]))                  # e_k <- v_k - Q(v_k)
    return biased


def decode_mean_(out: torch.Tensor, field_sums: torch.Tensor, peaks: torch.Tensor, L: int, workers: int) -> torch.Tensor:
    """mean_k Q(v_k) from the K workers' summed biased fields, into `out` ([blocks, BLOCK] float32;
    only the first field_sums.numel() values are meaningful). The same float32 operations on every rank."""
    out.view(-1)[:field_sums.numel()].copy_(field_sums)
    return out.sub_(workers * L).mul_((peaks / L / workers)[:, None])


class ExactMean:
    """The float32 mean over all K workers, in worker 0's flat buffer (and, when it becomes the
    global model, in every hosted worker's and in `ref`)."""

    name = "none"

    def __init__(self, world, K: int):
        self.world, self.K = world, K

    def average_(self, workers: list[FlatModel], ref: torch.Tensor | None = None, *, becomes_global: bool = False,
                 update: torch.Tensor | None = None, **deprecated) -> torch.Tensor:
        """The mean over the K workers, in worker 0's flat buffer (returned); see the module
        docstring for `becomes_global`, `ref` (the last global flat model) and `update`."""
        becomes_global, update = _renamed(becomes_global, update, deprecated)
        buf = pairwise_sum_([w.flat for w in workers])
        self.world.allreduce_(buf, "sum", kind="sync")
        if becomes_global:
            kernels.mean_epilogue_(buf, self.K, ref=ref, update=update, copies=[w.flat for w in workers[1:]])
        else:
            kernels.mean_epilogue_(buf, self.K)
        mean_of_tensors_(self.world, [w.other_buffers for w in workers], self.K)
        return buf

    def start_mean(self, workers: list[FlatModel], ref: torch.Tensor | None = None) -> "MeanInFlight":
        """The mean over the K workers of their models now, on its way (see the module docstring)."""
        total = local_sum(workers)
        pending = self.world.iallreduce_(total, "sum", kind="sync")

        def finish() -> torch.Tensor:
            pending.wait()
            return kernels.mean_epilogue_(total, self.K)

        return MeanInFlight([pending.test], finish)

    def wire_bytes(self, n: int) -> int:
        """Bytes one worker sends for n values in the paper's accounting (docs/algorithm.md, "Byte accounting")."""
        return FLOAT_BYTES * n

    def worker_state_dict(self, j: int) -> dict:
        return {}

    def load_worker_state_dict(self, j: int, state: dict) -> None:
        pass


class QuantizedMean:
    """The compressed sync with error feedback (see the module docstring)."""

    def __init__(self, world, K: int, compression: str, hosted: int, n: int, device):
        self.world, self.K, self.name = world, K, compression
        self.bits = WIDTHS[compression]
        self.L = levels(compression, K)
        self.blocks = math.ceil(n / BLOCK)
        padded = self.blocks * BLOCK
        self.residuals = [torch.zeros(padded, dtype=torch.float32, device=device) for _ in range(hosted)]
        self._drift = torch.empty(n, dtype=torch.float32, device=device)
        self._decoded = torch.zeros(padded, dtype=torch.float32, device=device)
        # n fields, in whole 64-bit words (the last block is partial: only n values travel)
        self._wire = torch.zeros(math.ceil(n * self.bits / 64) * 8, dtype=torch.uint8, device=device)
        self._fields = self._wire.view(_FIELD_DTYPES[self.bits])[:n]

    def average_(self, workers: list[FlatModel], ref: torch.Tensor, *, becomes_global: bool = False,
                 update: torch.Tensor | None = None, **deprecated) -> torch.Tensor:
        """The new global flat model ref + mean_k Q(v_k), written into worker 0's flat buffer and
        returned; every hosted worker's residual is updated. `becomes_global`, `update`: see the
        module docstring."""
        becomes_global, update = _renamed(becomes_global, update, deprecated)
        self._add_drifts(workers, ref)
        peaks = block_peaks(self.residuals, self.blocks)
        self.world.allreduce_(peaks, "max", kind="sync")
        if not bool(torch.isfinite(peaks).all()):
            raise CollectiveError("non-finite weights at a sync (diverged: try a smaller lr or check the data)")
        n = ref.numel()
        self._fields.copy_(quantize_(self.residuals, peaks, self.L).view(-1)[:n])
        self.world.allreduce_fields_(self._wire, kind="sync")
        mean_q = decode_mean_(self._decoded.view(self.blocks, BLOCK), self._fields, peaks, self.L, self.K)
        target = workers[0].flat
        torch.add(ref, mean_q.view(-1)[:n], out=target)
        if becomes_global:  # target is the new global model already (divisor 1: exact)
            kernels.mean_epilogue_(target, 1, ref=ref, update=update, copies=[w.flat for w in workers[1:]])
        mean_of_tensors_(self.world, [w.other_buffers for w in workers], self.K)
        return target

    def start_mean(self, workers: list[FlatModel], ref: torch.Tensor) -> "MeanInFlight":
        """ref + mean_k Q(v_k) of the models now, on its way: the scales' MAX travels until the first
        `advance()`, the fields' sum from then on (see the module docstring). The residuals hold
        v_k until that first advance, and the new e_k from then on."""
        self._add_drifts(workers, ref)
        peaks = block_peaks(self.residuals, self.blocks)
        return self._mean_in_flight(ref, peaks, self.world.iallreduce_(peaks, "max", kind="sync"))

    def resume_mean(self, ref: torch.Tensor, scales: torch.Tensor) -> "MeanInFlight":
        """A mean checkpointed before its fields were sent (`MeanInFlight.state_dict`): the scales
        are known, the residuals (restored with the workers) still hold v_k."""
        return self._mean_in_flight(ref, scales.to(ref.device), None)

    def _mean_in_flight(self, ref: torch.Tensor, peaks: torch.Tensor, peaks_pending) -> "MeanInFlight":
        n = ref.numel()
        fields_pending = []

        def scales() -> torch.Tensor:
            if peaks_pending is not None:
                peaks_pending.wait()
            return peaks

        def send_fields() -> bool:
            if not bool(torch.isfinite(scales()).all()):
                raise CollectiveError("non-finite weights at a sync (diverged: try a smaller lr or check the data)")
            self._fields.copy_(quantize_(self.residuals, peaks, self.L).view(-1)[:n])
            fields_pending.append(self.world.iallreduce_(self._wire, kind="sync", fields=True))
            return False

        def finish() -> torch.Tensor:
            fields_pending[0].wait()
            mean_q = decode_mean_(self._decoded.view(self.blocks, BLOCK), self._fields, peaks, self.L, self.K)
            return torch.add(ref, mean_q.view(-1)[:n])

        # before the fields are sent, a checkpoint keeps the scales (waiting on them starts nothing)
        return MeanInFlight([send_fields, lambda: fields_pending[0].test()], finish,
                            before_first=lambda: {"scales": scales().cpu().clone()})

    def _add_drifts(self, workers: list[FlatModel], ref: torch.Tensor) -> None:
        """v_k = (w_k - w0) + e_k, kept in e_k's buffer: w_k - w0 first, as w_k and w0 are close
        (it loses no bits then), where (w_k + e_k) - w0 would round e_k to w_k's precision."""
        n = ref.numel()
        for w, e in zip(workers, self.residuals):
            torch.sub(w.flat, ref, out=self._drift)
            e[:n].add_(self._drift)

    def wire_bytes(self, n: int) -> int:
        """Bytes one worker sends for n values: the fields and one float32 scale per block."""
        return math.ceil(n * self.bits / 8) + FLOAT_BYTES * math.ceil(n / BLOCK)

    def worker_state_dict(self, j: int) -> dict:
        """Hosted worker j's residual (what its quantized syncs have not delivered yet)."""
        return {"residual": self.residuals[j].clone()}

    def load_worker_state_dict(self, j: int, state: dict) -> None:
        self.residuals[j].copy_(state["residual"])


class MeanInFlight:
    """A mean on its way: `advance()` once per step runs the next of `stages` (each lets MPI progress
    and says whether the next may run; the first one always runs once, at the first step after the
    start), `wait()` completes it and returns the mean (a new tensor; it runs the first stage if no
    step has, so call it on every rank). `state_dict()` starts no collective, only waits for those
    started: one rank alone may call it (rank 0 writes the checkpoint)."""

    def __init__(self, stages, finish, before_first=None):
        self._stages, self._finish, self._before_first = list(stages), finish, before_first
        self._stage = 0
        self._mean: torch.Tensor | None = None
        self.ready_before_wait = False

    def advance(self) -> None:
        if self._stage < len(self._stages):
            done = self._stages[self._stage]()
            if done or self._stage < len(self._stages) - 1:
                self._stage += 1
            self.ready_before_wait = self._stage == len(self._stages)

    def wait(self) -> torch.Tensor:
        if self._mean is None:
            if self._stage == 0 and self._before_first is not None:
                self.advance()  # the collective every rank starts at its first step after the start
            self._mean = self._finish()
        return self._mean

    def state_dict(self) -> dict:
        """What a checkpoint keeps of it (the same on every rank): the mean, or what comes before it."""
        if self._stage == 0 and self._before_first is not None:
            return self._before_first()
        return {"mean": self.wait().cpu().clone()}


def make_averaging(compression: str, world, K: int, workers: list[FlatModel]):
    """The sync's collective for `sync_compression`."""
    if compression == "none":
        return ExactMean(world, K)
    return QuantizedMean(world, K, compression, hosted=len(workers), n=workers[0].flat.numel(),
                         device=workers[0].device)


def mean_of_tensors_(world, per_worker: list[list[torch.Tensor]], K: int, *, packed: bool = False) -> None:
    """Replace every hosted worker's tensors by their mean over all K workers.

    per_worker[j][i] is hosted worker j's i-th tensor (same shapes for every j). packed: one
    Allreduce of all tensors concatenated (they must share a dtype) instead of one per tensor.
    """
    if not per_worker or not per_worker[0]:
        return
    groups = [list(range(len(per_worker[0])))] if packed else [[i] for i in range(len(per_worker[0]))]
    for group in groups:
        total = pairwise_sum_([torch.cat([tensors[i].detach().reshape(-1) for i in group]) for tensors in per_worker])
        world.allreduce_(total, "sum", kind="sync").div_(K)
        for tensors in per_worker:
            offset = 0
            for i in group:
                t = tensors[i]
                t.copy_(total[offset:offset + t.numel()].view_as(t))
                offset += t.numel()
