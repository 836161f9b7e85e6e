"""fda: Federated Dynamic Averaging over MPI.

    import fda
    ctx = fda.init(seed=0)
    sync = fda.Synchronizer(model, ctx, strategy="fda", monitor="sketch", theta=2.0, log="runs/mine")
    ...  # after each optimizer.step():  sync.step(loss=loss.item())
    sync.close()
"""
__version__ = "0.1.0"

from fda.config import Config, ConfigError, make_config  # noqa: E402
from fda.context import Context, init, shard  # noqa: E402
from fda.synchronizer import Synchronizer  # noqa: E402

__all__ = ["init", "shard", "Synchronizer", "Context", "Config", "ConfigError", "make_config", "__version__"]
