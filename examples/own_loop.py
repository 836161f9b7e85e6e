"""FDA in your own PyTorch training loop: the README's example, runnable as written.

    mpiexec -n 2 python examples/own_loop.py

Trains a small MLP on a synthetic classification task that the script generates itself
(the same data on every rank; `fda.shard` gives each rank its own part). Rank 0 writes the
log to runs/mine/metrics.h5 (read it with `fda report runs/mine`); remove runs/mine to run
the example again, fda refuses to overwrite a run.
"""
import torch

import fda

FEATURES, CLASSES = 32, 4


def make_dataset(n: int, seed: int) -> torch.utils.data.TensorDataset:
    """Gaussian blobs around 4 fixed centres: learnable, not trivial (the blobs overlap)."""
    centres = torch.randn(CLASSES, FEATURES, generator=torch.Generator().manual_seed(1234)) * 0.3
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = centres[y] + torch.randn(n, FEATURES, generator=g)
    return torch.utils.data.TensorDataset(x, y)


class MyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, 256), torch.nn.ReLU(),
            torch.nn.Linear(256, 256), torch.nn.ReLU(),
            torch.nn.Linear(256, CLASSES))

    def forward(self, x):
        return self.body(x)


my_dataset = make_dataset(8192, seed=1)
test_x, test_y = make_dataset(1000, seed=2).tensors


@torch.no_grad()
def evaluate(model: torch.nn.Module) -> float:
    """Test accuracy. The averaged model is the same on every rank, so every rank gets the same value."""
    was_training = model.training
    model.eval()
    acc = (model(test_x.to(ctx.device)).argmax(1) == test_y.to(ctx.device)).float().mean().item()
    model.train(was_training)
    return acc


ctx = fda.init(seed=0)                       # MPI world, node-local device binding, per-rank threads
model = MyNet().to(ctx.device)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
sync = fda.Synchronizer(model, ctx, strategy="fda", monitor="sketch", theta=2.0,
                        log="runs/mine")     # broadcasts rank 0's initial weights; log optional
for x, y in fda.shard(my_dataset, ctx, batch_size=32):   # optional helper; any loader works
    loss = torch.nn.functional.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device))
    opt.zero_grad(); loss.backward(); opt.step()
    synced = sync.step(loss=loss.detach())    # state Allreduce; full sync when H > Θ
    if sync.should_evaluate():                # optional: evaluation on the averaged model
        sync.log_eval(test_acc=evaluate(sync.averaged_model()))
sync.close()                                 # final summary, log status=completed

if ctx.rank == 0:
    test_acc = sync.last_eval[0]
    print(f"own_loop: K={ctx.workers} steps={sync.step_count} syncs={sync.syncs} "
          f"test_acc={test_acc:.4f} log=runs/mine/metrics.h5", flush=True)
