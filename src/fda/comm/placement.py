"""Where a rank runs: its place in the world and on its node, its device and its CPU cores."""
from __future__ import annotations

import os

import torch
from mpi4py import MPI


def world_rank() -> int:
    """This process's rank in MPI.COMM_WORLD (usable before any fda communicator exists)."""
    return MPI.COMM_WORLD.Get_rank()


def world_size() -> int:
    """The number of ranks in MPI.COMM_WORLD."""
    return MPI.COMM_WORLD.Get_size()


def node_local(comm: MPI.Comm, rank: int) -> tuple[int, int]:
    """(rank among the ranks on this node, ranks on this node) of `comm` (collective)."""
    local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    try:
        return local.Get_rank(), local.Get_size()
    finally:
        local.Free()


def cpu_threads_for_rank(local_size: int) -> int:
    """Cores given to this rank: the launcher's CPU binding if it set one, else a fair share."""
    try:
        mine = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        mine = os.cpu_count() or 1
    total = os.cpu_count() or mine
    if mine < total:  # srun --cpus-per-task / mpirun --bind-to bound us: use what we were given
        return max(1, mine)
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdigit() and int(slurm) > 0:  # SLURM without CPU binding (task/none): its count still holds
        return min(int(slurm), total)
    return max(1, total // max(1, local_size))


def device_for_local_rank(local_rank: int, requested: str, host: str) -> torch.device:
    """Node-local rank -> CUDA device (round robin), or the CPU; requested: 'auto' | 'cpu' | 'cuda'."""
    if requested == "cpu" or (requested == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device=cuda, but torch sees no CUDA device on " + host)
    index = local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
