"""The step exchange: what every rank sends and learns at every step, in one packed buffer.

A rank packs  [loss sum, non-finite flag, worker count, stop flag, local state (checked steps)]
as float64 on its model's device (no host sync), and ONE sum Allreduce gives every rank the
same totals: the mean loss, whether any worker diverged, whether any rank was asked to stop,
and the summed monitor state. A monitor whose states combine otherwise (Kamp's MAX) makes its
own second Allreduce of the state part (`Monitor.reduce_state`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fda.collectives import CollectiveError
from fda.flat import pairwise_sum_

HEAD = 4  # [loss sum, non-finite flag, worker count, stop flag]
_LOSS, _NONFINITE, _COUNT, _STOP = range(HEAD)


@dataclass(frozen=True)
class StepTotals:
    """What the exchange tells every rank (the same values everywhere)."""
    mean_loss: float
    stop_requested: bool
    mean_state: np.ndarray | None  # the monitor's combined state; None on unchecked steps


class StepExchange:
    """The per-step buffer and its protocol (pack, then exchange)."""

    def __init__(self, world, workers: int, device: torch.device):
        self.world, self.K, self.device = world, workers, device
        self._buffers: dict[int, torch.Tensor] = {}  # by state size: no allocation per step
        self.sent = (0, 0)  # (bytes per rank, Allreduce calls) of the last exchange

    def pack(self, loss, state_size: int, fill_state: Callable[[torch.Tensor], None] | None,
             stop: bool) -> torch.Tensor:
        """This rank's buffer; `fill_state` writes the local monitor state (of `state_size` values)."""
        packed = self._buffer(state_size)
        losses = loss_vector(loss, packed.device)
        loss_sum = pairwise_sum_(list(losses)) if losses.numel() else losses.sum()
        finite = torch.isfinite(loss_sum)
        if fill_state is not None:
            state = packed[HEAD:]
            fill_state(state)
            finite = finite & torch.isfinite(state).all()
        packed[_LOSS] = loss_sum
        packed[_NONFINITE] = (~finite).to(torch.float64)
        packed[_COUNT] = losses.numel()
        packed[_STOP] = float(stop)
        return packed

    def exchange(self, packed: torch.Tensor, reduce_state=None, *, step: int) -> StepTotals:
        """ONE sum Allreduce of the buffer (and the monitor's own, if it reduces otherwise).
        reduce_state(summed_state, local_state, K, allreduce) -> the combined state; None: no state."""
        reduced = self.world.allreduce_to_host(packed, "sum", kind="state")
        self.sent = (packed.numel() * packed.element_size(), 1)
        mean_state = None
        if reduce_state is not None:
            mean_state = reduce_state(reduced[HEAD:], packed[HEAD:], self.K, self._allreduce_state)
        if reduced[_NONFINITE] > 0 or not np.all(np.isfinite(reduced)):
            raise CollectiveError(f"non-finite loss, drift or state at step {step} "
                                  "(diverged: try a smaller lr or check the data)")
        count = reduced[_COUNT]
        return StepTotals(mean_loss=reduced[_LOSS] / count if count > 0 else math.nan,
                          stop_requested=bool(reduced[_STOP] > 0), mean_state=mean_state)

    def _allreduce_state(self, state: torch.Tensor, op: str) -> np.ndarray:
        self.sent = (self.sent[0] + state.numel() * state.element_size(), self.sent[1] + 1)
        return self.world.allreduce_to_host(state, op, kind="state")

    def _buffer(self, state_size: int) -> torch.Tensor:
        packed = self._buffers.get(state_size)
        if packed is None:
            packed = self._buffers[state_size] = torch.zeros(HEAD + state_size, dtype=torch.float64,
                                                             device=self.device)
        return packed


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
