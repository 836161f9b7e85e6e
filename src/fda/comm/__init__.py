"""MPI in one room: the only package of fda that imports mpi4py.

- `communicator`: `Comm`, collectives through one helper (stall marks, staging, byte counts);
- `failures`: an exception on any rank ends every rank promptly, after rank 0 marked the log;
- `stalls`: with `stall_timeout`, a rank that does not reach a collective in time is named on
  every rank and the job ends the same way;
- `agree`: bad input on any rank becomes the same error on every rank;
- `placement`: world and node-local ranks, rank -> device, CPU threads per rank;
- `library`: the MPI library's version, thread level and CUDA support.
"""
from fda.comm.agree import first_problem, same_error_everywhere
from fda.comm.communicator import ByteCounter, Comm
from fda.comm.failures import RECORD_TIMEOUT_S
from fda.comm.library import (library_version, mpi_cuda_support, resolve_gpu_aware, thread_level,
                              threads_may_call_mpi)
from fda.comm.placement import cpu_threads_for_rank, world_rank, world_size
from fda.comm.stalls import QUERY_TIMEOUT_S, Position

__all__ = ["Comm", "ByteCounter", "Position", "same_error_everywhere", "first_problem", "cpu_threads_for_rank",
           "world_rank", "world_size", "mpi_cuda_support", "resolve_gpu_aware", "library_version", "thread_level",
           "threads_may_call_mpi", "QUERY_TIMEOUT_S", "RECORD_TIMEOUT_S"]
