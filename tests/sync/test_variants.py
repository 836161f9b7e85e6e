"""fda.sync.variants: what a sync does to the hosted workers and the global reference.

A world of one rank hosting K workers: the mean over the rank's workers is the mean over all."""
import math

import pytest
import torch

from fda import kernels
from fda.collectives import ExactMean, QuantizedMean
from fda.flat import FlatModel
from fda.monitor import exact_variance
from fda.outer import OuterOptimizer
from fda.sync.reference import GlobalReference
from fda.sync.variants import OuterStep, PlainMean, make_sync_variant, needs_reference

K = 4


def _workers(seeded, n=4):
    models = [torch.nn.Linear(5, 3) for _ in range(n)]
    workers = [FlatModel(m) for m in models]
    start = torch.randn(workers[0].flat.numel(), generator=seeded)
    for w in workers:
        w.flat.copy_(start + 0.1 * torch.randn(start.numel(), generator=seeded))
    return workers, start


def _reference(start, d, with_xi=True):
    ref = GlobalReference(start, d, seed=0, with_xi=with_xi)
    return ref


def test_plain_mean_makes_the_mean_the_global_model_everywhere(world, seeded):
    workers, start = _workers(seeded)
    d = workers[0].num_params
    ref = _reference(start, d)
    mean = torch.stack([w.flat for w in workers]).sum(0) / K
    var = PlainMean(ExactMean(world, K)).sync(workers, ref, math.nan)
    assert math.isnan(var)
    assert all(torch.allclose(w.flat, mean, atol=1e-6) for w in workers) and torch.equal(ref.flat, workers[0].flat)
    update = workers[0].params - start[:d]
    assert torch.allclose(ref.xi, update / update.norm(), atol=1e-5)


def test_plain_mean_without_a_reference_only_averages(world, seeded):
    workers, _ = _workers(seeded)
    mean = torch.stack([w.flat for w in workers]).sum(0) / K
    PlainMean(ExactMean(world, K)).sync(workers, None, math.nan)
    assert all(torch.allclose(w.flat, mean, atol=1e-6) for w in workers)


def test_outer_step_without_an_outer_optimizer_equals_plain_mean_bit_for_bit(world, seeded):
    workers, start = _workers(seeded)
    twins = [FlatModel(torch.nn.Linear(5, 3)) for _ in workers]
    for a, b in zip(twins, workers):
        a.flat.copy_(b.flat)
    d = workers[0].num_params
    ref_a, ref_b = _reference(start, d), _reference(start, d)
    PlainMean(ExactMean(world, K)).sync(workers, ref_a, math.nan)
    OuterStep(ExactMean(world, K)).sync(twins, ref_b, math.nan)
    assert all(torch.equal(a.flat, b.flat) for a, b in zip(workers, twins))
    assert torch.equal(ref_a.flat, ref_b.flat) and torch.equal(ref_a.xi, ref_b.xi)


def test_outer_step_measures_the_variance_of_the_models_averaged(world, seeded):
    workers, start = _workers(seeded)
    d = workers[0].num_params
    ref = _reference(start, d, with_xi=False)
    u = torch.stack([w.params - start[:d] for w in workers]).double()
    mean_sqnorm = float((u ** 2).sum(1).mean())
    var = OuterStep(ExactMean(world, K), measure_variance=True).sync(workers, ref, mean_sqnorm)
    assert var == pytest.approx(exact_variance(mean_sqnorm, float((u.mean(0) ** 2).sum())), rel=1e-4)
    assert math.isnan(OuterStep(ExactMean(world, K)).sync(workers, ref, mean_sqnorm))  # not asked


def test_outer_step_steps_from_the_old_w0(world, seeded):
    workers, start = _workers(seeded)
    d = workers[0].num_params
    ref = _reference(start, d, with_xi=False)
    mean = torch.stack([w.params for w in workers]).sum(0) / K
    OuterStep(ExactMean(world, K), OuterOptimizer("sgd", lr=0.5)).sync(workers, ref, math.nan)
    expected = start[:d] - 0.5 * (start[:d] - mean)  # SGD on the pseudo-gradient w0 - mean
    assert torch.allclose(ref.params, expected, atol=1e-6)
    assert all(torch.equal(w.params, ref.params) for w in workers)


def test_a_compressed_sync_goes_through_the_same_variants(world, seeded):
    workers, start = _workers(seeded)
    d = workers[0].num_params
    ref = _reference(start, d)
    averaging = QuantizedMean(world, K, "int16", hosted=K, n=workers[0].flat.numel(), device=torch.device("cpu"))
    mean = torch.stack([w.flat for w in workers]).sum(0) / K
    PlainMean(averaging).sync(workers, ref, math.nan)
    assert all(torch.equal(w.flat, ref.flat) for w in workers)
    assert torch.allclose(ref.flat, mean, atol=1e-3)


def test_the_variant_and_the_reference_are_chosen_by_what_the_sync_needs(world):
    averaging = ExactMean(world, K)
    assert type(make_sync_variant(averaging, None, measure_variance=False)) is PlainMean
    assert type(make_sync_variant(averaging, None, measure_variance=True)) is OuterStep
    assert type(make_sync_variant(averaging, OuterOptimizer("sgdm", lr=1.0), measure_variance=False)) is OuterStep
    assert not needs_reference(None, None, "none")
    assert needs_reference(None, None, "int8") and needs_reference(object(), None, "none")
