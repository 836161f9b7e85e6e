"""How a sync's bytes travel: the K workers' models averaged with MPI collectives.

`ExactMean` is the float32 sync of FDA.md section 3: the hosted workers' flat buffers are
summed locally, then ONE in-place Allreduce of the contiguous buffer and a divide by K.
`mean_of_tensors_` averages loose tensors (non-float32 buffers, optimizer state) over K.
"""
from __future__ import annotations

import torch

from fda.flat import FlatModel, pairwise_sum_


class ExactMean:
    """Every worker's flat model becomes the float32 mean over all K workers."""

    name = "none"

    def __init__(self, world, K: int):
        self.world, self.K = world, K

    def average_(self, workers: list[FlatModel]) -> torch.Tensor:
        """Writes the mean into worker 0's flat buffer and returns it (the other hosted workers'
        buffers are scratch here: the caller refreshes them after the outer step)."""
        buf = pairwise_sum_([w.flat for w in workers])
        self.world.allreduce_(buf, "sum", kind="sync")
        buf.div_(self.K)
        mean_of_tensors_(self.world, [w.other_buffers for w in workers], self.K)
        return buf


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
