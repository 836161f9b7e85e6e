"""The failure protocol: an exception on any rank ends every rank promptly, never a hang.

The failing rank prints its error once and tells every other rank over a private communicator;
rank 0 runs the failure callback (the Synchronizer's: mark the log failed), acknowledges, and
aborts the job. A rank that fails itself waits (bounded) for rank 0's acknowledgement first, so
the log says why the job ended. Rank 0 aborts only once every other rank has said it knows of
the failure (bounded): the SIGTERM Open MPI sends the survivors after MPI_Abort must find them
abandoned, not promising a checkpoint. `FailureWatcher` is the thread that listens on every rank; it
also runs the stall protocol (`stalls.StallWatch`) and the stop agreement (`stops.StopWatch`).
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable

from mpi4py import MPI

from fda import preemption
from fda.comm.stalls import StallWatch
from fda.comm.stops import StopWatch

ERR_TAG = 77
ACK_TAG = 78
SEEN_TAG = 83  # stalls.py uses 79-82 on the same communicator, stops.py 84-89
RECORD_TIMEOUT_S = 10.0  # how long rank 0 may take to mark the log failed before the job is aborted
SEEN_TIMEOUT_S = 2.0  # how long rank 0 waits for the other ranks to know of the failure before aborting


def record_within(callback: Callable[[int, str], None], source: int, message: str,
                  timeout: float = RECORD_TIMEOUT_S) -> None:
    """Run callback(source, message) on a helper thread, waiting at most `timeout` (the main thread
    may hold the log, e.g. in a flush on a hung file system); never raises: the job ends regardless."""
    def record():
        try:
            callback(source, message)
        except Exception as e:  # the log is best effort here
            print(f"fda: rank 0 could not record the failure: {e}", file=sys.stderr, flush=True)
    writer = threading.Thread(target=record, daemon=True, name="fda-record-failure")
    writer.start()
    writer.join(timeout=timeout)
    if writer.is_alive():
        print(f"fda: rank 0 could not record the failure within {timeout:g} s (the log is busy)",
              file=sys.stderr, flush=True)


class FailureWatcher(threading.Thread):
    """A daemon thread that polls a private communicator for 'rank r failed: msg'.

    owner: the rank's `Comm` (its communicator, rank, size, record_failure, abort). Polling with
    sleeps (not a blocking receive) keeps it from spinning a core that the training process needs.
    """

    def __init__(self, owner):
        super().__init__(daemon=True, name="fda-failure-watcher")
        self.owner = owner
        self.errcomm = owner.comm.Dup()
        self._halt = threading.Event()
        self._buf = bytearray(1 << 16)
        self._req = self.errcomm.Irecv(self._buf, source=MPI.ANY_SOURCE, tag=ERR_TAG)
        self.stalls = StallWatch(owner, self.errcomm)
        self.stops = StopWatch(owner, self.errcomm)

    def run(self) -> None:
        try:
            self._listen()
        finally:
            self.owner.stops.give_up()  # no decision can arrive any more: never leave the main thread held

    def _listen(self) -> None:
        status = MPI.Status()
        while not self._halt.is_set():
            if self._req.Test(status):
                n = status.Get_count(MPI.BYTE)
                message = bytes(self._buf[:n]).decode("utf-8", "replace")
                self._handle(status.Get_source(), message)
                return
            self.stalls.poll()
            self.stops.poll()
            time.sleep(0.02)

    def _handle(self, source: int, message: str) -> None:
        preemption.abandon(f"rank {source} failed: {message}")  # a signal now must not promise a checkpoint
        owner = self.owner
        if owner.rank != 0:
            self.errcomm.Send(b"seen", dest=0, tag=SEEN_TAG)
            return
        owner.record_failure(source, message)
        self.errcomm.Send(b"ok", dest=source, tag=ACK_TAG)
        self._wait_until_seen(exclude={0, source})
        owner.abort(1)

    def _wait_until_seen(self, exclude: set[int], timeout: float = SEEN_TIMEOUT_S) -> None:
        """Rank 0: wait (bounded) until every rank not in `exclude` has acknowledged the failure."""
        peers = [r for r in range(self.owner.size) if r not in exclude]
        bufs = [bytearray(8) for _ in peers]
        reqs = [self.errcomm.Irecv(b, source=r, tag=SEEN_TAG) for b, r in zip(bufs, peers)]
        deadline = time.monotonic() + timeout
        while reqs and time.monotonic() < deadline:
            reqs = [q for q in reqs if not q.Test()]
            time.sleep(0.005)

    def announce(self, message: str, grace_s: float) -> None:
        """Tell every other rank; wait (bounded) for rank 0 to record it."""
        self._halt.set()
        data = message.encode("utf-8")[: len(self._buf)]
        reqs = [self.errcomm.Isend(data, dest=r, tag=ERR_TAG)
                for r in range(self.owner.size) if r != self.owner.rank]
        if self.owner.rank == 0:
            self._wait_until_seen(exclude={0})
        else:
            ack = bytearray(8)
            ack_req = self.errcomm.Irecv(ack, source=0, tag=ACK_TAG)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and not ack_req.Test():
                time.sleep(0.01)
        del reqs

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=1.0)
        if not self.is_alive():
            self.stops.close()
        if not self._req.Test():
            self._req.Cancel()
            self._req.Wait()
        self.errcomm.Free()
