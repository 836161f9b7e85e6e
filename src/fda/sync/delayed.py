"""Overlapped syncs (sync_delay = tau >= 1; docs/algorithm.md, "Overlapped syncs").

A sync triggered at step t starts the Allreduce of the workers' models of step t and lets them
train on: steps t+1 .. t+tau compute while it travels (each step advances it once, so MPI
progresses it), and at the end of step t+tau the mean M arrives. The sync variant makes the next
global model G out of M as a blocking sync would (the mean itself, or an outer optimizer's step
from w0), and each hosted worker keeps what it learnt since the trigger:

    w_k  <-  G + (w_k - s_k)        s_k: worker k's model at step t

so no local step is lost. G, the new w0 and xi are computed from values every rank has (M is
the same everywhere), so they have the same bits on every rank; the drift the monitor sees next,
w_k - w0 = w_k - s_k, is the progress since the trigger. While a sync is in flight nothing else
syncs and no check starts (a state against the old w0 would be stale once the sync lands).

A checkpoint while a sync is in flight waits for what the sync has started (rank 0 writes it
alone, so it starts no collective) and keeps M, or, for a compressed sync checkpointed at the
step it started, the scales (`state_dict`, the same on every rank); each worker's s_k goes with
the worker (`worker_state_dict`). The resumed run lands the same M at the same step.
"""
from __future__ import annotations

import math

import torch

from fda.collectives import mean_of_tensors_
from fda.flat import FlatModel


class DelayedSync:
    """At most one sync in flight: started at `start`, advanced every step, applied when due."""

    def __init__(self, delay: int):
        self.delay = delay
        self.due_step: int | None = None
        self.mean_sqnorm = math.nan
        self._mean = None            # collectives.MeanInFlight, or the mean itself once complete
        self._snapshots: list[torch.Tensor] = []
        self.applied = 0
        self.ready_at_apply = 0      # of those applied: complete before the wait

    @property
    def in_flight(self) -> bool:
        return self.due_step is not None

    def start(self, step: int, averaging, workers: list[FlatModel], ref: torch.Tensor | None,
              mean_sqnorm: float) -> None:
        """Start the mean of the workers' models now (step `step`); it is applied at step + delay."""
        if self.in_flight:
            raise RuntimeError(f"a sync is in flight until step {self.due_step}: it cannot start another")
        self._snapshots = [w.flat.detach().clone() for w in workers]
        self._mean = averaging.start_mean(workers, ref)
        self.due_step, self.mean_sqnorm = step + self.delay, mean_sqnorm

    def advance(self) -> None:
        """Once per step after the start: MPI progresses the Allreduce (see collectives.MeanInFlight)."""
        if self.in_flight and not torch.is_tensor(self._mean):
            self._mean.advance()

    def is_due(self, step: int) -> bool:
        return self.due_step == step

    def apply(self, variant, workers: list[FlatModel], reference, world, K: int) -> float:
        """The sync lands: G from M by the run's sync variant, then w_k <- G + (w_k - s_k) for every
        hosted worker. Returns the variance of the models averaged when the variant measures it."""
        mean = self._complete()
        self.applied += 1
        var_at_sync = variant.global_from_mean(mean, reference, self.mean_sqnorm)
        for w, progress in zip(workers, self._snapshots):
            torch.sub(w.flat, progress, out=progress)   # s_k <- w_k - s_k: the progress since the trigger
            torch.add(mean, progress, out=w.flat)       # first, while w_k and s_k are close: no bits lost
        mean_of_tensors_(world, [w.other_buffers for w in workers], K)
        if reference is not None:
            reference.normalise_xi()
        self.due_step, self._mean, self._snapshots = None, None, []
        return var_at_sync

    def _complete(self) -> torch.Tensor:
        if not torch.is_tensor(self._mean):
            self.ready_at_apply += int(self._mean.ready_before_wait)
            self._mean = self._mean.wait()
        return self._mean

    def discard(self) -> None:
        """Wait for what a sync in flight started, without applying it (the run is ending)."""
        if self.in_flight and not torch.is_tensor(self._mean):
            self._mean.state_dict()
        self.due_step, self._mean, self._snapshots = None, None, []

    # ------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """The sync in flight: its mean, or (a compressed one checkpointed at its start) its scales.
        Only waits (rank 0 alone calls it), so the other ranks' Allreduces are left as they are."""
        if not self.in_flight:
            return {"due_step": None}
        mean = {"mean": self._mean.cpu().clone()} if torch.is_tensor(self._mean) else self._mean.state_dict()
        return {"due_step": self.due_step, "mean_sqnorm": self.mean_sqnorm, **mean}

    def load_state_dict(self, state: dict, averaging, ref: torch.Tensor | None, device: torch.device) -> None:
        self.due_step = state.get("due_step")
        self.mean_sqnorm = float(state.get("mean_sqnorm", math.nan))
        if not self.in_flight:
            self._mean = None
        elif "mean" in state:
            self._mean = state["mean"].to(device)
        else:
            self._mean = averaging.resume_mean(ref, state["scales"])

    def worker_state_dict(self, j: int) -> dict:
        return {"sync_snapshot": self._snapshots[j].cpu().clone()} if self.in_flight else {}

    def load_worker_state_dict(self, j: int, state: dict, hosted: int, device: torch.device) -> None:
        if "sync_snapshot" not in state:
            return
        if len(self._snapshots) != hosted:
            self._snapshots = [None] * hosted
        self._snapshots[j] = state["sync_snapshot"].to(device)
