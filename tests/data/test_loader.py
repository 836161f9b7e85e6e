import numpy as np
import pytest
import torch

from fda.data import DatasetError, ShardLoader


def make(n=100, bs=8, seed=0, worker=0, shard=None):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    y = torch.arange(n, dtype=torch.int64)
    idx = np.arange(0, n, 2) if shard is None else shard
    return ShardLoader(x, y, idx, bs, seed=seed, worker=worker), idx


def ids(loader, k):
    return [loader.next_batch()[1].tolist() for _ in range(k)]


def test_batches_shapes_and_shard_membership():
    ld, idx = make()
    xb, yb = ld.next_batch()
    assert xb.shape == (8, 1, 2, 2) and yb.shape == (8,) and yb.dtype == torch.int64
    assert torch.equal(xb[:, 0, 0, 0].long(), yb)  # x and y stay aligned
    assert set(yb.tolist()) <= set(idx.tolist())
    assert ld.batches_per_pass == 50 // 8 == 6


def test_deterministic_and_depends_on_seed_and_worker():
    a, _ = make(seed=1, worker=2)
    b, _ = make(seed=1, worker=2)
    c, _ = make(seed=2, worker=2)
    d, _ = make(seed=1, worker=3)
    sa = ids(a, 20)
    assert sa == ids(b, 20)
    assert sa != ids(c, 20) and sa != ids(d, 20)


def test_each_pass_covers_shard_and_reshuffles():
    ld, idx = make(n=64, bs=8)  # shard of 32, exactly 4 batches
    p0 = sum(ids(ld, 4), [])
    p1 = sum(ids(ld, 4), [])
    assert sorted(p0) == sorted(idx.tolist()) == sorted(p1)
    assert p0 != p1


def test_partial_batch_dropped_distinct_within_pass():
    ld, idx = make(n=100, bs=8)  # shard 50 -> 6 batches of 8, 2 dropped per pass
    for _ in range(3):
        seen = sum(ids(ld, ld.batches_per_pass), [])
        assert len(seen) == 48 == len(set(seen))
    assert ld.epoch == 3.0 and ld.pass_number == 3 and ld.position == 0


def test_shard_smaller_than_batch():
    ld, idx = make(n=10, bs=32)  # shard of 5
    assert ld.batches_per_pass == 1
    b1, b2 = ids(ld, 2)
    assert len(b1) == len(b2) == 5  # the batch shrinks to the shard
    assert sorted(b1) == sorted(b2) == idx.tolist()


@pytest.mark.parametrize("k", [0, 1, 5, 6, 7, 13])
def test_resume_exact(k):
    ref, _ = make(n=100, bs=8, seed=4, worker=1)
    expected = ids(ref, 20)
    a, _ = make(n=100, bs=8, seed=4, worker=1)
    got = ids(a, k)
    state = a.state_dict()
    b, _ = make(n=100, bs=8, seed=4, worker=1)
    b.load_state_dict(state)
    assert got + ids(b, 20 - k) == expected


def test_state_dict_roundtrip_and_mismatch():
    a, _ = make()
    ids(a, 9)
    s = a.state_dict()
    assert s["pass"] == 1 and s["position"] == 3
    b, _ = make(seed=9)
    with pytest.raises(DatasetError, match="seed"):
        b.load_state_dict(s)
    c, _ = make(bs=4)
    with pytest.raises(DatasetError, match="batch_size"):
        c.load_state_dict(s)
    d, _ = make()
    d.load_state_dict({"pass": 1, "position": 3})  # minimal state is enough
    assert ids(d, 1) == ids(a, 1)


def test_indices_as_tensor_and_iter():
    ld, _ = make(shard=torch.tensor([3, 1, 4, 1, 5, 9, 2, 6]))
    it = iter(ld)
    xb, yb = next(it)
    assert yb.shape == (8,) and sorted(yb.tolist()) == [1, 1, 2, 3, 4, 5, 6, 9]


def test_errors():
    x, y = torch.zeros(10, 1, 2, 2), torch.zeros(10, dtype=torch.int64)
    with pytest.raises(DatasetError, match="empty shard"):
        ShardLoader(x, y, np.array([], dtype=np.int64), 4, seed=0, worker=0)
    with pytest.raises(DatasetError, match="outside"):
        ShardLoader(x, y, np.array([10]), 4, seed=0, worker=0)
    with pytest.raises(DatasetError, match="batch_size"):
        ShardLoader(x, y, np.arange(5), 0, seed=0, worker=0)
