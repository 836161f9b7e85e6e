"""fda.sync.exchange: the step buffer's layout and what the exchange tells every rank."""
import math

import numpy as np
import pytest
import torch

from fda.collectives import CollectiveError
from fda.monitor import LinearMonitor, PerWorkerMonitor
from fda.sync.exchange import HEAD, StepExchange, loss_vector


def _exchange(world, K=3):
    return StepExchange(world, K, torch.device("cpu"))


def test_an_unchecked_step_packs_the_head_only(world):
    ex = _exchange(world)
    packed = ex.pack([0.5, 1.0, 1.5], 0, None, stop=False)
    assert packed.dtype == torch.float64 and packed.tolist() == [3.0, 0.0, 3.0, 0.0]
    totals = ex.exchange(packed, None, step=1)
    assert totals.mean_loss == 1.0 and not totals.stop_requested and totals.mean_state is None
    assert world.calls == [("allreduce_to_host", "sum", "state")]


def test_a_checked_step_packs_the_state_after_the_head(world):
    ex = _exchange(world, K=2)
    state = torch.tensor([4.0, 2.0], dtype=torch.float64)
    packed = ex.pack(torch.tensor(0.25), 2, lambda out: out.copy_(state), stop=True)
    assert packed.numel() == HEAD + 2 and packed[HEAD:].tolist() == [4.0, 2.0]
    totals = ex.exchange(packed, LinearMonitor().reduce_state, step=3)
    np.testing.assert_array_equal(totals.mean_state, [2.0, 1.0])  # the sum over one rank / K
    assert totals.stop_requested and totals.mean_loss == 0.25
    assert len(world.calls) == 1  # a sum monitor rides on the step's one Allreduce


def test_a_max_monitor_makes_its_own_second_allreduce(world):
    ex = _exchange(world, K=2)
    packed = ex.pack(0.0, 1, lambda out: out.fill_(7.0), stop=False)
    totals = ex.exchange(packed, PerWorkerMonitor().reduce_state, step=1)
    assert totals.mean_state.tolist() == [7.0]  # MAX, not divided by K
    assert [c[1] for c in world.calls] == ["sum", "max"]


def test_buffers_are_reused_per_state_size(world):
    ex = _exchange(world)
    a = ex.pack(1.0, 2, lambda out: out.zero_(), stop=False)
    b = ex.pack(1.0, 0, None, stop=False)
    c = ex.pack(1.0, 2, lambda out: out.zero_(), stop=False)
    assert a is c and a is not b


@pytest.mark.parametrize("loss, state", [(math.nan, 0.0), (1.0, math.inf), (math.inf, 0.0)])
def test_non_finite_values_fail_on_every_rank_with_the_step(world, loss, state):
    ex = _exchange(world)
    packed = ex.pack(loss, 1, lambda out: out.fill_(state), stop=False)
    with pytest.raises(CollectiveError, match="non-finite loss, drift or state at step 9"):
        ex.exchange(packed, LinearMonitor().reduce_state, step=9)


def test_no_loss_gives_a_nan_mean(world):
    ex = _exchange(world)
    assert math.isnan(ex.exchange(ex.pack(None, 0, None, stop=False), None, step=1).mean_loss)


def test_loss_vector_accepts_floats_tensors_and_lists_only():
    assert loss_vector(None, torch.device("cpu")).numel() == 0
    assert loss_vector(np.array([1.0, 2.0]), torch.device("cpu")).tolist() == [1.0, 2.0]
    assert loss_vector([torch.tensor(1.5), torch.tensor([2.5])], torch.device("cpu")).tolist() == [1.5, 2.5]
    with pytest.raises(TypeError, match="loss must be a float, a tensor"):
        loss_vector("0.3", torch.device("cpu"))
