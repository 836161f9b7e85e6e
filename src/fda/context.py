"""`fda.init`: the MPI world, node-local device binding, per-rank threads, failure handling."""
from __future__ import annotations

import atexit
import sys
import traceback
import warnings

import numpy as np
import torch

from fda.comm import Comm, cpu_threads_for_rank
from fda.data.loader import BatchOrder, steps_per_epoch
from fda.data.partition import partition

__all__ = ["Context", "init", "Shard", "shard", "steps_per_epoch"]


class Context:
    """What a rank knows about the run it is part of (made by `fda.init`).

    mpi_comm: the mpi4py communicator, for your own collectives (e.g. `ctx.mpi_comm.allreduce(x)`);
    fda_comm: fda's `fda.comm.Comm` around it (byte accounting, failure and stall protocols);
    rank / world_size: MPI's; workers = world_size * workers_per_rank (K, the number of models
    averaged); device: this rank's torch device; threads: torch CPU threads; seed: the run's seed.
    shard_batches: batches per pass of the last `fda.shard` made with this context (None
    before one is made); `Synchronizer.should_evaluate` falls back to it.
    `ctx.comm` and `ctx.world` are the former names of mpi_comm and fda_comm (deprecated).
    """

    def __init__(self, mpi_comm=None, fda_comm: Comm | None = None, rank: int = 0, world_size: int = 1,
                 workers_per_rank: int = 1, device: torch.device | None = None, threads: int = 1, seed: int = 0,
                 shard_batches: int | None = None, *, comm=None, world: Comm | None = None):
        if comm is not None or world is not None:
            _deprecated("Context(comm=..., world=...)", "Context(mpi_comm=..., fda_comm=...)")
        self.mpi_comm = mpi_comm if mpi_comm is not None else comm
        self.fda_comm = fda_comm if fda_comm is not None else world
        self.rank, self.world_size, self.workers_per_rank = rank, world_size, workers_per_rank
        self.device = device if device is not None else torch.device("cpu")
        self.threads, self.seed, self.shard_batches = threads, seed, shard_batches

    def __repr__(self) -> str:
        return (f"Context(rank={self.rank}, world_size={self.world_size}, workers_per_rank={self.workers_per_rank}, "
                f"device={self.device}, threads={self.threads}, seed={self.seed})")

    @property
    def comm(self):
        """Deprecated name of `mpi_comm` (the mpi4py communicator)."""
        _deprecated("ctx.comm", "ctx.mpi_comm")
        return self.mpi_comm

    @property
    def world(self) -> Comm:
        """Deprecated name of `fda_comm` (fda's communicator)."""
        _deprecated("ctx.world", "ctx.fda_comm")
        return self.fda_comm

    @property
    def workers(self) -> int:
        """K: the number of workers (models) over all ranks."""
        return self.world_size * self.workers_per_rank

    @property
    def local_rank(self) -> int:
        """This rank's index among the ranks on its node."""
        return self.fda_comm.local_rank

    @property
    def is_root(self) -> bool:
        """True on rank 0 (the rank that writes the log)."""
        return self.rank == 0

    def worker_ids(self) -> list[int]:
        """Global indices of the workers this rank hosts."""
        return [self.rank * self.workers_per_rank + j for j in range(self.workers_per_rank)]


def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated; use {new}", DeprecationWarning, stacklevel=3)


def _install_excepthook(world: Comm) -> None:
    """An uncaught exception on one rank ends every rank instead of leaving them blocked in a collective."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            world.abort(130)
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
        world.fail(f"{exc_type.__name__}: {exc}")

    sys.excepthook = hook


def init(seed: int = 0, *, device: str = "auto", threads: int | None = None, workers_per_rank: int = 1,
         gpu_aware_mpi: str = "auto", comm=None, abort_on_error: bool = True) -> Context:
    """Join the MPI world and bind this rank to its device and cores; returns a `Context`.

    Call it once per process, before building the model (launch with `mpiexec -n K`; a plain
    `python script.py` is a world of one rank).
    - seed: seeds torch (seed + rank) and numpy; `Synchronizer` broadcasts rank 0's initial
      model, so different per-rank initialisations do not matter.
    - device: 'auto' takes CUDA device (node-local rank mod #GPUs) when CUDA is there, else the
      CPU; 'cpu' or 'cuda' to insist.
    - threads: torch CPU threads; default = the cores the launcher bound this rank to, or
      the node's cores divided by the ranks on the node.
    - workers_per_rank: models this rank hosts (then pass a list of that many to Synchronizer).
    - gpu_aware_mpi: 'auto' | 'true' | 'false': hand GPU buffers to MPI directly or stage them.
    - comm: an mpi4py communicator to run on (default MPI.COMM_WORLD).
    - abort_on_error: an uncaught exception on any rank aborts the whole job (no hang), after
      rank 0 has marked the log failed.
    Raises ValueError for an impossible request (workers_per_rank < 1, device='cuda' without CUDA,
    gpu_aware_mpi='true' with an MPI that lacks CUDA support).
    """
    if workers_per_rank < 1:
        raise ValueError("workers_per_rank must be >= 1")
    world = Comm(comm, gpu_aware=gpu_aware_mpi)
    dev = world.device_for_rank(device)
    n_threads = threads or cpu_threads_for_rank(world.local_size)
    torch.set_num_threads(n_threads)
    torch.manual_seed(seed + world.rank)
    np.random.seed((seed * 7919 + world.rank) % 2**32)
    world.watch_failures()
    # Cancel the watcher's pending receive before mpi4py finalizes MPI (atexit runs last-in first-out).
    atexit.register(world.stop_watching)
    if abort_on_error:
        _install_excepthook(world)
    return Context(mpi_comm=world.comm, fda_comm=world, rank=world.rank, world_size=world.size,
                   workers_per_rank=workers_per_rank, device=dev, threads=n_threads, seed=seed)


class Shard:
    """This rank's IID share of a map-style dataset, as mini-batches; iterating once = one epoch.

    The dataset must be the same on every rank. It is split as `fda train` splits it with
    partition=iid (seeded by ctx.seed) into K = ctx.workers disjoint shards, and each worker's
    batches come from the same endless, seeded stream as in `fda train` (`fda.data.BatchOrder`:
    a fresh order per pass over the shard, the last partial batch of a pass dropped), so a loop
    over `fda.shard` sees the batches that `fda train` would. One epoch is `len(shard)` =
    ceil(N / (K * batch_size)) batches, the same on every rank, so no rank waits in a collective
    that another never enters. Loop over the same Shard again for the next epoch. Its only state is
    `epoch` (epochs started so far): save it with your checkpoint and set it back to resume the order.

    Batches are what `torch.utils.data.default_collate` makes of `batch_size` samples (for a
    TensorDataset: its tensors indexed at once), where the dataset keeps them: move them to
    ctx.device yourself.
    """

    def __init__(self, dataset, ctx: Context, batch_size: int, *, worker: int = 0, shuffle: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= worker < ctx.workers_per_rank:
            raise ValueError(f"worker={worker}: this rank hosts workers 0..{ctx.workers_per_rank - 1}")
        n, k = len(dataset), ctx.workers
        if n // k < batch_size:
            raise ValueError(f"{n} samples over {k} workers leaves {n // k} per worker, "
                             f"fewer than one batch of {batch_size}")
        me = ctx.worker_ids()[worker]
        shard = partition(np.zeros(n, dtype=np.int64), k, "iid", seed=ctx.seed)[me]
        self.order = BatchOrder(shard, batch_size, seed=ctx.seed, worker=me, num_items=n, shuffle=shuffle)
        self.dataset, self.batch_size, self.worker_id, self.epoch = dataset, batch_size, me, 0
        self.steps_per_epoch = steps_per_epoch(n, k, batch_size)

    def __len__(self) -> int:
        """Batches per epoch (steps per epoch), the same on every rank."""
        return self.steps_per_epoch

    def __iter__(self):
        self.order.seek(self.epoch * self.steps_per_epoch)
        self.epoch += 1
        tensors = self.dataset.tensors if isinstance(self.dataset, torch.utils.data.TensorDataset) else None
        for _ in range(self.steps_per_epoch):
            sel = self.order.next_indices()
            if tensors is not None:
                yield [t[sel] for t in tensors]
            else:
                yield torch.utils.data.default_collate([self.dataset[int(i)] for i in sel])


def shard(dataset, ctx: Context, batch_size: int = 32, **kw) -> Shard:
    """Optional data helper: this rank's shard of `dataset` as mini-batches (see `Shard`).

        for x, y in fda.shard(my_dataset, ctx, batch_size=32):   # one epoch
            ...

    Any other loader works with fda too, as long as every rank makes the same number of
    `Synchronizer.step()` calls. Keywords: worker (which hosted worker, for
    workers_per_rank > 1), shuffle (default True). Also records len(shard) in
    ctx.shard_batches, so `Synchronizer.should_evaluate()` evaluates once per epoch when
    neither eval_every nor steps_per_epoch was given.
    """
    s = Shard(dataset, ctx, batch_size, **kw)
    ctx.shard_batches = len(s)
    return s
