"""What a sync does to the workers' optimizer states (setting sync_optimizer_state)."""
from __future__ import annotations

import torch

from fda.collectives import mean_of_tensors_

POLICIES = ("keep", "reset", "average")


def sync_optimizer_state(policy: str, optimizers: list, world, workers: int) -> None:
    """keep: each worker keeps its own; reset: all start afresh; average: every floating tensor
    of the states (Adam's moments, momentum buffers) becomes its mean over the K workers, in ONE
    Allreduce. Scalars (Adam's step counts) agree already when every worker steps alike."""
    if policy == "keep":
        return
    if policy == "reset":
        for opt in optimizers:
            opt.state.clear()
        return
    mean_of_tensors_(world, [_state_tensors(opt) for opt in optimizers], workers, packed=True)


def _state_tensors(opt) -> list[torch.Tensor]:
    return [v for st in opt.state.values() for v in st.values()
            if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0]
