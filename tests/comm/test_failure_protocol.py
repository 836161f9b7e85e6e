"""Recording a failure is bounded in time and never raises (the job must end regardless)."""
import threading
import time

from fda.comm.failures import record_within


def test_a_failing_callback_is_reported_not_raised(capsys):
    def broken(rank, message):
        raise OSError("log is gone")
    record_within(broken, 1, "boom")
    assert "could not record the failure: log is gone" in capsys.readouterr().err


def test_a_blocked_callback_is_given_up_on(capsys):
    release = threading.Event()
    start = time.monotonic()
    record_within(lambda rank, message: release.wait(), 0, "boom", timeout=0.2)
    took = time.monotonic() - start
    release.set()
    assert took < 5  # bounded: it did not wait for the callback
    assert "could not record the failure within 0.2 s" in capsys.readouterr().err


def test_the_callback_gets_rank_and_message():
    got = []
    record_within(lambda rank, message: got.append((rank, message)), 3, "rank 3: boom")
    assert got == [(3, "rank 3: boom")]


class _Req:
    def __init__(self, comm, source, tag):
        self.comm, self.key = comm, (source, tag)

    def Test(self):
        return self.key in self.comm.arrived


class _FakeErrComm:
    """The watcher's private communicator, in one process: a message 'arrives' when a test says so."""

    def __init__(self):
        self.arrived, self.sent = set(), []

    def Irecv(self, buf, source, tag):
        return _Req(self, source, tag)

    def Send(self, data, dest, tag):
        self.sent.append((bytes(data), dest, tag))


class _Owner:
    def __init__(self, rank, size, comm):
        self.rank, self.size, self.comm, self.events = rank, size, comm, []

    def record_failure(self, source, message):
        self.events.append(("record", source))

    def abort(self, code):
        self.events.append(("abort", sorted(self.comm.arrived)))


def _watcher(rank, size):
    from fda.comm.failures import FailureWatcher
    comm = _FakeErrComm()
    w = FailureWatcher.__new__(FailureWatcher)  # no MPI: the protocol's order is what is tested
    w.owner, w.errcomm = _Owner(rank, size, comm), comm
    return w, comm


def test_rank_0_aborts_only_after_every_other_rank_knows_of_the_failure():
    from fda import preemption
    from fda.comm.failures import ACK_TAG, SEEN_TAG
    w, comm = _watcher(rank=0, size=4)
    threading.Timer(0.2, lambda: comm.arrived.update({(2, SEEN_TAG), (3, SEEN_TAG)})).start()
    try:
        w._handle(1, "rank 1: boom")  # rank 1 failed: it needs no 'seen', ranks 2 and 3 do
    finally:
        preemption.uninstall()
    assert w.owner.events == [("record", 1), ("abort", [(2, SEEN_TAG), (3, SEEN_TAG)])]
    assert (b"ok", 1, ACK_TAG) in comm.sent


def test_rank_0_does_not_wait_forever_for_a_rank_that_never_answers():
    from fda.comm.failures import SEEN_TAG
    w, comm = _watcher(rank=0, size=3)
    comm.arrived.add((1, SEEN_TAG))
    start = time.monotonic()
    w._wait_until_seen(exclude={0}, timeout=0.2)  # rank 2 is frozen
    assert time.monotonic() - start < 5


def test_another_rank_abandons_the_run_and_tells_rank_0_it_knows():
    from fda import preemption
    from fda.comm.failures import SEEN_TAG
    w, comm = _watcher(rank=2, size=4)
    try:
        w._handle(1, "rank 1: boom")
        assert preemption._state.abandoned == "rank 1 failed: rank 1: boom"
    finally:
        preemption.uninstall()
    assert comm.sent == [(b"seen", 0, SEEN_TAG)]
    assert w.owner.events == []  # only rank 0 records and aborts
