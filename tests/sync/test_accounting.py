"""fda.sync.accounting: the paper's bytes, this run's MPI bytes, and the time per phase."""
from fda.comm import ByteCounter
from fda.sync.accounting import FLOAT_BYTES, Accounting, Stopwatch, synchronous_bytes


def test_the_paper_counts_float32_values():
    acc = Accounting(ByteCounter())
    acc.count_check(workers=4, state_floats=3)
    assert acc.comm_bytes == acc.comm_bytes_float32 == 4 * FLOAT_BYTES * 3
    acc.count_sync(workers=4, wire_bytes=10, num_params=20)  # a compressed sync: 10 bytes for 20 values
    assert acc.comm_bytes == 48 + 2 * 4 * 10
    assert acc.comm_bytes_float32 == 48 + 2 * 4 * FLOAT_BYTES * 20
    assert synchronous_bytes(3, 4, 20) == 3 * 2 * 4 * FLOAT_BYTES * 20


def test_mpi_bytes_are_this_runs_share_of_the_counters():
    counters = ByteCounter()
    counters.add("sync", 100)  # an earlier run on the same communicator
    acc = Accounting(counters)
    counters.add("sync", 30)
    counters.add("eval", 5)
    assert acc.mpi_bytes("sync") == 30 and acc.mpi_bytes("eval") == 5 and acc.mpi_bytes("state") == 0


def test_state_dict_restores_the_counts_on_fresh_counters():
    counters = ByteCounter()
    acc = Accounting(counters)
    counters.add("state", 64)
    acc.count_check(2, 1)
    acc.add_times(compute=1.5, comm=0.5)
    acc.add_times(compute=1.0)
    state = acc.state_dict()
    resumed_counters = ByteCounter()
    resumed_counters.add("setup", 7)  # the resumed job's own broadcast
    resumed = Accounting(resumed_counters)
    resumed.load_state_dict(state)
    resumed_counters.add("state", 16)
    assert resumed.mpi_bytes("state") == 80 and resumed.comm_bytes == acc.comm_bytes
    assert resumed.totals["compute"] == 2.5 and resumed.totals["comm"] == 0.5


def test_stopwatch_laps_do_not_overlap():
    clock = Stopwatch()
    laps = [clock.lap() for _ in range(3)]
    assert all(s >= 0 for s in laps) and sum(laps) <= clock.elapsed()
