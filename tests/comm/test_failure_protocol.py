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
