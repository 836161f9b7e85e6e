"""Rank placement: CPU threads per rank, devices, and what the MPI library reports."""
import pytest
import torch

from fda.comm import (cpu_threads_for_rank, library_version, mpi_cuda_support, resolve_gpu_aware, thread_level,
                      world_rank, world_size)
from fda.comm.placement import device_for_local_rank


@pytest.fixture
def eight_cores(monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)


def test_a_fair_share_without_binding(eight_cores, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    assert cpu_threads_for_rank(3) == 2 and cpu_threads_for_rank(16) == 1


def test_the_launchers_binding_wins(eight_cores, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2})
    assert cpu_threads_for_rank(1) == 3


def test_slurm_cpus_per_task_without_binding(eight_cores, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "5")
    assert cpu_threads_for_rank(4) == 5


def test_devices(monkeypatch):
    assert device_for_local_rank(3, "cpu", "node1") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_for_local_rank(0, "auto", "node1") == torch.device("cpu")
    with pytest.raises(ValueError, match="device=cuda, but torch sees no CUDA device on node1"):
        device_for_local_rank(0, "cuda", "node1")


@pytest.mark.parametrize("forced, expected", [("1", True), ("yes", True), ("0", False), ("no", False)])
def test_cuda_support_can_be_forced(monkeypatch, forced, expected):
    monkeypatch.setenv("FDA_MPI_CUDA_AWARE", forced)
    assert mpi_cuda_support() is expected


def test_gpu_aware_modes(monkeypatch):
    monkeypatch.setenv("FDA_MPI_CUDA_AWARE", "0")
    assert resolve_gpu_aware("auto") is False and resolve_gpu_aware("false") is False
    with pytest.raises(ValueError, match="gpu_aware_mpi=true, but this MPI library does not report CUDA"):
        resolve_gpu_aware("true")
    monkeypatch.setenv("FDA_MPI_CUDA_AWARE", "1")
    assert resolve_gpu_aware("auto") is True and resolve_gpu_aware("false") is False


def test_the_library_describes_itself():
    assert "MPI" in library_version().upper() and "\n" not in library_version()
    assert thread_level() in ("SINGLE", "FUNNELED", "SERIALIZED", "MULTIPLE")
    assert 0 <= world_rank() < world_size()
