"""`fda.init`, `Context` and `fda.shard` in one process (MPI.COMM_SELF, several hosted workers)."""
import numpy as np
import pytest
import torch
from mpi4py import MPI

import fda
from fda.context import Context, steps_per_epoch
from fda.data import ShardLoader, partition


@pytest.fixture(scope="module")
def three():
    """One rank hosting K=3 workers."""
    ctx = fda.init(seed=4, threads=1, workers_per_rank=3, comm=MPI.COMM_SELF, abort_on_error=False)
    yield ctx
    ctx.fda_comm.stop_watching()


def test_init_describes_the_rank(three):
    assert (three.rank, three.world_size, three.workers, three.local_rank) == (0, 1, 3, 0)
    assert three.worker_ids() == [0, 1, 2] and three.is_root
    assert three.mpi_comm is MPI.COMM_SELF and three.fda_comm.comm is MPI.COMM_SELF
    assert three.device == torch.device("cpu") and torch.get_num_threads() == 1


def test_the_former_names_still_work_and_say_so(three):
    with pytest.warns(DeprecationWarning, match="ctx.comm is deprecated; use ctx.mpi_comm"):
        assert three.comm is three.mpi_comm
    with pytest.warns(DeprecationWarning, match="ctx.world is deprecated; use ctx.fda_comm"):
        assert three.world is three.fda_comm
    with pytest.warns(DeprecationWarning, match="Context"):
        old = Context(comm=three.mpi_comm, world=three.fda_comm, rank=0, world_size=1, workers_per_rank=3,
                      device=three.device, threads=1, seed=4)
    assert old.mpi_comm is three.mpi_comm and old.fda_comm is three.fda_comm


@pytest.mark.parametrize("bad, match", [(dict(workers_per_rank=0), "workers_per_rank must be >= 1"),
                                        (dict(gpu_aware_mpi="true"), "gpu_aware_mpi=true")])
def test_impossible_requests(bad, match, monkeypatch):
    monkeypatch.setenv("FDA_MPI_CUDA_AWARE", "0")
    with pytest.raises(ValueError, match=match):
        fda.init(comm=MPI.COMM_SELF, abort_on_error=False, **bad)


def test_one_steps_per_epoch_rule():
    assert steps_per_epoch(100, 3, 32) == 2  # ceil(100 / 96)
    assert steps_per_epoch(96, 3, 32) == 1 and steps_per_epoch(5, 3, 32) == 1


def dataset(n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.randn(n, 3, generator=g), torch.arange(n))


@pytest.mark.parametrize("worker", [0, 1, 2])
def test_a_shard_batches_as_fda_train_does(three, worker):
    """fda train: partition=iid over K, one ShardLoader per worker, one batch per step."""
    ds, bs = dataset(), 16
    shard = fda.shard(ds, three, batch_size=bs, worker=worker)
    assert len(shard) == steps_per_epoch(len(ds), 3, bs) == three.shard_batches == 5
    x, y = ds.tensors
    parts = partition(y, three.workers, "iid", seed=three.seed)
    train_loader = ShardLoader(x, y, parts[worker], bs, seed=three.seed, worker=worker)
    for _ in range(3):  # epochs run across the loader's passes (4 batches of 16 from a shard of 66/67)
        for xb, yb in shard:
            tx, ty = train_loader.next_batch()
            assert torch.equal(yb, ty) and torch.equal(xb, tx)


def test_setting_epoch_back_resumes_the_order(three):
    ds = dataset()
    a = fda.shard(ds, three, batch_size=16, worker=1)
    first, second = ([y.tolist() for _, y in a] for _ in range(2))
    b = fda.shard(ds, three, batch_size=16, worker=1)
    b.epoch = 1
    assert [y.tolist() for _, y in b] == second != first


def test_workers_get_disjoint_shards(three):
    ds = dataset()
    seen = [set(sum((y.tolist() for _, y in fda.shard(ds, three, batch_size=16, worker=w, shuffle=False)), []))
            for w in range(3)]
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2]) and not (seen[0] & seen[2])


@pytest.mark.parametrize("kw, match", [(dict(batch_size=0), "batch_size must be >= 1"),
                                       (dict(batch_size=8, worker=3), "this rank hosts workers 0..2"),
                                       (dict(batch_size=80), "leaves 66 per worker, fewer than one batch of 80")])
def test_bad_shards(three, kw, match):
    with pytest.raises(ValueError, match=match):
        fda.shard(dataset(), three, **kw)


def test_seeds_are_per_rank(three):
    fda.init(seed=4, threads=1, comm=MPI.COMM_SELF, abort_on_error=False).fda_comm.stop_watching()
    a = torch.rand(3), np.random.rand()
    fda.init(seed=4, threads=1, comm=MPI.COMM_SELF, abort_on_error=False).fda_comm.stop_watching()
    b = torch.rand(3), np.random.rand()
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
