"""A one-rank stand-in for fda.comm.Comm: every collective of a world of one process (the sum or
MAX over one rank is the rank's own value), with the byte counts and a log of the calls, so the
rooms of fda.sync are tested without MPI."""
import numpy as np
import pytest
import torch

from fda.comm import ByteCounter


class PendingOnOneRank:
    """fda.comm.PendingAllreduce's interface over one rank: complete after `ready_after_tests` tests."""

    def __init__(self, values, ready_after_tests):
        self.values, self.left = values, ready_after_tests
        self.ready_before_wait = False

    def test(self):
        self.left -= 1
        return self.left <= 0

    def wait(self):
        self.ready_before_wait = self.left <= 0
        return self.values


class OneRankWorld:
    size, rank = 1, 0

    ready_after_tests = 1  # an Iallreduce completes at its n-th test() (as MPI progresses it)

    def __init__(self):
        self.bytes = ByteCounter()
        self.calls: list[tuple[str, str, str]] = []  # (collective, op, kind)

    def _count(self, name, op, kind, nbytes):
        self.calls.append((name, op, kind))
        self.bytes.add(kind, nbytes)

    def allreduce_to_host(self, t, op="sum", kind="state"):
        self._count("allreduce_to_host", op, kind, 2 * t.numel() * t.element_size())
        return t.detach().cpu().numpy().copy()

    def iallreduce_to_host(self, t, op="sum", kind="state"):
        self._count("iallreduce_to_host", op, kind, 2 * t.numel() * t.element_size())
        return PendingOnOneRank(t.detach().cpu().numpy().copy(), ready_after_tests=self.ready_after_tests)

    def iallreduce_(self, t, op="sum", kind="sync", fields=False):
        self._count("iallreduce_", "sum" if fields else op, kind, 2 * t.numel() * t.element_size())
        return PendingOnOneRank(t, ready_after_tests=self.ready_after_tests)

    def allreduce_(self, t, op="sum", kind="train"):
        self._count("allreduce_", op, kind, 2 * t.numel() * t.element_size())
        return t

    def allreduce_fields_(self, t, kind="sync"):
        self._count("allreduce_fields_", "sum", kind, 2 * t.numel())
        return t

    def allreduce_values(self, values, op="sum", kind="log"):
        arr = np.asarray(values, dtype=np.float64)
        self._count("allreduce_values", op, kind, 2 * arr.nbytes)
        return arr.copy()

    def bcast_(self, t, root=0, kind="setup"):
        self._count("bcast_", "", kind, 0)
        return t

    def bcast_object(self, obj, root=0):
        return obj

    def allgather_object(self, obj):
        return [obj]


@pytest.fixture
def world():
    return OneRankWorld()


@pytest.fixture
def seeded():
    """A torch generator with a fixed seed; the seed is in the test's name on failure (printed)."""
    seed = 1234
    print(f"seed={seed}")
    return torch.Generator().manual_seed(seed)
