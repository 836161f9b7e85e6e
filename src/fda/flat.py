"""The flat-model plumbing: a worker's trainable parameters (then its float32 buffers) in ONE
contiguous float32 tensor, so that the drift kernel and MPI each see a single buffer."""
from __future__ import annotations

import torch


class FlatModel:
    """One worker's model with its trainable float32 parameters (then its float32 buffers)
    re-pointed into ONE contiguous tensor, so the kernel and MPI see a single flat buffer.

    Frozen parameters (requires_grad=False) stay where they are and are never averaged.
    Trainable parameters must be float32 (keep master weights in float32; use autocast
    for mixed precision): anything else is rejected. Non-float32 floating buffers are
    averaged one by one at a sync; integer buffers (e.g. BatchNorm's batch counter) stay local.

    flat: the whole buffer; params: its first `num_params` entries (the trainable parameters);
    spans: (offset, size) of every tensor in `flat`, in order (parameters, then buffers).
    """

    def __init__(self, module: torch.nn.Module):
        self.module = module
        params = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        for name, p in params:
            if p.dtype != torch.float32:
                raise ValueError(f"trainable parameter '{name}' is {p.dtype}; fda averages float32 parameters "
                                 "only (keep master weights in float32, use torch.autocast for lower precision)")
        devices = {p.device for _, p in params}
        if len(devices) > 1:
            raise ValueError(f"the model's parameters are on several devices ({devices}); put it on one")
        bufs = [b for _, b in module.named_buffers() if b.dtype == torch.float32]
        self.other_buffers = [b for _, b in module.named_buffers()
                              if b.is_floating_point() and b.dtype != torch.float32]
        self.num_params = sum(p.numel() for _, p in params)
        total = self.num_params + sum(b.numel() for b in bufs)
        self.device = params[0][1].device
        self.flat = torch.empty(total, dtype=torch.float32, device=self.device)
        self.spans: list[tuple[int, int]] = []
        offset = 0
        for t in [p for _, p in params] + bufs:
            n = t.numel()
            view = self.flat[offset:offset + n]
            view.copy_(t.data.reshape(-1))
            t.data = view.view_as(t)
            self.spans.append((offset, n))
            offset += n
        self.params = self.flat[:self.num_params]
        self.layout = [(n, tuple(p.shape)) for n, p in params]


def pairwise_sum_(tensors: list[torch.Tensor]) -> torch.Tensor:
    """The sum over the list in a fixed balanced tree, ((t0 + t1) + (t2 + t3)) + ..., accumulated in
    place into tensors[0] (the other entries may be overwritten).

    Why this order: MPI's Allreduce adds the ranks' buffers in this tree (MPICH: recursive doubling
    and halving, for a power-of-two number of ranks), so a rank that hosts W workers adds them as W
    ranks would, and K workers give the same bits on 4x1, 2x2 or 1x4 ranks x workers_per_rank: a
    run can resume on another layout and stay bit-identical (tests/test_virtual_workers.py)."""
    level = list(tensors)
    while len(level) > 1:
        level = [level[i].add_(level[i + 1]) if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]


def local_sum(workers: list[FlatModel]) -> torch.Tensor:
    """The sum of this rank's hosted workers' flat buffers (a new tensor; see pairwise_sum_)."""
    flats = [w.flat for w in workers]
    pairs = [torch.add(flats[i], flats[i + 1]) if i + 1 < len(flats) else flats[i].clone()
             for i in range(0, len(flats), 2)]
    return pairwise_sum_(pairs)
