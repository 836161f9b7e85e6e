"""fda.launch: the launch mistakes that make every process a 1-rank world, named with their fix."""
import subprocess
import sys

import pytest

from conftest import REPO, child_env
from fda.launch import launch_problem, launcher_size, probe_vectors, summation_order

SRUN_STEP = {"SLURM_JOB_ID": "7", "SLURM_STEP_ID": "0", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2"}


@pytest.mark.parametrize("world, env", [
    (1, {}),                                                   # python -m fda, no launcher
    (2, {"PMI_SIZE": "2", "PMI_RANK": "1"}),                   # Hydra
    (2, {**SRUN_STEP, "PMI_SIZE": "2"}),                       # srun --mpi=pmi2
    (4, {"OMPI_COMM_WORLD_SIZE": "4"}),                        # Open MPI's mpirun
    (2, {**SRUN_STEP, "PMIX_RANK": "0"}),                      # srun --mpi=pmix, a PMIx-built MPI
    (4, {"SLURM_NTASKS": "8", "PMI_SIZE": "4"}),               # mpiexec -n 4 inside an 8-task allocation
    (1, {"SLURM_NTASKS": "4", "SLURM_NPROCS": "4"}),           # the batch shell itself, no step
    (1, {**SRUN_STEP, "SLURM_STEP_NUM_TASKS": "1"}),           # srun -n 1
    (3, {"PMI_SIZE": "garbage", "SLURM_STEP_NUM_TASKS": "3"}),
])
def test_a_right_launch_is_not_a_problem(world, env):
    assert launch_problem(world, env) is None


def test_srun_without_the_pmi_plugin():
    message = launch_problem(1, SRUN_STEP)
    assert message.startswith("srun started 2 separate 1-rank jobs (PMI plugin: none)")
    assert "--mpi=pmi2 (the mpich wheel)" in message


def test_srun_with_pmix_and_an_mpi_without_it():
    message = launch_problem(1, {**SRUN_STEP, "PMIX_RANK": "1", "SLURM_MPI_TYPE": "pmix"})
    assert "srun started 2 separate 1-rank jobs (PMI plugin: pmix)" in message


@pytest.mark.parametrize("var, who", [("PMI_SIZE", "MPICH's mpiexec"), ("OMPI_COMM_WORLD_SIZE", "Open MPI's mpirun")])
def test_a_launcher_of_another_mpi(var, who):
    message = launch_problem(1, {var: "4"})
    assert f"started 4 ranks ({var}=4), but MPI sees a world of 1" in message and who in message
    assert "mpi4py is built against a different MPI than the launcher" in message
    assert "make setup MPI=system" in message


def test_the_first_launcher_variable_counts():
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "3", "PMI_SIZE": "2"})[:2] == (2, "PMI_SIZE")
    assert launcher_size({"PMI_SIZE": "0"}) is None


@pytest.mark.parametrize("command", ["train", "preflight"])
def test_the_cli_stops_with_exit_2_before_any_work(tmp_path, command):
    """As srun without --mpi starts it: one of two processes, each a 1-rank world."""
    env = child_env({**SRUN_STEP, "SLURM_PROCID": "1"})
    p = subprocess.run([sys.executable, "-m", "fda", command, "dataset=synthetic", "model=mlp", "threads=1",
                        "max_steps=5", "--out", str(tmp_path / "run")], capture_output=True, text=True,
                       timeout=180, cwd=REPO, env=env)
    assert p.returncode == 2, p.stdout + p.stderr
    assert "fda: error: srun started 2 separate 1-rank jobs" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "run").exists()


class FakeWorld:
    """rank 0 of `size` ranks whose sum Allreduce adds the probe vectors in a given order."""

    def __init__(self, size: int, order: str):
        self.rank, self.size, self.order = 0, size, order

    def allreduce_(self, t, op="sum", kind="train"):
        if op == "min":
            return t
        vectors = probe_vectors(self.size, t.numel())
        if self.order == "pairwise":
            from fda.flat import pairwise_sum_
            return t.copy_(pairwise_sum_([v.clone() for v in vectors]))
        total = vectors[0].clone()
        for v in vectors[1:]:
            total = total + v
        return t.copy_(total)


def test_the_probe_tells_a_pairwise_allreduce_from_a_sequential_one():
    holds, detail = summation_order(FakeWorld(4, "pairwise"))
    assert holds and "adds in fda's pairwise order" in detail
    holds, detail = summation_order(FakeWorld(4, "sequential"))
    assert not holds and "does not add in fda's pairwise order (4 KiB: " in detail
    assert "(it adds rank after rank)" in detail
    assert "close to, not bit-identical" in detail
    holds, detail = summation_order(FakeWorld(2, "sequential"))
    assert holds and "any order gives the same bits" in detail


def test_the_probe_vectors_make_the_order_matter():
    from fda.flat import pairwise_sum_
    vectors = probe_vectors(4, 1024)
    sequential = ((vectors[0] + vectors[1]) + vectors[2]) + vectors[3]
    assert not (pairwise_sum_([v.clone() for v in vectors]) == sequential).all()


@pytest.mark.mpi
def test_the_probe_on_this_mpi_agrees_on_every_rank(mpi_ctx):
    from mpi4py import MPI
    holds, detail = summation_order(mpi_ctx.fda_comm)
    answers = MPI.COMM_WORLD.allgather((holds, detail))
    assert all(a == answers[0] for a in answers), answers
    if "MPICH" in MPI.Get_library_version():
        assert holds, detail  # recursive doubling / halving: the pairwise tree
