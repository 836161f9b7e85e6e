"""What a sync does once the strategy has said "now": the sync variants, behind one method.

Every variant averages the K workers' models with the run's collective (`fda.collectives`:
the float32 mean, or the compressed mean with error feedback), then makes the next global
model out of the mean:

- `PlainMean`: the mean IS the next global model. The averaging's last pass (the one that
  divides by K) also refreshes w0, the update direction and the hosted copies.
- `OuterStep`: the mean is a pseudo-gradient step away from w0 that an outer optimizer takes
  (FedOpt's server step, DiLoCo's outer Nesterov step); a strategy that sets its next
  threshold from the variance of the models averaged (FDA-Opt) measures it here first, while
  w0 is still the old one. Then one pass makes the result the global model everywhere.

`SyncVariant.sync` is the same for all; a variant overrides `_perform_sync` only. An overlapped
sync (`fda.sync.delayed`) receives the mean later and asks the variant for the next global model
from it (`global_from_mean`): the same rule, applied to a mean that arrived.
"""
from __future__ import annotations

import math

import torch

from fda import kernels
from fda.flat import FlatModel
from fda.monitor import exact_variance
from fda.sync.reference import GlobalReference


class SyncVariant:
    """A sync: average, make the next global model, refresh the update direction."""

    def __init__(self, averaging):
        self.averaging = averaging

    def sync(self, workers: list[FlatModel], reference: GlobalReference | None, mean_sqnorm: float) -> float:
        """Sync the hosted workers with all others. mean_sqnorm: the checked state's
        mean_k ||u_k||^2 at this step (NaN when not known). Returns the variance of the models
        averaged when the variant measures it, else NaN."""
        var_at_sync = self._perform_sync(workers, reference, mean_sqnorm)
        if reference is not None:
            reference.normalise_xi()
        return var_at_sync

    def _perform_sync(self, workers, reference, mean_sqnorm: float) -> float:
        raise NotImplementedError

    def global_from_mean(self, mean: torch.Tensor, reference: GlobalReference | None, mean_sqnorm: float) -> float:
        """The next global flat model from the mean over the K workers, in `mean` (in place); the
        reference (w0, and xi as new - old) refreshed; xi not yet normalised. Returns as `sync`."""
        var_at_sync = self._next_global_(mean, reference, mean_sqnorm)
        if reference is not None:
            kernels.mean_epilogue_(mean, 1, ref=reference.flat, update=reference.xi)
        return var_at_sync

    def _next_global_(self, mean, reference, mean_sqnorm: float) -> float:
        return math.nan


class PlainMean(SyncVariant):
    """The mean over the K workers becomes the global model as it is (FedAvg, FDA, Synchronous)."""

    def _perform_sync(self, workers, reference, mean_sqnorm: float) -> float:
        flat = reference.flat if reference is not None else None
        update = reference.xi if reference is not None else None
        self.averaging.average_(workers, flat, becomes_global=True, update=update)
        return math.nan


class OuterStep(SyncVariant):
    """The mean, measured (measure_variance) and stepped by `outer` (None: taken as it is)."""

    def __init__(self, averaging, outer=None, *, measure_variance: bool = False):
        super().__init__(averaging)
        self.outer, self.measure_variance = outer, measure_variance

    def _perform_sync(self, workers, reference, mean_sqnorm: float) -> float:
        target = self.averaging.average_(workers, reference.flat, becomes_global=False)
        var_at_sync = self._next_global_(target, reference, mean_sqnorm)
        # target holds the next global model already (divisor 1: exact): the update, w0, the copies
        kernels.mean_epilogue_(target, 1, ref=reference.flat, update=reference.xi,
                               copies=[w.flat for w in workers[1:]])
        return var_at_sync

    def _next_global_(self, mean, reference, mean_sqnorm: float) -> float:
        """The outer step from w0 (old) with the mean's parameters, after measuring their variance."""
        params = mean[:reference.params.numel()]
        var_at_sync = self._variance(params, reference.params, mean_sqnorm)
        if self.outer is not None:
            self.outer.step(reference.params, params)
        return var_at_sync

    def _variance(self, mean: torch.Tensor, w0: torch.Tensor, mean_sqnorm: float) -> float:
        """Var = mean_k ||u_k||^2 - ||mean_k u_k||^2 of the models averaged, from the checked state."""
        if not self.measure_variance or math.isnan(mean_sqnorm):
            return math.nan
        return exact_variance(mean_sqnorm, kernels.drift_state(mean, w0).sqnorm)


def make_sync_variant(averaging, outer, *, measure_variance: bool) -> SyncVariant:
    """PlainMean unless an outer optimizer or a variance measurement must see the mean first."""
    if outer is None and not measure_variance:
        return PlainMean(averaging)
    return OuterStep(averaging, outer, measure_variance=measure_variance)


def needs_reference(monitor, outer, compression: str) -> bool:
    """A drift needs its origin, an outer step and a compressed sync their w0; plain averaging on
    a schedule needs none (and skips refreshing one at every sync)."""
    return monitor is not None or outer is not None or compression != "none"
