"""The stop agreement: a signal on any rank stops every rank after the same step, with no collective
on the main thread.

Run by the failure watcher thread of every rank (see `failures.FailureWatcher`), next to the stall
protocol. The main thread asks `Stops.after(step)` at the end of every step; its answer is the same
on every rank for every step:

1. the watcher of a rank that got SIGTERM/SIGUSR1 (`preemption.requested()`) sends a request to
   rank 0 (rank 0 itself starts the round); one round per run, repeated requests change nothing.
   A run is an epoch: every rank starts a new one at the same point (`Stops.new_run`, when a
   Synchronizer is made), and every message carries its epoch, so what is left of an earlier run's
   round is dropped, and a message of an epoch this rank has not reached yet waits for it;
2. rank 0 sends HOLD to every rank; each watcher, under the lock the main thread's `after` takes,
   sets `held` and replies s_k = the next step whose end its main thread has not yet asked about;
3. a held main thread that asks about step s_k waits (no spin) until the decision arrives, so it
   cannot begin step s_k + 1 before it;
4. rank 0 collects every reply (watchers answer also while their main thread is blocked inside a
   collective: that rank's s_k is at least the collective's step, so the held ranks are released to
   reach it), sends S = max s_k to every rank, and every rank stops after step S.

Cost: a few watcher polls (about 0.1 s) once, plus the steps the slowest rank is behind the fastest.
S may lie past the last step of the run (a rank had finished it): then the run simply completes.
A rank that does not reply within REPLY_TIMEOUT_S (frozen) cannot be decided without: it may be at
any step. Rank 0 then fails the job through the failure protocol, saying so. A job that is failing
(`preemption.abandon`) starts no round; its failure path aborts every rank, held or not.
"""
from __future__ import annotations

import threading
import time

from mpi4py import MPI

from fda import preemption

REQUEST_TAG, HOLD_TAG, REPLY_TAG, DECIDE_TAG = 84, 85, 86, 87  # 77-83: failures.py and stalls.py
LAST_TAG, BYE_TAG = 88, 89  # the closing handshake
REPLY_TIMEOUT_S = 60.0  # how long rank 0 waits for every rank's s_k before failing the job
CLOSE_TIMEOUT_S = 10.0  # how long a closing watcher waits for the others' last word, or rank 0's goodbye


class Stops:
    """One rank's view of the agreement, shared by its main thread and its watcher thread.

    checked: the last step whose end the main thread asked about (0: none); held: a round is on and
    this rank has replied; stop_after: the decision S (None: none yet); epoch: the run's number."""

    def __init__(self):
        self._lock = threading.Lock()
        self._decided = threading.Event()
        self.epoch = 0
        self.checked = 0
        self.held = False
        self.stop_after: int | None = None
        self.given_up = False  # the watcher stopped: nothing will be decided any more

    def new_run(self) -> None:
        """Main thread, on every rank at the same point before a run's first step: forget the last
        run's round (its decision, a hold)."""
        with self._lock:
            self.epoch += 1
            self.checked, self.held, self.stop_after = 0, False, None
            self._decided.clear()

    def after(self, step: int) -> bool:
        """Main thread, at the end of `step`: stop now? Waits while a round is undecided."""
        while True:
            with self._lock:
                if self.stop_after is not None:
                    # S >= every s_k >= 1: a rank reaches S, asking about each step once, and stops there
                    return step >= self.stop_after
                if not self.held or self.given_up:
                    self.checked = step
                    return False
            self._decided.wait()

    def hold(self, epoch: int) -> int | None:
        """Watcher, on HOLD of run `epoch`: hold the main thread; the step this rank will stop after
        at the earliest (None: that run is over here, nothing is held)."""
        with self._lock:
            if epoch != self.epoch:
                return None
            self.held = True
            return self.checked + 1

    def decide(self, stop_after: int, epoch: int) -> None:
        with self._lock:
            if epoch != self.epoch:
                return
            self.stop_after = stop_after
        self._decided.set()

    def give_up(self) -> None:
        """The watcher ends (close, or the job is failing): never leave the main thread waiting."""
        with self._lock:
            self.given_up = True
        self._decided.set()


class StopWatch:
    """One rank's side of the agreement (the module docstring), polled by its watcher thread.

    owner: the rank's `Comm` (rank, size, stops, fail); errcomm: the watcher's private communicator."""

    def __init__(self, owner, errcomm):
        self.owner, self.errcomm = owner, errcomm
        self.stops: Stops = owner.stops
        self._epoch = self.stops.epoch
        self._new_round()
        self._early: list[tuple[int, int, object]] = []  # (tag, epoch, body) of runs not reached yet
        self._sends: list = []
        self._last: dict[int, int] = {}  # rank 0: the ranks that have closed, and the step past their last

    def _new_round(self) -> None:
        self._asked = False  # this rank requested (or, rank 0, started) the round
        self._round_started = False
        self._replies: dict[int, int] = {}
        self._deadline = 0.0

    def poll(self) -> None:
        if self.stops.epoch != self._epoch:  # the main thread has started a new run
            self._epoch = self.stops.epoch
            self._new_round()
        rank = self.owner.rank
        if rank == 0:
            self._read_last_words()  # before a round starts: a rank that has closed is not asked
        if not self._asked and preemption.requested() and not preemption.abandoned():
            self._asked = True
            if rank == 0:
                self._start_round()
            else:
                self._send(None, 0, REQUEST_TAG)
        if rank == 0:
            self._poll_coordinator()
        for _ in self._take(HOLD_TAG, source=0):
            at_earliest = self.stops.hold(self._epoch)
            if at_earliest is not None:
                self._send((rank, at_earliest), 0, REPLY_TAG)
        for decision in self._take(DECIDE_TAG, source=0):
            self.stops.decide(decision, self._epoch)

    def _send(self, body, dest: int, tag: int) -> None:
        """Every message of the agreement is (epoch, body)."""
        self._sends = [r for r in self._sends if not r.Test()]
        self._sends.append(self.errcomm.isend((self._epoch, body), dest=dest, tag=tag))

    def _take(self, tag: int, source: int = MPI.ANY_SOURCE) -> list:
        """The bodies of this run's messages with `tag` received so far (an earlier run's are dropped,
        a later run's kept for when this rank gets there)."""
        status = MPI.Status()
        while self.errcomm.iprobe(source=source, tag=tag, status=status):
            epoch, body = self.errcomm.recv(source=status.Get_source(), tag=tag)
            self._early.append((tag, epoch, body))
        now = [body for t, epoch, body in self._early if t == tag and epoch == self._epoch]
        self._early = [m for m in self._early if m[0] != tag or m[1] > self._epoch]
        return now

    def _start_round(self) -> None:
        """Rank 0: hold every rank (itself directly)."""
        if self._round_started:
            return
        self._round_started = True
        self._replies = {0: self.stops.hold(self._epoch), **self._last}
        self._deadline = time.monotonic() + REPLY_TIMEOUT_S
        for r in range(1, self.owner.size):
            if r not in self._last:
                self._send(None, r, HOLD_TAG)

    def _read_last_words(self) -> None:
        status = MPI.Status()
        while self.errcomm.iprobe(source=MPI.ANY_SOURCE, tag=LAST_TAG, status=status):
            _, (r, s) = self.errcomm.recv(source=status.Get_source(), tag=LAST_TAG)  # whatever the epoch
            self._last[r] = s
            if self._round_started:
                self._replies.setdefault(r, s)

    def _poll_coordinator(self) -> None:
        self._read_last_words()
        if self._take(REQUEST_TAG) and not preemption.abandoned():
            self._start_round()
        if not self._round_started or self.stops.stop_after is not None or self._deadline == 0.0:
            return
        self._replies.update(self._take(REPLY_TAG))
        if len(self._replies) == self.owner.size:
            self._deadline = 0.0
            decision = max(self._replies.values())
            for r in range(1, self.owner.size):
                self._send(decision, r, DECIDE_TAG)
            self.stops.decide(decision, self._epoch)
        elif time.monotonic() > self._deadline:
            self._deadline = 0.0
            missing = ", ".join(str(r) for r in range(self.owner.size) if r not in self._replies)
            self.owner.fail(f"stop agreement: rank(s) {missing} did not answer within "
                            f"{REPLY_TIMEOUT_S:g} s (frozen?); the ranks cannot agree on a step to stop "
                            f"after, so the job is aborted without a checkpoint")

    def close(self) -> None:
        """The watcher thread has stopped (the run is over on this rank). A closing handshake leaves no
        message unread on the communicator (an MPI may trip over one when it is freed): every other
        rank sends rank 0 its last word, the step past its last one (so a round in progress, or a later
        one, need not wait for it), and waits for rank 0's goodbye, reading what rank 0 still sends;
        rank 0 finishes a round in progress, then says goodbye once it has every last word."""
        if self.owner.rank == 0:
            self._close_coordinator()
        else:
            self._close_member()
        deadline = time.monotonic() + 1.0
        while self._sends and time.monotonic() < deadline:
            self._sends = [r for r in self._sends if not r.Test()]
            time.sleep(0.005)

    def _close_coordinator(self) -> None:
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while time.monotonic() < deadline:
            self._poll_coordinator()
            round_open = self._round_started and self.stops.stop_after is None and self._deadline
            if len(self._last) == self.owner.size - 1 and not round_open:
                break
            time.sleep(0.005)
        for r in self._last:
            self._send(None, r, BYE_TAG)

    def _close_member(self) -> None:
        self._send((self.owner.rank, self.stops.checked + 1), 0, LAST_TAG)
        deadline = time.monotonic() + CLOSE_TIMEOUT_S
        while time.monotonic() < deadline:
            self._read_from_coordinator()
            if self.errcomm.iprobe(source=0, tag=BYE_TAG):
                self.errcomm.recv(source=0, tag=BYE_TAG)
                self._read_from_coordinator()
                return
            time.sleep(0.005)

    def _read_from_coordinator(self) -> None:
        """A closed rank: what rank 0 sent before it knew (a hold needs no answer: the last word is one)."""
        self._take(HOLD_TAG, source=0)
        for decision in self._take(DECIDE_TAG, source=0):
            self.stops.decide(decision, self._epoch)
