"""fda.sync.exchange: the step buffer's layout, what the exchange tells every rank, and its pipeline."""
import math

import numpy as np
import pytest
import torch

from fda.collectives import CollectiveError
from fda.monitor import LinearMonitor, PerWorkerMonitor
from fda.sync.exchange import HEAD, DivergedLocally, StepExchange, loss_vector


def _exchange(world, K=3, lag=0, monitor=None):
    monitor = monitor or LinearMonitor()
    return StepExchange(world, K, torch.device("cpu"), lag=lag, state_op=monitor.reduce_op,
                        from_reduced=monitor.from_reduced)


def _step(ex, step, loss=1.0, state=None, generation=0):
    ex.add_loss(loss)
    fill = (lambda out: out.copy_(torch.as_tensor(state, dtype=torch.float64))) if state is not None else None
    ex.start(step=step, state_size=len(state) if state is not None else 0, fill_state=fill,
             generation=generation)
    ex.poke()
    return ex.due(step)


def test_an_unchecked_step_exchanges_the_head_only(world):
    ex = _exchange(world)
    totals = _step(ex, 1, loss=[0.5, 1.0, 1.5])
    assert totals.step == 1 and totals.mean_loss == 1.0 and totals.mean_state is None
    assert world.calls == [("allreduce_to_host", "sum", "state")]
    assert ex.sent == (HEAD * 8, 1)


def test_a_checked_step_carries_the_state_after_the_head(world):
    ex = _exchange(world, K=2)
    totals = _step(ex, 3, loss=torch.tensor(0.25), state=[4.0, 2.0])
    np.testing.assert_array_equal(totals.mean_state, [2.0, 1.0])  # the sum over one rank / K
    assert totals.mean_loss == 0.25
    assert len(world.calls) == 1 and ex.sent == ((HEAD + 2) * 8, 1)  # a sum monitor rides on the one Allreduce


def test_the_losses_of_steps_without_an_exchange_ride_in_the_next_one(world):
    ex = _exchange(world, K=2)
    for step, loss in ((1, [1.0, 2.0]), (2, [3.0, 4.0])):
        ex.add_loss(loss)
        ex.raise_if_not_finite(step, rank=0)
        ex.skip()
        assert ex.due(step) is None and ex.sent == (0, 0)
    totals = _step(ex, 3, loss=[5.0, 6.0], state=[1.0])
    assert totals.mean_loss == 3.5  # the 6 losses of steps 1-3 over the 2 workers
    assert len(world.calls) == 1


def test_a_non_finite_loss_without_an_exchange_is_this_ranks_failure(world):
    ex = _exchange(world, K=2)
    ex.add_loss([1.0, math.inf])
    with pytest.raises(DivergedLocally, match="rank 1 at step 4"):
        ex.raise_if_not_finite(4, rank=1)
    assert world.calls == []


def test_a_max_monitor_makes_its_own_second_allreduce(world):
    ex = _exchange(world, K=2, monitor=PerWorkerMonitor())
    totals = _step(ex, 1, loss=0.0, state=[7.0])
    assert totals.mean_state.tolist() == [7.0]  # MAX, not divided by K
    assert [c[1] for c in world.calls] == ["sum", "max"] and ex.sent == ((HEAD + 1) * 8 + 8, 2)


def test_buffers_are_reused_per_state_size(world):
    ex = _exchange(world)
    a = ex._buffer(2)
    assert ex._buffer(0) is not a and ex._buffer(2) is a


@pytest.mark.parametrize("loss, state", [(math.nan, 0.0), (1.0, math.inf), (math.inf, 0.0)])
def test_non_finite_values_fail_on_every_rank_with_the_step(world, loss, state):
    ex = _exchange(world)
    with pytest.raises(CollectiveError, match="non-finite loss, drift or state at step 9"):
        _step(ex, 9, loss=loss, state=[state])


def test_no_loss_gives_a_nan_mean(world):
    assert math.isnan(_step(_exchange(world), 1, loss=None).mean_loss)


@pytest.mark.parametrize("lag", [1, 2, 4])
def test_with_a_lag_the_totals_of_step_t_are_due_at_step_t_plus_lag(world, lag):
    ex = _exchange(world, K=1, lag=lag)
    due = {t: _step(ex, t, loss=float(t), state=[float(t), 0.0]) for t in range(1, 10)}
    for t in range(1, lag + 1):
        assert due[t] is None
    for t in range(lag + 1, 10):
        assert due[t].step == t - lag and due[t].mean_loss == t - lag and due[t].mean_state[0] == t - lag
    assert all(c[0] == "iallreduce_to_host" for c in world.calls)


def test_an_exchange_progressed_during_the_lag_is_counted_ready_at_the_wait(world):
    world.ready_after_tests = 3  # a poke at its start and one per step after: ready at the wait at lag 2, not 1
    for lag, ready in ((1, 0), (2, 1)):
        ex = _exchange(world, K=1, lag=lag)
        for t in range(1, lag + 2):
            _step(ex, t)
        assert ex.waited == 1 and ex.ready_at_wait == ready


def test_the_generation_travels_with_the_state(world):
    ex = _exchange(world, K=1, lag=1)
    _step(ex, 1, state=[1.0, 0.0], generation=5)
    assert _step(ex, 2, state=[1.0, 0.0], generation=6).generation == 5


def test_a_checkpoint_completes_the_exchanges_in_flight_and_a_restore_replays_them(world):
    ex = _exchange(world, K=1, lag=3)
    for t in range(1, 6):
        _step(ex, t, loss=float(t), state=[float(t), 1.0], generation=t // 2)
    saved = ex.state_dict()  # exchanges of steps 3, 4, 5 in flight
    assert [t["step"] for t in saved["completed"]] == [3, 4, 5]
    uninterrupted = [_step(ex, t, loss=float(t), state=[float(t), 1.0]) for t in range(6, 9)]
    restored = _exchange(world, K=1, lag=3)
    restored.load_state_dict(saved)
    replayed = [_step(restored, t, loss=float(t), state=[float(t), 1.0]) for t in range(6, 9)]
    for a, b in zip(uninterrupted, replayed):
        assert (a.step, a.mean_loss, a.generation, a.mean_state.tolist()) == \
               (b.step, b.mean_loss, b.generation, b.mean_state.tolist())


def test_loss_vector_accepts_floats_tensors_and_lists_only():
    assert loss_vector(None, torch.device("cpu")).numel() == 0
    assert loss_vector(np.array([1.0, 2.0]), torch.device("cpu")).tolist() == [1.0, 2.0]
    assert loss_vector([torch.tensor(1.5), torch.tensor([2.5])], torch.device("cpu")).tolist() == [1.5, 2.5]
    with pytest.raises(TypeError, match="loss must be a float, a tensor"):
        loss_vector("0.3", torch.device("cpu"))
