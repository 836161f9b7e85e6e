"""fda.sync.delayed: an overlapped sync lands as the blocking sync of the trigger's models would have,
plus each worker's progress since the trigger.

A world of one rank hosting K workers (tests/sync/conftest.py): the mean over the rank's workers
is the mean over all, and a non-blocking Allreduce completes after a set number of tests."""
import copy
import math

import pytest
import torch

from fda.collectives import ExactMean, QuantizedMean
from fda.flat import FlatModel
from fda.outer import make_outer
from fda.sync.delayed import DelayedSync
from fda.sync.reference import GlobalReference
from fda.sync.variants import OuterStep, PlainMean

K = 3


def _workers(seeded, n=K):
    workers = [FlatModel(torch.nn.Linear(7, 5)) for _ in range(n)]
    start = torch.randn(workers[0].flat.numel(), generator=seeded)
    for w in workers:
        w.flat.copy_(start + 0.1 * torch.randn(start.numel(), generator=seeded))
    return workers, start


def _train(workers, seeded, steps):
    for _ in range(steps):
        for w in workers:
            w.flat.add_(0.01 * torch.randn(w.flat.numel(), generator=seeded))


def _twins(workers):
    twins = [FlatModel(torch.nn.Linear(7, 5)) for _ in workers]
    for t, w in zip(twins, workers):
        t.flat.copy_(w.flat)
    return twins


CPU = torch.device("cpu")
SYNCS = {  # the sync variants with the run's collective, as the Synchronizer makes them
    "plain": lambda world: PlainMean(ExactMean(world, K)),
    "nesterov": lambda world: OuterStep(ExactMean(world, K), make_outer("nesterov", lr=0.7, momentum=0.9)),
    "int8": lambda world: PlainMean(QuantizedMean(world, K, "int8", hosted=K, n=40, device=CPU)),
    "int16-sgdm": lambda world: OuterStep(QuantizedMean(world, K, "int16", hosted=K, n=40, device=CPU),
                                          make_outer("sgdm", lr=1.0, momentum=0.9)),
}


@pytest.mark.parametrize("name", list(SYNCS))
@pytest.mark.parametrize("delay", [1, 3])
def test_a_sync_lands_as_the_blocking_sync_of_the_trigger_plus_the_progress_since(world, seeded, name, delay):
    variant, blocking = SYNCS[name](world), SYNCS[name](world)
    workers, start = _workers(seeded)
    reference = GlobalReference(start, workers[0].num_params, seed=0, with_xi=True)
    blocking_ref = copy.deepcopy(reference)

    trigger = _twins(workers)                       # the models at the trigger, synced the blocking way
    blocking.sync(trigger, blocking_ref, math.nan)

    delayed = DelayedSync(delay)
    delayed.start(10, variant.averaging, workers, reference.flat, math.nan)
    snapshots = [w.flat.clone() for w in workers]
    for step in range(11, 10 + delay + 1):
        assert delayed.in_flight and delayed.is_due(step) == (step == 10 + delay)
        _train(workers, seeded, 1)
        delayed.advance()
    before = [w.flat.clone() for w in workers]
    delayed.apply(variant, workers, reference, world, K)

    G = blocking_ref.flat
    assert torch.equal(reference.flat, G), f"{name}: the landed global model differs from the blocking sync's"
    assert torch.equal(reference.xi, blocking_ref.xi)
    for w, b, s in zip(workers, before, snapshots):
        assert torch.equal(w.flat, G + (b - s))    # the same operations: progress first, then added to G
    assert not delayed.in_flight


def test_nothing_travels_before_the_trigger_and_the_workers_keep_training(world, seeded):
    variant = SYNCS["plain"](world)
    workers, start = _workers(seeded)
    delayed = DelayedSync(2)
    kept = [w.flat.clone() for w in workers]
    delayed.start(4, variant.averaging, workers, None, math.nan)
    assert [c[0] for c in world.calls] == ["iallreduce_"]
    assert all(torch.equal(w.flat, k) for w, k in zip(workers, kept)), "the start must not touch the models"
    with pytest.raises(RuntimeError, match="in flight until step 6"):
        delayed.start(5, variant.averaging, workers, None, math.nan)


def test_a_compressed_sync_sends_its_fields_at_the_first_step_after_the_trigger(world, seeded):
    variant = SYNCS["int8"](world)
    workers, start = _workers(seeded)
    reference = GlobalReference(start, workers[0].num_params, seed=0, with_xi=False)
    delayed = DelayedSync(3)
    delayed.start(1, variant.averaging, workers, reference.flat, math.nan)
    assert [(c[0], c[1]) for c in world.calls] == [("iallreduce_", "max")]   # the scales
    delayed.advance()
    assert [(c[0], c[1]) for c in world.calls] == [("iallreduce_", "max"), ("iallreduce_", "sum")]
    delayed.advance()
    delayed.advance()
    assert len(world.calls) == 2


@pytest.mark.parametrize("name", ["plain", "int8"])
def test_a_checkpoint_in_flight_resumes_to_the_same_bits(world, seeded, name):
    variant = SYNCS[name](world)
    workers, start = _workers(seeded)
    reference = GlobalReference(start, workers[0].num_params, seed=0, with_xi=True)
    twins, twin_ref = _twins(workers), copy.deepcopy(reference)
    twin_variant = SYNCS[name](world)
    if name == "int8":
        twin_variant.averaging.residuals = [r.clone() for r in variant.averaging.residuals]

    straight = DelayedSync(2)
    straight.start(7, variant.averaging, workers, reference.flat, math.nan)
    first = DelayedSync(2)
    first.start(7, twin_variant.averaging, twins, twin_ref.flat, math.nan)
    calls = len(world.calls)
    saved = copy.deepcopy((first.state_dict(), [first.worker_state_dict(j) for j in range(K)]))
    assert len(world.calls) == calls, "a checkpoint (rank 0 alone) must start no collective"
    assert ("scales" if name == "int8" else "mean") in saved[0]
    resumed = DelayedSync(2)
    resumed.load_state_dict(saved[0], twin_variant.averaging, twin_ref.flat, CPU)
    for j in range(K):
        resumed.load_worker_state_dict(j, saved[1][j], K, torch.device("cpu"))
    assert resumed.in_flight and resumed.due_step == 9

    for ws in (workers, twins):
        _train(ws, torch.Generator().manual_seed(5), 2)
    straight.advance()
    resumed.advance()
    straight.apply(variant, workers, reference, world, K)
    resumed.apply(twin_variant, twins, twin_ref, world, K)
    assert torch.equal(reference.flat, twin_ref.flat) and torch.equal(reference.xi, twin_ref.xi)
    assert all(torch.equal(a.flat, b.flat) for a, b in zip(workers, twins))


def test_readiness_is_counted_when_mpi_completed_it_before_the_landing(world, seeded):
    variant = SYNCS["plain"](world)
    workers, _ = _workers(seeded)
    world.ready_after_tests = 2
    delayed = DelayedSync(2)
    delayed.start(1, variant.averaging, workers, None, math.nan)
    delayed.advance()
    delayed.advance()       # the second test completes it
    delayed.apply(variant, workers, None, world, K)
    delayed.start(3, variant.averaging, workers, None, math.nan)
    delayed.advance()       # one test: not yet
    delayed.apply(variant, workers, None, world, K)
    assert (delayed.applied, delayed.ready_at_apply) == (2, 1)
