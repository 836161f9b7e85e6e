"""`fda.init`: the MPI world, node-local device binding, per-rank threads, failure handling."""
from __future__ import annotations

import math
import sys
import traceback
from dataclasses import dataclass

import numpy as np
import torch
from mpi4py import MPI

from fda.comm import Comm, cpu_threads_for_rank


@dataclass
class Context:
    """What a rank knows about the run it is part of.

    comm: the mpi4py communicator (for your own collectives); world: fda's wrapper of it
    (accounting, failure path); workers = world_size * workers_per_rank.
    """
    comm: MPI.Comm
    world: Comm
    rank: int
    world_size: int
    workers_per_rank: int
    device: torch.device
    threads: int
    seed: int

    @property
    def workers(self) -> int:
        return self.world_size * self.workers_per_rank

    @property
    def local_rank(self) -> int:
        return self.world.local_rank

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def worker_ids(self) -> list[int]:
        """Global indices of the workers this rank hosts."""
        return [self.rank * self.workers_per_rank + j for j in range(self.workers_per_rank)]


def _install_excepthook(world: Comm) -> None:
    """An uncaught exception on one rank ends every rank instead of leaving them blocked in a collective."""
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            previous(exc_type, exc, tb)
            world.comm.Abort(130)
        traceback.print_exception(exc_type, exc, tb, file=sys.stderr)
        world.fail(f"{exc_type.__name__}: {exc}")

    sys.excepthook = hook


def init(seed: int = 0, *, device: str = "auto", threads: int | None = None, workers_per_rank: int = 1,
         gpu_aware_mpi: str = "auto", comm: MPI.Comm | None = None, abort_on_error: bool = True) -> Context:
    """Join the MPI world and bind this rank to its device and cores.

    - device: 'auto' takes CUDA device (node-local rank mod #GPUs) when CUDA is there, else the CPU.
    - threads: torch CPU threads; default = the cores the launcher bound this rank to, or
      the node's cores divided by the ranks on the node.
    - abort_on_error: an uncaught exception on any rank aborts the whole job (no hang).
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
    if abort_on_error:
        _install_excepthook(world)
    return Context(comm=world.comm, world=world, rank=world.rank, world_size=world.size,
                   workers_per_rank=workers_per_rank, device=dev, threads=n_threads, seed=seed)


class Shard:
    """This rank's IID share of a map-style dataset, as mini-batches (one pass = one epoch).

    Every rank gets the same number of batches (shards of floor(N / K) samples, last
    partial batch dropped), so no rank waits in a collective that another never enters.
    """

    def __init__(self, dataset, ctx: Context, batch_size: int, *, worker: int = 0, shuffle: bool = True):
        n = len(dataset)
        k = ctx.workers
        per_worker = n // k
        if per_worker < batch_size:
            raise ValueError(f"{n} samples over {k} workers leaves {per_worker} per worker, "
                             f"fewer than one batch of {batch_size}")
        order = torch.randperm(n, generator=torch.Generator().manual_seed(ctx.seed))
        me = ctx.worker_ids()[worker]
        self.indices = order[me * per_worker:(me + 1) * per_worker]
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.worker_id, self.epoch = ctx.seed, me, 0
        self.steps_per_epoch = per_worker // batch_size

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self):
        idx = self.indices
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.worker_id * 1009 + self.epoch)
            idx = idx[torch.randperm(len(idx), generator=g)]
        self.epoch += 1
        for b in range(self.steps_per_epoch):
            batch = [self.dataset[int(i)] for i in idx[b * self.batch_size:(b + 1) * self.batch_size]]
            yield torch.utils.data.default_collate(batch)


def shard(dataset, ctx: Context, batch_size: int = 32, **kw) -> Shard:
    """An optional data helper: iterate over this rank's shard of `dataset` in mini-batches."""
    return Shard(dataset, ctx, batch_size, **kw)


def steps_per_epoch(num_samples: int, workers: int, batch_size: int) -> int:
    """The paper's epoch: the whole training set once, in K parallel batches of b."""
    return max(1, math.ceil(num_samples / (workers * batch_size)))
