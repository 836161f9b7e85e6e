"""`same_error_everywhere` and `first_problem` on one rank and, under mpiexec, on every rank."""
import pytest
from mpi4py import MPI

from fda.comm import Comm, first_problem, same_error_everywhere


class Bad(ValueError):
    pass


@pytest.fixture
def solo():
    return Comm(MPI.COMM_SELF, gpu_aware="false")


def test_first_problem_of_one_rank(solo):
    assert first_problem(None, solo) is None
    assert first_problem("", solo) is None  # an empty message is no problem
    assert first_problem("disk full", solo) == "disk full"


def test_an_error_in_the_block_is_raised_as_the_agreed_type(solo):
    with pytest.raises(KeyError) as e:
        with same_error_everywhere((Bad, OSError), KeyError, solo):
            raise Bad("no such dataset")
    assert e.value.args == ("no such dataset",)


def test_default_type_is_the_caught_one(solo):
    with pytest.raises(Bad, match="twice"):
        with same_error_everywhere(Bad, comm=solo):
            raise Bad("twice")
    with pytest.raises(Bad, match="first of the tuple"):
        with same_error_everywhere((Bad, OSError), comm=solo):
            raise OSError("first of the tuple")


def test_other_errors_pass_through_and_a_clean_block_raises_nothing(solo):
    with pytest.raises(ZeroDivisionError):
        with same_error_everywhere(Bad, comm=solo):
            1 / 0
    with same_error_everywhere(Bad, comm=solo):
        value = 5
    assert value == 5 and solo.position.seq == 1  # the agreement is one collective


@pytest.mark.mpi(min_size=2)
def test_the_lowest_failing_rank_speaks_for_all():
    world = Comm(MPI.COMM_WORLD, gpu_aware="false")
    last = world.size - 1
    failed = None
    try:
        with same_error_everywhere(Bad, comm=world):
            if world.rank >= 1:
                raise Bad(f"rank {world.rank} cannot read the file")
    except Bad as e:
        failed = str(e)
    assert world.allgather_object(failed) == ["rank 1 cannot read the file"] * world.size
    # before any fda communicator: MPI.COMM_WORLD itself
    assert first_problem("late" if world.rank == last else None) == "late"
