"""Launch mistakes caught at start: the MPI world compared with what the launcher asked for.

Two mistakes make every process rank 0 of a 1-rank world, and each then trains (or checks) on its
own without an error from MPI:

- `srun` without the PMI plugin of the MPI that mpi4py is built against (SLURM's default is often
  `MpiDefault=none`): N separate 1-rank jobs;
- a launcher of one MPI starting processes built against another (MPICH's `mpiexec` and an
  mpi4py built against Open MPI, or the reverse).

Pure functions of the world size and the environment (no MPI here): `fda train` and
`fda preflight` call `launch_problem` first and stop with exit 2 when it names one.

`summation_order` checks what the relayout guarantee relies on: a rank that hosts several workers
adds them in the balanced pairwise tree of `fda.flat.pairwise_sum_`, the order in which MPICH's
Allreduce adds ranks; a run resumed on another layout is bit-identical only if the MPI in use adds
in that order too (Open MPI's ring algorithm, for one, does not). It runs one small sum Allreduce
through fda.comm (any object with `allreduce_(tensor)`, `rank` and `size`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping

# what MPI launchers tell each process about the job they started: (variable, launcher)
LAUNCHER_SIZE_VARS = (
    ("PMI_SIZE", "the PMI launcher (MPICH's mpiexec, or srun --mpi=pmi2)"),
    ("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun"),
    ("MV2_COMM_WORLD_SIZE", "MVAPICH's launcher"),
    ("PALS_SIZE", "Cray PALS"),
)
WHICH_MPI = "python -c 'from mpi4py import MPI; print(MPI.Get_library_version())'"


# float32 elements per probe: MPIs pick their Allreduce algorithm by message size (4 KiB .. 4 MiB)
PROBE_ELEMENTS = (1 << 10, 1 << 16, 1 << 20)
PROBE_MEMORY_LIMIT = 256 << 20  # bytes of probe vectors per rank (every rank builds every rank's)


def probe_vectors(size: int, n: int, seed: int = 0):
    """One float32 vector per rank whose sum depends on the order of the additions (magnitudes
    spread over 8 decades), the same on every rank."""
    import torch

    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g) * 10.0 ** (8 * torch.rand(n, generator=g) - 4) for _ in range(size)]


def _bytes(n: int) -> str:
    kib = n * 4 // 1024
    return f"{kib // 1024} MiB" if kib >= 1024 else f"{kib} KiB"


def _probe(world, n: int) -> tuple[bool, bool, int]:
    """(pairwise, sequential, elements that differ from pairwise) for one message size."""
    import torch

    from fda.flat import pairwise_sum_

    vectors = probe_vectors(world.size, n)
    got = world.allreduce_(vectors[world.rank].clone(), op="sum", kind="setup")
    differ = int((got != pairwise_sum_([v.clone() for v in vectors])).sum())
    sequential = vectors[0]
    for v in vectors[1:]:
        sequential += v
    return differ == 0, bool(torch.equal(got, sequential)), differ


def summation_order(world) -> tuple[bool, str]:
    """(holds, detail): does this MPI's sum Allreduce add ranks in fda's pairwise order, bitwise, at
    every probed message size? Collective: every rank calls it and gets the same answer."""
    import torch

    if world.size <= 2:  # a + b == b + a in IEEE arithmetic: nothing to probe
        return True, f"{world.size} rank(s): any order gives the same bits"
    sizes = [n for n in PROBE_ELEMENTS if world.size * n * 4 <= PROBE_MEMORY_LIMIT] or [PROBE_ELEMENTS[0]]
    results = {n: _probe(world, n) for n in sizes}
    local = torch.tensor([float(all(pairwise for pairwise, _, _ in results.values()))])
    holds = bool(world.allreduce_(local, op="min", kind="setup").item() == 1.0)
    kib = ", ".join(_bytes(n) for n in sizes)
    if holds:
        return True, f"the sum Allreduce on {world.size} ranks adds in fda's pairwise order ({kib}: bit-identical)"
    bad = [(n, seq, differ) for n, (pairwise, seq, differ) in results.items() if not pairwise]
    which = "; ".join(f"{_bytes(n)}: {differ} of {n} sums differ" + (" (it adds rank after rank)" if seq else "")
                      for n, seq, differ in bad) or "on another rank"
    return False, (f"the sum Allreduce on {world.size} ranks does not add in fda's pairwise order ({which}); "
                   "a run resumed on another layout (ranks x workers_per_rank) is close to, not bit-identical "
                   "with, the original")


def _count(env: Mapping[str, str], name: str) -> int | None:
    try:
        value = int(env.get(name, ""))
    except ValueError:
        return None
    return value if value > 0 else None


def launcher_size(env: Mapping[str, str]) -> tuple[int, str, str] | None:
    """(ranks, variable, launcher) from the first MPI launcher variable set, else None."""
    for name, who in LAUNCHER_SIZE_VARS:
        n = _count(env, name)
        if n is not None:
            return n, name, who
    return None


def launch_problem(world_size: int, env: Mapping[str, str] | None = None) -> str | None:
    """What is wrong with how this process was launched, with the fix; None when nothing is."""
    env = os.environ if env is None else env
    found = launcher_size(env)
    if found is not None:
        n, name, who = found
        if n == world_size:
            return None
        return (f"{who} started {n} ranks ({name}={n}), but MPI sees a world of {world_size}: mpi4py is built "
                f"against a different MPI than the launcher. Launch with the mpiexec/mpirun of the MPI that "
                f"mpi4py uses ({WHICH_MPI} names it), or rebuild mpi4py against this MPI "
                f"(make setup MPI=system)")
    tasks = _count(env, "SLURM_STEP_NUM_TASKS")
    if tasks is not None and tasks > 1 and world_size == 1:
        plugin = env.get("SLURM_MPI_TYPE") or ("pmix" if "PMIX_RANK" in env else "none")
        return (f"srun started {tasks} separate 1-rank jobs (PMI plugin: {plugin}): pass --mpi=pmi2 "
                f"(the mpich wheel) or your MPI's plugin (srun --mpi=list shows them; pmix for Open MPI "
                f"and other PMIx-built MPIs)")
    return None
