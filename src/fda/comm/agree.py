"""Bad input found on any rank becomes the same error on every rank, so that no rank is left
waiting in a collective that another rank will never enter."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from mpi4py import MPI


def first_problem(problem: str | None, comm=None) -> str | None:
    """Collective: each rank passes its own problem (None or "": none); every rank gets the problem
    of the lowest rank that has one, or None. comm: an fda `Comm`, or None for MPI.COMM_WORLD
    (before any fda communicator exists)."""
    problems = comm.allgather_object(problem) if comm is not None else MPI.COMM_WORLD.allgather(problem)
    return next((p for p in problems if p), None)


@contextmanager
def same_error_everywhere(catch: type[Exception] | tuple[type[Exception], ...],
                          raise_as: type[Exception] | None = None, comm=None) -> Iterator[None]:
    """Run the block on every rank; when it raises one of `catch` on any rank, every rank raises
    `raise_as` (default: `catch`, or its first class) with the lowest such rank's message. A
    collective: every rank must enter the block; any other exception passes through unchanged.

        with same_error_everywhere((ConfigError, DatasetError), ConfigError, ctx.fda_comm):
            data = load_dataset(...)
    """
    kind = raise_as or (catch if isinstance(catch, type) else catch[0])
    problem = None
    try:
        yield
    except catch as e:
        problem = str(e)
    agreed = first_problem(problem, comm)
    if agreed is not None:
        raise kind(agreed)
