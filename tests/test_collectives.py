"""fda.collectives: how a sync's bytes travel. The MPI tests run in-process on every rank:
    mpiexec -n 2 python -m mpi4py -m pytest --with-mpi -m mpi tests/test_collectives.py"""
import pytest
import torch

from conftest import run_fda
from fda.collectives import ExactMean, check_compression, levels, mean_of_tensors_
from fda.config import ConfigError
from fda.flat import FlatModel

mpi = pytest.mark.mpi


def test_levels_leave_room_for_the_sum_of_k_workers():
    assert levels("int8", 1) == 127 and levels("int8", 5) == 25 and levels("int8", 127) == 1
    assert levels("int16", 5) == 6553
    for compression, bits in (("int8", 8), ("int16", 16)):
        for k in (1, 2, 3, 5, 7, 16, 100, 127):
            assert 2 * levels(compression, k) * k <= 2 ** bits - 1  # biased fields never overflow
    check_compression("none", 10 ** 6)
    with pytest.raises(ConfigError, match=r"sync_compression=int8 cannot be exact with K=128 .* at most K=127"):
        check_compression("int8", 128)
    with pytest.raises(ConfigError, match="K=32768"):
        check_compression("int16", 32768)


def test_too_many_workers_for_the_width_is_refused_before_the_run(tmp_path):
    res = run_fda("train", "dataset=synthetic", "model=mlp", "threads=1", "max_steps=2", "workers_per_rank=64",
                  "sync_compression=int8", "--no-progress", "--out", tmp_path / "run", n=2)
    assert res.returncode == 2, res.stderr[-2000:]
    assert res.stderr.count("sync_compression=int8 cannot be exact with K=128") == 1  # once, by rank 0
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run" / "metrics.h5").exists()


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


@mpi
def test_exact_mean_is_the_mean_of_all_workers(mpi_ctx):
    workers = hosted(mpi_ctx)
    every = torch.stack([f for g in gathered(mpi_ctx, torch.stack([w.flat for w in workers])) for f in g])
    mean = ExactMean(mpi_ctx.world, K=every.shape[0]).average_(workers)
    assert mean.data_ptr() == workers[0].flat.data_ptr()
    ok = torch.allclose(mean, every.mean(0), rtol=1e-6, atol=1e-7)
    assert everywhere(mpi_ctx, ok and all(torch.equal(g, mean) for g in gathered(mpi_ctx, mean)))


@mpi
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


# ------------------------------------------------------------------ compressed syncs (int16, int8)
def _all_drifts(ctx, workers, ref):
    """Every worker's drift w_k - ref, over all ranks (float64)."""
    mine = [(w.flat - ref).double().numpy() for w in workers]
    return torch.stack([torch.as_tensor(u) for g in ctx.comm.allgather(mine) for u in g])


@mpi
@pytest.mark.parametrize("compression", ["int16", "int8"])
def test_quantized_mean_is_bit_identical_and_loses_nothing(mpi_ctx, compression):
    from fda.collectives import BLOCK, QuantizedMean

    ctx = mpi_ctx
    workers = hosted(ctx, n=2)
    K = 2 * ctx.world_size
    torch.manual_seed(123)  # the same last global model everywhere; drifts of different sizes per block
    ref = workers[0].flat.detach().clone()
    ref.copy_(torch.as_tensor(ctx.comm.bcast(ref.numpy(), root=0)))
    for w in workers:
        with torch.no_grad():
            w.flat.copy_(ref + 0.01 * torch.randn_like(ref))
    q = QuantizedMean(ctx.world, K, compression, hosted=2, n=ref.numel(), device=ref.device)
    ok = True
    carried = [torch.zeros(ref.numel(), dtype=torch.float64) for _ in workers]
    for _round in range(3):
        drifts = _all_drifts(ctx, workers, ref)
        residuals = torch.stack([torch.as_tensor(e) for g in ctx.comm.allgather(
            [c.numpy() for c in carried]) for e in g])
        target = q.average_(workers, ref).clone()
        # bit-identical on every rank
        ok &= all(torch.equal(torch.as_tensor(t), target) for t in ctx.comm.allgather(target.numpy()))
        # nothing lost: new w0 + mean of the new residuals == old w0 + mean (drift + old residual)
        new_res = torch.stack([torch.as_tensor(e) for g in ctx.comm.allgather(
            [e[:ref.numel()].double().numpy() for e in q.residuals]) for e in g])
        exact = ref.double() + (drifts + residuals).mean(0)
        ok &= torch.allclose(target.double() + new_res.mean(0), exact, rtol=0, atol=1e-6)
        # each residual is at most half a quantization step of its block
        peak = (drifts + residuals).abs().reshape(K, -1)
        step = torch.nn.functional.pad(peak, (0, (-peak.shape[1]) % BLOCK)).reshape(K, -1, BLOCK).amax((0, 2)) / q.L
        bound = step.repeat_interleave(BLOCK)[:ref.numel()] / 2 * (1 + 1e-4) + 1e-12
        ok &= bool((new_res.abs() <= bound).all())
        carried = [e[:ref.numel()].double().clone() for e in q.residuals]
        ref = target
        for w in workers:  # continue from the new global model with fresh drifts
            with torch.no_grad():
                w.flat.copy_(ref + 0.01 * torch.randn_like(ref))
    assert everywhere(ctx, ok)


@mpi
@pytest.mark.parametrize("compression,at_least", [("int16", 1.99), ("int8", 3.99)])
def test_synchronizer_compressed_sync_bytes_and_identical_w0(mpi_ctx, compression, at_least):
    import math

    import fda
    from fda.collectives import BLOCK

    ctx = mpi_ctx
    runs, sync_bytes = {}, {}  # bytes read after each run: both count on the shared ctx
    for width in ("none", compression):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(20, 300), torch.nn.ReLU(), torch.nn.Linear(300, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        sync = fda.Synchronizer(model, ctx, strategy="fda", monitor="naive", theta=0.0, sync_compression=width)
        gen = torch.Generator().manual_seed(ctx.rank)
        for _ in range(4):
            x, y = torch.randn(16, 20, generator=gen), torch.randint(0, 10, (16,), generator=gen)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            assert sync.step(loss=loss.item())
            w = sync.workers[0].flat
            assert everywhere(ctx, all(torch.equal(torch.as_tensor(g), w) for g in ctx.comm.allgather(w.numpy())))
            assert everywhere(ctx, torch.equal(sync.ref, w))
        runs[width], sync_bytes[width] = sync, sync.mpi_bytes("sync")
        sync.close()
    plain, packed = runs["none"], runs[compression]
    d, n, K, P = plain.d, plain.workers[0].flat.numel(), plain.K, ctx.world_size
    bits = 16 if compression == "int16" else 8
    assert sync_bytes["none"] == 4 * 2 * P * 4 * n
    assert sync_bytes[compression] == 4 * 2 * P * (math.ceil(n * bits / 64) * 8 + 4 * math.ceil(n / BLOCK))
    assert sync_bytes["none"] / sync_bytes[compression] >= at_least
    monitoring = 4 * K * 4 * plain.monitor.state_size
    assert packed.comm_bytes == monitoring + 4 * 2 * K * (d * bits // 8 + 4 * math.ceil(d / BLOCK))
    assert packed.comm_bytes_float32 == plain.comm_bytes == plain.comm_bytes_float32 == monitoring + 4 * 2 * K * 4 * d
    assert "sync " + compression in packed.describe()


# ------------------------------------------- the compressed sync's math, without communication
def _residuals(seed, hosted, blocks, scale=0.01):
    g = torch.Generator().manual_seed(seed)
    from fda.collectives import BLOCK
    return [scale * torch.randn(blocks * BLOCK, generator=g) * torch.linspace(0.1, 3.0, blocks * BLOCK)
            for _ in range(hosted)]


def test_block_peaks_are_the_largest_magnitude_per_block_over_the_workers():
    from fda.collectives import BLOCK, block_peaks
    seed = 7
    es = _residuals(seed, 3, 2)
    es[1][5] = float("nan")  # a NaN peak becomes +inf: MAX stays order-independent
    peaks = block_peaks(es, 2)
    assert peaks[0] == float("inf"), f"seed {seed}"
    expected = torch.stack([e.view(2, BLOCK).abs().amax(1) for e in (es[0], es[2])]).amax(0)[1]
    assert peaks[1] == torch.maximum(expected, es[1].view(2, BLOCK)[1].abs().max()), f"seed {seed}"


@pytest.mark.parametrize("compression", ["int16", "int8"])
def test_quantize_then_decode_is_the_mean_up_to_half_a_step(compression):
    from fda.collectives import BLOCK, block_peaks, decode_mean_, levels, quantize_
    seed, hosted, blocks = 11, 3, 3
    es = _residuals(seed, hosted, blocks)
    v = torch.stack([e.clone() for e in es])
    L = levels(compression, hosted)  # one rank hosting all K workers: its sum is the total
    peaks = block_peaks(es, blocks)
    biased = quantize_(es, peaks, L)
    assert torch.equal(biased, biased.round()) and biased.min() >= 0 and biased.max() <= 2 * L * hosted
    mean_q = decode_mean_(torch.zeros(blocks, BLOCK), biased.reshape(-1), peaks, L, hosted)
    step = (peaks / L).repeat_interleave(BLOCK)
    residuals = torch.stack(es)
    # e_k = v_k - Q(v_k): half a step, up to float32 rounding of v * (L / peak) at a tie
    assert bool((residuals.abs() <= step / 2 * (1 + 1e-3)).all()), f"seed {seed}"
    # nothing lost: mean Q(v) + mean e == mean v
    assert torch.allclose(mean_q.reshape(-1) + residuals.mean(0), v.mean(0), atol=1e-7), f"seed {seed}"


def test_a_zero_block_quantizes_to_zero():
    from fda.collectives import BLOCK, block_peaks, decode_mean_, quantize_
    es = [torch.zeros(BLOCK), torch.zeros(BLOCK)]
    peaks = block_peaks(es, 1)
    biased = quantize_(es, peaks, 5)
    assert torch.equal(biased, torch.full((1, BLOCK), 10.0))  # q = 0, biased by L for each worker
    assert torch.equal(decode_mean_(torch.ones(1, BLOCK), biased.reshape(-1), peaks, 5, 2), torch.zeros(1, BLOCK))
