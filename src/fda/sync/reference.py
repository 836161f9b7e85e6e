"""The global reference: the last global model and the direction of the last global update.

`flat` is the last global flat model (every value a worker's flat buffer holds: its trainable
parameters, then its float32 buffers); `params` (the paper's w0) is its first d values, the
origin of every worker's drift u_k = w_k - w0. `xi` is the unit direction of the last global
update (new w0 - old w0), which the linear monitor projects the drift on; before the first sync
it is a seeded Gaussian direction, the same on every rank.
"""
from __future__ import annotations

import math

import torch

XI_SEED_OFFSET = 0x5EED  # the initial direction's generator seed is the run's seed plus this


class GlobalReference:
    """w0 (and its float32 buffers) and, for monitors that project on it, xi."""

    def __init__(self, first_model: torch.Tensor, num_params: int, *, seed: int, with_xi: bool):
        self.flat = first_model.detach().clone()
        self.params = self.flat[:num_params]
        self.seed = seed
        self.xi = initial_xi(seed, num_params, self.flat.device) if with_xi else None

    def normalise_xi(self) -> None:
        """xi (holding new w0 - old w0) <- the unit direction of this global update, in place."""
        if self.xi is None:
            return
        norm = float(self.xi.norm())
        if norm > 0 and math.isfinite(norm):
            self.xi.div_(norm)
        else:  # the global model did not move: fall back to the seeded unit vector
            self.xi = initial_xi(self.seed, self.params.numel(), self.flat.device)

    def state_dict(self) -> dict:
        return {"ref": self.flat.clone(), "xi": None if self.xi is None else self.xi.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.flat.copy_(state["ref"])
        if self.xi is not None:
            self.xi = state["xi"].to(self.flat.device)


def initial_xi(seed: int, d: int, device: torch.device) -> torch.Tensor:
    """Before the first sync there is no last global update: a seeded unit Gaussian direction."""
    g = torch.Generator().manual_seed(seed + XI_SEED_OFFSET)
    xi = torch.randn(d, generator=g, dtype=torch.float32).to(device)
    return xi / xi.norm()
