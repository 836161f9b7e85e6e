"""The step exchange: what the ranks tell each other at a step, in one packed buffer.

A rank packs  [loss sum, non-finite flag, loss count, local state (checked steps)]
as float64 on its model's device (no host sync), and ONE sum Allreduce gives every rank the
same totals: the mean loss since the last exchange, whether any worker diverged, and the summed
monitor state. A monitor whose states combine otherwise (Kamp's MAX) adds a
second Allreduce of the state part with its own operation.

With lag L >= 1 the exchange started at step t is a non-blocking Allreduce, poked once per step
to let MPI progress it, and waited on at step t + L: the ranks compute steps t+1 .. t+L while it
travels. Every rank starts and waits on the same exchanges at the same steps, so the totals, and
any decision taken on them, are the same everywhere.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from fda.collectives import CollectiveError
from fda.flat import pairwise_sum_

class DivergedLocally(RuntimeError):
    """A rank saw a non-finite loss at a step without an exchange: only that rank knows."""


HEAD = 3  # [loss sum, non-finite flag, loss count]
_LOSS, _NONFINITE, _COUNT = range(HEAD)


@dataclass(frozen=True)
class StepTotals:
    """What an exchange tells every rank (the same values everywhere)."""
    step: int  # the step that started it
    mean_loss: float  # over the workers and the steps since the previous exchange
    mean_state: np.ndarray | None  # the monitor's combined state; None without a check
    generation: int  # the caller's tag at the start (the syncs done: what the state was measured against)
    extra: float = math.nan  # a value the caller attached at the start (the audit's exact variance)


@dataclass
class _InFlight:
    step: int
    generation: int
    extra: float
    sum_request: object  # fda.comm PendingAllreduce
    state_request: object | None  # the second Allreduce of a MAX monitor
    with_state: bool
    ready_before_wait: bool = False


class StepExchange:
    """The per-step buffer and its protocol: `add_loss` and `start` at every step, `due` for the
    totals whose decision falls at a step."""

    def __init__(self, world, workers: int, device: torch.device, *, lag: int = 0, state_op: str = "sum",
                 from_reduced=None):
        self.world, self.K, self.device, self.lag = world, workers, device, lag
        self.state_op = state_op
        self._from_reduced = from_reduced or (lambda reduced, K: reduced / K)
        self._buffers: dict[int, torch.Tensor] = {}  # by state size: no allocation per step
        # per hosted worker, since the last exchange: summed over the workers (pairwise) only when
        # packed, so the total does not depend on how the workers are spread over the ranks
        self._loss_sums = torch.zeros(0, dtype=torch.float64, device=device)
        self._loss_counts = torch.zeros(0, dtype=torch.int64)
        self._in_flight: deque = deque()
        self._completed: deque[StepTotals] = deque()  # restored from a checkpoint
        self.sent = (0, 0)  # (bytes per rank, Allreduce calls) of the exchange started at the last step
        self.waited = 0
        self.ready_at_wait = 0  # of those waited on with lag >= 1: complete before the wait

    # ----------------------------------------------------------------- losses
    def add_loss(self, loss) -> None:
        """Add this step's loss(es) to the next exchange."""
        losses = loss_vector(loss, self.device)
        if not losses.numel():
            return
        if losses.numel() != self._loss_sums.numel():
            self._reshape_losses(losses.numel())
        self._loss_sums += losses
        self._loss_counts += 1

    def _reshape_losses(self, n: int) -> None:
        """A loop that passes another number of losses than before: what was summed so far goes to
        the first slot."""
        sums = torch.zeros(n, dtype=torch.float64, device=self.device)
        counts = torch.zeros(n, dtype=torch.int64)
        if self._loss_sums.numel():
            sums[0], counts[0] = pairwise_sum_(list(self._loss_sums)), self._loss_counts.sum()
        self._loss_sums, self._loss_counts = sums, counts

    # ---------------------------------------------------------------- exchange
    def start(self, *, step: int, state_size: int = 0, fill_state=None, generation: int = 0,
              extra: float = math.nan, kind: str = "state") -> None:
        """Pack this rank's buffer (`fill_state(out)` writes its monitor state) and start the exchange
        (`kind`: what fda.comm counts its bytes as)."""
        packed = self._pack(state_size, fill_state)
        calls, nbytes = 1, packed.numel() * packed.element_size()
        with_state = fill_state is not None
        if self.lag == 0:
            sum_request = _AtWait(lambda: self.world.allreduce_to_host(packed, "sum", kind=kind))
        else:
            sum_request = self.world.iallreduce_to_host(packed, "sum", kind=kind)
        state_request = None
        if with_state and self.state_op != "sum":
            state = packed[HEAD:]
            calls, nbytes = 2, nbytes + state.numel() * state.element_size()
            state_request = (_AtWait(lambda: self.world.allreduce_to_host(state, self.state_op, kind="state"))
                             if self.lag == 0 else self.world.iallreduce_to_host(state, self.state_op, kind="state"))
        self._in_flight.append(_InFlight(step, generation, extra, sum_request, state_request, with_state))
        self.sent = (nbytes, calls)

    def skip(self) -> None:
        """No exchange at this step (its losses stay for the next one)."""
        self.sent = (0, 0)

    def raise_if_not_finite(self, step: int, rank: int) -> None:
        """A non-finite loss on this rank since the last exchange: raise, for the failure path to
        end every rank (reads the loss on the host: a device sync on a GPU)."""
        if not bool(torch.isfinite(self._loss_sums).all()):
            raise DivergedLocally(f"non-finite loss on rank {rank} at step {step} "
                                  "(diverged: try a smaller lr or check the data)")

    def poke(self) -> None:
        """Let MPI progress the exchanges in flight (one MPI_Test each)."""
        for f in self._in_flight:
            f.sum_request.test()
            if f.state_request is not None:
                f.state_request.test()

    def due(self, step: int) -> StepTotals | None:
        """The totals whose decision falls at `step` (of the exchange started at step - lag), or None."""
        if self._completed and self._completed[0].step + self.lag <= step:
            return self._completed.popleft()
        if self._in_flight and self._in_flight[0].step + self.lag <= step:
            return self._finish(self._in_flight.popleft())
        return None

    def drain(self) -> list[StepTotals]:
        """Wait on every exchange in flight (all ranks at the same step): their totals, oldest first."""
        while self._in_flight:
            self._completed.append(self._finish(self._in_flight.popleft()))
        return list(self._completed)

    def discard(self) -> None:
        """Complete the exchanges in flight without reading them (the run is ending)."""
        while self._in_flight:
            f = self._in_flight.popleft()
            f.sum_request.wait()
            if f.state_request is not None:
                f.state_request.wait()
        self._completed.clear()

    def _finish(self, f: _InFlight) -> StepTotals:
        reduced = f.sum_request.wait()
        if self.lag:
            self.waited += 1
            self.ready_at_wait += int(f.sum_request.ready_before_wait)
        mean_state = None
        if f.with_state:
            state = f.state_request.wait() if f.state_request is not None else reduced[HEAD:]
            mean_state = self._from_reduced(state, self.K)
        if reduced[_NONFINITE] > 0 or not np.all(np.isfinite(reduced)):
            raise CollectiveError(f"non-finite loss, drift or state at step {f.step} "
                                  "(diverged: try a smaller lr or check the data)")
        count = reduced[_COUNT]
        return StepTotals(step=f.step, mean_loss=reduced[_LOSS] / count if count > 0 else math.nan,
                          mean_state=mean_state,
                          generation=f.generation, extra=f.extra)

    def _pack(self, state_size: int, fill_state) -> torch.Tensor:
        packed = self._buffer(state_size)
        loss_sum = (pairwise_sum_(list(self._loss_sums)) if self._loss_sums.numel()
                    else torch.zeros((), dtype=torch.float64, device=self.device))
        finite = torch.isfinite(loss_sum)
        if fill_state is not None:
            state = packed[HEAD:]
            fill_state(state)
            finite = finite & torch.isfinite(state).all()
        packed[_LOSS] = loss_sum
        packed[_NONFINITE] = (~finite).to(torch.float64)
        packed[_COUNT] = int(self._loss_counts.sum())
        self._loss_sums.zero_()
        self._loss_counts.zero_()
        return packed

    def _buffer(self, state_size: int) -> torch.Tensor:
        packed = self._buffers.get(state_size)
        if packed is None:
            packed = self._buffers[state_size] = torch.zeros(HEAD + state_size, dtype=torch.float64,
                                                             device=self.device)
        return packed

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """The exchanges in flight, completed (every rank checkpoints at the same step): a resumed
        run takes the same decisions at the same steps."""
        return {"completed": [_totals_dict(t) for t in self.drain()]}

    def worker_state_dict(self, j: int) -> dict:
        """Hosted worker j's losses not yet exchanged (checkpointed with that worker: a resume on
        another layout hosts it elsewhere)."""
        if j >= self._loss_sums.numel():
            return {}
        return {"loss_sum": self._loss_sums[j].detach().cpu().clone(), "loss_count": self._loss_counts[j].clone()}

    def load_worker_state_dict(self, j: int, state: dict, workers: int) -> None:
        if "loss_sum" not in state:
            return
        if self._loss_sums.numel() != workers:
            self._reshape_losses(workers)
        self._loss_sums[j] = state["loss_sum"].to(self.device)
        self._loss_counts[j] = state["loss_count"]

    def load_state_dict(self, state: dict) -> None:
        self._in_flight.clear()
        self._completed = deque(_totals_from_dict(t) for t in state.get("completed", []))


class _AtWait:
    """A blocking Allreduce made when waited on (lag 0: in the same step, so that a step's time
    in the collective is counted as communication), behind the interface of one in flight."""

    ready_before_wait = False

    def __init__(self, allreduce):
        self._allreduce, self._values = allreduce, None

    def test(self) -> bool:
        return False

    def wait(self) -> np.ndarray:
        if self._values is None:
            self._values = self._allreduce()
        return self._values


def _totals_dict(t: StepTotals) -> dict:
    return {"step": t.step, "mean_loss": t.mean_loss,
            "mean_state": None if t.mean_state is None else t.mean_state.tolist(),
            "generation": t.generation, "extra": t.extra}


def _totals_from_dict(t: dict) -> StepTotals:
    # "stop_requested": written before the stop agreement replaced the buffer's stop flag
    fields = {k: v for k, v in t.items() if k != "stop_requested"}
    if fields["mean_state"] is not None:
        fields["mean_state"] = np.asarray(fields["mean_state"], dtype=np.float64)
    return StepTotals(**fields)


def loss_vector(loss, device: torch.device) -> torch.Tensor:
    """The step's loss(es) as a float64 vector on `device`; tensors are not read on the host."""
    if loss is None:
        return torch.zeros(0, dtype=torch.float64, device=device)
    items = list(loss) if isinstance(loss, (list, tuple)) else [loss]
    if all(torch.is_tensor(x) for x in items):
        return torch.stack([x.detach().reshape(()).to(device=device, dtype=torch.float64) for x in items])
    if isinstance(loss, np.ndarray) or all(isinstance(x, (int, float, np.floating, np.integer)) for x in items):
        return torch.tensor([float(x) for x in np.ravel(items)], dtype=torch.float64, device=device)
    raise TypeError(f"loss must be a float, a tensor, or a list of them (one per hosted worker), "
                    f"got {type(loss).__name__}")
