"""A worker's endless stream of mini-batches over its shard, exactly resumable: the one loader
behind both `fda train` and `fda.shard`.

Each pass over the shard uses a fresh permutation from
``numpy.random.default_rng([seed, worker, pass_number, salt])``, so the stream's only state is
``(pass_number, position)``: saving and restoring those two integers continues with exactly the
same batches.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from .base import DatasetError

__all__ = ["BatchOrder", "ShardLoader", "steps_per_epoch"]

_SALT = 0x10AD


def steps_per_epoch(num_samples: int, workers: int, batch_size: int) -> int:
    """The paper's epoch: the whole training set once, in K parallel batches of b (rounded up)."""
    return max(1, math.ceil(num_samples / (workers * batch_size)))


class BatchOrder:
    """Which samples of the shard ``indices`` each mini-batch of ``batch_size`` holds, forever.

    A pass is ``batches_per_pass = len(indices) // batch_size`` batches; the final partial batch of
    a pass is dropped (those samples are still seen in other passes, as the order changes).
    If the shard is smaller than one batch, every batch is the whole shard (reshuffled).
    shuffle=False: every pass in the order of ``indices``. num_items: the dataset's size (indices
    must lie in 0..num_items-1); device: where the index tensors are made.
    """

    def __init__(self, indices, batch_size: int, *, seed: int, worker: int, num_items: int,
                 shuffle: bool = True, device: torch.device | str = "cpu") -> None:
        idx = indices.detach().cpu().numpy() if isinstance(indices, torch.Tensor) else np.asarray(indices)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        if idx.size == 0:
            raise DatasetError(f"worker {worker}: empty shard (no samples to draw batches from)")
        if idx.min() < 0 or idx.max() >= num_items:
            raise DatasetError(f"worker {worker}: shard indices outside 0..{num_items - 1}")
        if int(batch_size) < 1:
            raise DatasetError(f"batch_size must be >= 1, got {batch_size}")
        if int(seed) < 0 or int(worker) < 0:
            raise DatasetError(f"seed and worker must be >= 0, got seed={seed}, worker={worker}")
        self.seed = int(seed)
        self.worker = int(worker)
        self.batch_size = int(batch_size)
        self.num_samples = int(idx.size)
        self.shuffle = shuffle
        self._indices = torch.from_numpy(np.ascontiguousarray(idx)).to(device)
        self._bs = min(self.batch_size, self.num_samples)  # the shard, when it is smaller than a batch
        self._bpp = self.num_samples // self._bs
        self._pass = 0
        self._pos = 0
        self._order: torch.Tensor | None = None
        self._order_pass = -1

    # -- where the stream is ------------------------------------------------------------------

    @property
    def batches_per_pass(self) -> int:
        return self._bpp

    @property
    def pass_number(self) -> int:
        return self._pass if self._pos < self._bpp else self._pass + 1

    @property
    def position(self) -> int:
        """Batches already drawn in the current pass."""
        return self._pos if self._pos < self._bpp else 0

    @property
    def steps(self) -> int:
        """Batches drawn so far."""
        return self._pass * self._bpp + self._pos

    @property
    def epoch(self) -> float:
        """Passes over the shard so far (fractional)."""
        return self.steps / self._bpp

    def seek(self, steps: int) -> None:
        """Continue as if `steps` batches had been drawn."""
        if steps < 0:
            raise DatasetError(f"cannot seek to batch {steps}")
        self._pass, self._pos = divmod(int(steps), self._bpp)

    # -- batches -------------------------------------------------------------------------------

    def pass_order(self, pass_number: int) -> torch.Tensor:
        """The dataset indices of pass ``pass_number`` in the order they are drawn."""
        if not self.shuffle:
            return self._indices
        perm = np.random.default_rng([self.seed, self.worker, int(pass_number), _SALT]).permutation(
            self.num_samples
        )
        return self._indices[torch.from_numpy(perm).to(self._indices.device)]

    def next_indices(self) -> torch.Tensor:
        """The dataset indices of the next mini-batch."""
        if self._pos >= self._bpp:
            self._pass += 1
            self._pos = 0
        if self._order_pass != self._pass:
            self._order = self.pass_order(self._pass)
            self._order_pass = self._pass
        start = self._pos * self._bs
        self._pos += 1
        return self._order[start : start + self._bs]

    # -- checkpointing ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "pass": self.pass_number,
            "position": self.position,
            "seed": self.seed,
            "worker": self.worker,
            "num_samples": self.num_samples,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("seed", "worker", "num_samples", "batch_size"):
            if key in state and int(state[key]) != getattr(self, key):
                raise DatasetError(
                    f"loader state is for {key}={state[key]}, this loader has {key}={getattr(self, key)}; "
                    "resume with the same seed, worker, partition and batch size"
                )
        p, pos = int(state["pass"]), int(state["position"])
        if p < 0 or not 0 <= pos <= self._bpp:
            raise DatasetError(f"invalid loader state: pass={p}, position={pos} (batches_per_pass={self._bpp})")
        self._pass, self._pos = p, pos

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(worker={self.worker}, samples={self.num_samples}, batch_size={self.batch_size}, "
            f"batches_per_pass={self._bpp}, pass={self.pass_number}, position={self.position})"
        )


class ShardLoader(BatchOrder):
    """Mini-batches ``x[sel], y[sel]`` of the shard ``indices`` of tensors ``x`` / ``y``, forever
    (the order: `BatchOrder`); the indices live where ``x`` does."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, indices, batch_size: int, *, seed: int, worker: int,
                 shuffle: bool = True) -> None:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        if not isinstance(y, torch.Tensor):
            y = torch.as_tensor(y)
        if x.shape[0] != y.shape[0]:
            raise DatasetError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
        super().__init__(indices, batch_size, seed=seed, worker=worker, num_items=x.shape[0], shuffle=shuffle,
                         device=x.device)
        self.x = x
        self.y = y

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        sel = self.next_indices()
        ysel = sel if self.y.device == sel.device else sel.to(self.y.device)
        return self.x[sel], self.y[ysel]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.next_batch()
