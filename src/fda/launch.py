"""Launch mistakes caught at start: the MPI world compared with what the launcher asked for.

Two mistakes make every process rank 0 of a 1-rank world, and each then trains (or checks) on its
own without an error from MPI:

- `srun` without the PMI plugin of the MPI that mpi4py is built against (SLURM's default is often
  `MpiDefault=none`): N separate 1-rank jobs;
- a launcher of one MPI starting processes built against another (MPICH's `mpiexec` and an
  mpi4py built against Open MPI, or the reverse).

Pure functions of the world size and the environment (no MPI here): `fda train` and
`fda preflight` call `launch_problem` first and stop with exit 2 when it names one.
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
