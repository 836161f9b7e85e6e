"""`fda.comm.Comm` in one process (MPI.COMM_SELF): every collective goes through one helper that
marks the stall position, makes the call and counts its bytes."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

from fda.comm import Comm


@pytest.fixture
def solo():
    return Comm(MPI.COMM_SELF, gpu_aware="false")


def test_a_rank_of_one_is_its_own_node(solo):
    assert (solo.rank, solo.size, solo.local_rank, solo.local_size) == (0, 1, 0, 1)
    assert solo.device_for_rank("cpu") == torch.device("cpu")


@pytest.mark.parametrize("call, what, kind, nbytes", [
    (lambda c: c.allreduce_(torch.ones(5), kind="sync"), "sync Allreduce", "sync", 2 * 5 * 4),
    (lambda c: c.allreduce_to_host(torch.ones(3, dtype=torch.float64)), "state Allreduce", "state", 2 * 3 * 8),
    (lambda c: c.allreduce_values([1.0, 2.0], kind="eval"), "eval Allreduce", "eval", 2 * 2 * 8),
    (lambda c: c.allreduce_fields_(torch.zeros(16, dtype=torch.uint8)), "sync Allreduce (integer fields)", "sync", 2 * 16),
    (lambda c: c.bcast_(torch.ones(7)), "setup broadcast", "setup", 0),  # n * (P - 1) bytes
])
def test_each_collective_is_marked_and_counted(solo, call, what, kind, nbytes):
    seen = []
    real = solo.position.enter
    solo.position.enter = lambda w: (seen.append(w), real(w))[-1]
    call(solo)
    assert seen == [what]
    assert solo.position.seq == 1 and not solo.position.inside
    assert solo.bytes.by_kind == {kind: nbytes}


@pytest.mark.parametrize("call, what", [
    (lambda c: c.bcast_object({"a": 1}), "broadcast"),
    (lambda c: c.allgather_object(3), "allgather"),
    (lambda c: c.gather_object(3), "gather"),
    (lambda c: c.barrier(), "barrier"),
])
def test_object_collectives_are_marked_not_counted(solo, call, what):
    call(solo)
    assert solo.position.what == what and solo.position.seq == 1 and not solo.position.inside
    assert solo.bytes.by_kind == {}


def test_results(solo):
    t = torch.arange(4.0)
    assert solo.allreduce_(t, "max") is t and torch.equal(t, torch.arange(4.0))
    local = torch.tensor([1.0, 2.0], dtype=torch.float64)
    out = solo.allreduce_to_host(local)
    out[0] = 99.0
    assert local[0] == 1.0  # the caller's buffer keeps its local values
    np.testing.assert_array_equal(solo.allreduce_values([3.0], "min"), [3.0])
    assert solo.allgather_object("x") == ["x"] and solo.gather_object(5) == [5] and solo.bcast_object(7) == 7


def test_a_non_blocking_allreduce_leaves_its_result_in_the_tensor(solo):
    t = torch.arange(5.0)
    pending = solo.iallreduce_(t, "max")
    assert solo.position.what == "sync Iallreduce" and solo.bytes.by_kind == {"sync": 2 * 5 * 4}  # at the start
    assert pending.wait() is t and torch.equal(t, torch.arange(5.0)) and pending.test()
    assert solo.position.what == "wait on a sync Iallreduce" and not solo.position.inside
    fields = torch.arange(16, dtype=torch.uint8)
    assert torch.equal(solo.iallreduce_(fields, fields=True).wait(), torch.arange(16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="multiple of 8 bytes"):
        solo.iallreduce_(torch.zeros(7, dtype=torch.uint8), fields=True)
    with pytest.raises(ValueError, match="contiguous"):
        solo.iallreduce_(torch.zeros(4, 4).t())


def test_a_failing_call_leaves_the_collective(solo):
    def broken(*a, **k):
        raise RuntimeError("MPI said no")
    with pytest.raises(RuntimeError, match="MPI said no"):
        solo._collective("test Allreduce", broken, kind="test", nbytes=8)
    assert not solo.position.inside and solo.bytes.get("test") == 0


@pytest.mark.parametrize("bad", [torch.zeros(7, dtype=torch.uint8), torch.zeros(8, dtype=torch.int8),
                                 torch.zeros(16, dtype=torch.uint8)[::2]])
def test_integer_fields_need_contiguous_whole_words(solo, bad):
    with pytest.raises(ValueError, match="multiple of 8 bytes"):
        solo.allreduce_fields_(bad)


def test_non_contiguous_tensor_refused(solo):
    with pytest.raises(ValueError, match="contiguous"):
        solo.allreduce_(torch.zeros(4, 4).t())


def test_step_and_stall_timeout_are_recorded(solo):
    solo.set_step(12)
    solo.set_stall_timeout(3.0)
    assert solo.position.step == 12 and solo.stall_timeout == 3.0
    assert "at step 12, outside any collective" in solo.position.describe(solo.position.since + 1)


def test_the_failure_callback_runs_once_on_rank_0(solo):
    calls = []
    solo.set_failure_callback(lambda rank, message: calls.append((rank, message)))
    solo.record_failure(0, "boom")
    solo.record_failure(0, "again")
    assert calls == [(0, "boom")]


def test_one_rank_has_no_watcher(solo):
    solo.watch_failures()
    assert solo._watcher is None
    solo.stop_watching()
