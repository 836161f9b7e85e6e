"""fda: Federated Dynamic Averaging over MPI.

Add FDA to an existing PyTorch training script (launch it with `mpiexec -n K python script.py`):

    import torch, fda
    ctx = fda.init(seed=0)                       # MPI world, device binding, per-rank threads
    model = MyNet().to(ctx.device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sync = fda.Synchronizer(model, ctx, strategy="fda", monitor="sketch", theta=2.0, log="runs/mine")
    for x, y in fda.shard(my_dataset, ctx, batch_size=32):   # or any loader
        loss = torch.nn.functional.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device))
        opt.zero_grad(); loss.backward(); opt.step()
        synced = sync.step(loss=loss.detach())    # True when the models were averaged
        if sync.should_evaluate():
            sync.log_eval(test_acc=evaluate(sync.averaged_model()))
    sync.close()

`fda.init` -> `Context`; `fda.Synchronizer` takes every setting of `fda train` (see `fda.Config`)
and raises `fda.ConfigError` for bad ones; `fda.shard` is an optional data helper.
examples/own_loop.py is this example, runnable as written.
"""
from fda.version import __version__  # noqa: E402
from fda.config import Config, ConfigError, make_config  # noqa: E402
from fda.context import Context, Shard, init, shard  # noqa: E402
from fda.synchronizer import Synchronizer  # noqa: E402

__all__ = ["init", "shard", "Synchronizer", "Context", "Shard", "Config", "ConfigError", "make_config",
           "__version__"]
