"""fda.collectives: how a sync's bytes travel (in-process on every rank:
    mpiexec -n 2 python -m mpi4py -m pytest --with-mpi -m mpi tests/test_collectives.py)."""
import pytest
import torch

from fda.collectives import ExactMean, mean_of_tensors_
from fda.flat import FlatModel

pytestmark = pytest.mark.mpi


def gathered(ctx, t):
    return [torch.as_tensor(x) for x in ctx.comm.allgather(t.detach().cpu().numpy())]


def everywhere(ctx, ok: bool) -> bool:
    return all(ctx.comm.allgather(bool(ok)))


def hosted(ctx, n=2, seed=0):
    """n hosted workers on this rank with rank-dependent weights and BatchNorm statistics."""
    out = []
    for j in range(n):
        torch.manual_seed(seed + 10 * ctx.rank + j)
        m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
        m(torch.randn(5, 3))  # move the running statistics
        out.append(FlatModel(m))
    return out


def test_exact_mean_is_the_mean_of_all_workers(mpi_ctx):
    workers = hosted(mpi_ctx)
    every = torch.stack([f for g in gathered(mpi_ctx, torch.stack([w.flat for w in workers])) for f in g])
    mean = ExactMean(mpi_ctx.world, K=every.shape[0]).average_(workers)
    assert mean.data_ptr() == workers[0].flat.data_ptr()
    ok = torch.allclose(mean, every.mean(0), rtol=1e-6, atol=1e-7)
    assert everywhere(mpi_ctx, ok and all(torch.equal(g, mean) for g in gathered(mpi_ctx, mean)))


@pytest.mark.parametrize("packed", [False, True])
def test_mean_of_tensors_replaces_every_workers_tensors(mpi_ctx, packed):
    torch.manual_seed(mpi_ctx.rank)
    per_worker = [[torch.randn(3), torch.randn(2, 2)] for _ in range(2)]
    every = [ts for g in mpi_ctx.comm.allgather([[t.numpy().copy() for t in w] for w in per_worker]) for ts in g]
    K = len(every)
    mean_of_tensors_(mpi_ctx.world, per_worker, K, packed=packed)
    ok = all(torch.allclose(ts[i], torch.as_tensor(sum(w[i] for w in every) / K), atol=1e-6)
             for ts in per_worker for i in range(2))
    assert everywhere(mpi_ctx, ok)
