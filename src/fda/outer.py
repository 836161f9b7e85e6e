"""The outer update: what a sync does to the global model w0 (docs/algorithm.md, "FedOpt: FedAvgM and FedAdam" and "Outer optimizers on any trigger").

Every sync yields the workers' mean; plain averaging takes it as the next w0. An outer
optimizer instead treats the pseudo-gradient g = w0 - mean_k w_k as a gradient of w0 and
steps its own optimizer (FedOpt's server step, DiLoCo's outer step). It is independent of
what triggered the sync (a schedule or FDA's variance bound). Every rank runs it on
identical inputs, so every rank gets the same new w0 without communication.
"""
from __future__ import annotations

import copy

import torch

OUTER_OPTIMIZERS = ("none", "sgd", "sgdm", "nesterov", "adam", "adagrad")  # the server_optimizer setting's values


class OuterOptimizer:
    """kinds: sgd (lr=1 is plain averaging), sgdm (FedAvgM: heavy-ball momentum), nesterov
    (DiLoCo: SGD with Nesterov momentum), adam (FedAdam), adagrad (FedAdagrad)."""

    KINDS = OUTER_OPTIMIZERS[1:]

    def __init__(self, kind: str, lr: float, momentum: float = 0.9):
        if kind not in self.KINDS:
            raise ValueError(f"unknown outer optimizer '{kind}' ({', '.join(self.KINDS)})")
        self.kind, self.lr, self.momentum = kind, lr, momentum
        self._param: torch.nn.Parameter | None = None
        self._opt: torch.optim.Optimizer | None = None
        self._pending_state: dict | None = None

    def _make(self, w0: torch.Tensor) -> None:
        self._param = torch.nn.Parameter(w0.detach().clone())
        if self.kind in ("sgd", "sgdm", "nesterov"):
            momentum = 0.0 if self.kind == "sgd" else self.momentum
            self._opt = torch.optim.SGD([self._param], lr=self.lr, momentum=momentum,
                                        nesterov=self.kind == "nesterov")
        elif self.kind == "adam":
            # FedAdam as in Reddi et al.: adaptivity eps 1e-3 keeps early steps bounded
            self._opt = torch.optim.Adam([self._param], lr=self.lr, betas=(0.9, 0.99), eps=1e-3)
        else:
            self._opt = torch.optim.Adagrad([self._param], lr=self.lr, eps=1e-3)
        if self._pending_state is not None:
            self._opt.load_state_dict(self._pending_state)
            self._pending_state = None

    def step(self, w0: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
        """One outer step from w0 with pseudo-gradient w0 - mean; the new w0 is written into `mean`
        (and returned)."""
        if self._param is None:
            self._make(w0)
        with torch.no_grad():
            self._param.copy_(w0)
            self._param.grad = w0 - mean
        self._opt.step()
        with torch.no_grad():
            mean.copy_(self._param)
        self._param.grad = None
        return mean

    def state_dict(self) -> dict:
        if self._opt is None:
            return {"opt": self._pending_state}
        return {"opt": self._opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("opt") is None:
            return
        if self._opt is None:
            self._pending_state = copy.deepcopy(state["opt"])
        else:
            self._opt.load_state_dict(state["opt"])

    def describe(self) -> str:
        mom = f", momentum={self.momentum:g}" if self.kind in ("sgdm", "nesterov") else ""
        return f"{self.kind}(lr={self.lr:g}{mom})"


def make_outer(kind: str, lr: float, momentum: float = 0.9) -> OuterOptimizer | None:
    """The outer optimizer of that kind, or None for plain averaging (kind 'none')."""
    if kind == "none":
        return None
    return OuterOptimizer(kind, lr=lr, momentum=momentum)
