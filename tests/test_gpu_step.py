"""The GPU path of one step (skipped without a CUDA GPU): one device->host copy per step, bounded
pinned staging, and a CUDA run whose log equals itself run to run."""
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def _model(device):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10)).to(device)


def _train_step(model, opt, gen):
    x = torch.randn(16, 32, generator=gen).to(model[0].weight.device)
    y = torch.randint(10, (16,), generator=gen).to(x.device)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


def _device_to_host_copies(fn) -> int:
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if "DtoH" in e.name and e.device_type.name == "CUDA")


@pytest.mark.parametrize("monitor", ["sketch", "linear", "naive"])
def test_a_step_copies_device_to_host_once(mpi_ctx, monitor):
    import fda
    if mpi_ctx.device.type != "cuda":
        pytest.skip("the context is not on CUDA")
    model = _model(mpi_ctx.device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    sync = fda.Synchronizer(model, mpi_ctx, strategy="fda", monitor=monitor, theta=1e9)
    gen = torch.Generator().manual_seed(mpi_ctx.rank)
    for _ in range(3):  # warm-up: buffers allocated, kernels loaded
        sync.step(_train_step(model, opt, gen))
    loss = _train_step(model, opt, gen)
    torch.cuda.synchronize()
    assert _device_to_host_copies(lambda: sync.step(loss)) == 1
    assert sync.syncs == 0
    sync.close()


def test_pinned_staging_is_one_buffer_per_dtype(mpi_ctx):
    world = mpi_ctx.fda_comm
    if mpi_ctx.device.type != "cuda" or world.cuda_aware:
        pytest.skip("staging is used only for CUDA tensors with an MPI that is not GPU-aware")
    for n in (10, 1000, 100, 5000, 7):
        t = torch.ones(n, device=mpi_ctx.device)
        world.allreduce_(t, "sum", kind="test")
        assert torch.all(t == world.size)
    staged = {dtype: buf.numel() for dtype, buf in world._staging.items()}
    assert staged.get(torch.float32) == 5000
