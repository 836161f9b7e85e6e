"""The stop agreement's order in one process: fake ranks (threads) and a fake private communicator.

Each fake rank has a main thread that steps at its own seeded pace with no collective between steps,
and a watcher thread that polls its `StopWatch`; one rank is signalled at a seeded step."""
import os
import random
import threading
import time
from collections import deque

import pytest

from fda import preemption
from fda.comm import stops as stops_mod
from fda.comm.stops import StopWatch, Stops


class _Done:
    def Test(self):
        return True


class _Net:
    """Messages between fake ranks: (dest, source, tag) -> queue of objects."""

    def __init__(self):
        self.lock, self.queues = threading.Lock(), {}

    def put(self, dest, source, tag, obj):
        with self.lock:
            self.queues.setdefault((dest, source, tag), deque()).append(obj)


class _ErrComm:
    def __init__(self, net, rank):
        self.net, self.rank = net, rank

    def _find(self, source, tag):
        for (d, s, t), q in self.net.queues.items():
            if d == self.rank and t == tag and q and source in (s, stops_mod.MPI.ANY_SOURCE):
                return s
        return None

    def iprobe(self, source, tag, status=None):
        with self.net.lock:
            s = self._find(source, tag)
        if s is not None and status is not None:
            status.Set_source(s)
        return s is not None

    def recv(self, source, tag):
        with self.net.lock:
            return self.net.queues[(self.rank, source, tag)].popleft()

    def isend(self, obj, dest, tag):
        self.net.put(dest, self.rank, tag, obj)
        return _Done()


class _Owner:
    def __init__(self, rank, size):
        self.rank, self.size, self.stops, self.failed = rank, size, Stops(), []

    def fail(self, message):
        self.failed.append(message)


@pytest.fixture(autouse=True)
def fresh_preemption():
    yield
    preemption.uninstall()


class _Signal:
    """preemption.requested() as seen by one fake rank (the real flag is per process)."""

    def __init__(self):
        self.ranks = set()


def _world(size):
    net = _Net()
    owners = [_Owner(r, size) for r in range(size)]
    return net, owners, [StopWatch(o, _ErrComm(net, o.rank)) for o in owners]


def _job(size, seed, signalled, at_step, total, close_early=None, world=None):
    """Run `size` fake ranks to the end (or the agreed stop); each rank's (stopped_after, step_at_signal).
    signalled=None: no signal. world: the (net, owners, watches) of an earlier run to run again."""
    rng = random.Random(seed)
    net, owners, watches = world or _world(size)
    paces = [rng.uniform(0.0, 0.004) for _ in range(size)]
    signal = _Signal()
    step_at_signal = {}
    halt = threading.Event()
    current = threading.local()
    real_requested = preemption.requested

    def requested():
        return getattr(current, "rank", None) in signal.ranks

    def watcher(r):
        current.rank = r
        while not halt.is_set():
            watches[r].poll()
            time.sleep(0.002)

    results = {}

    def main(r):
        local = random.Random(seed * 100 + r)
        for step in range(1, total + 1):
            time.sleep(paces[r] * local.uniform(0.5, 1.5))
            if r == signalled and step == at_step:
                step_at_signal.update({k: owners[k].stops.checked for k in range(size)})
                signal.ranks.add(r)
            if owners[r].stops.after(step):
                results[r] = step
                return
            if close_early is not None and r == close_early[0] and step == close_early[1]:
                break
        results[r] = None

    stops_mod.preemption.requested = requested
    try:
        watchers = [threading.Thread(target=watcher, args=(r,), daemon=True) for r in range(size)]
        mains = [threading.Thread(target=main, args=(r,), daemon=True) for r in range(size)]
        for t in watchers + mains:
            t.start()
        for t in mains:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in mains), f"a rank hangs (seed {seed})"
    finally:
        halt.set()
        for t in watchers:
            t.join(timeout=5)  # a later run polls the same watches
        stops_mod.preemption.requested = real_requested
    return results, step_at_signal, owners


@pytest.mark.parametrize("seed", range(8))
def test_every_rank_stops_after_the_same_step_at_or_past_where_each_was(seed):
    rng = random.Random(seed)
    size, total = rng.randint(2, 5), 60
    signalled, at_step = rng.randrange(size), rng.randint(1, 40)
    results, at_signal, owners = _job(size, seed, signalled, at_step, total)
    stopped = set(results.values())
    assert len(stopped) == 1, f"seed {seed}: {results}"
    decided = {o.stops.stop_after for o in owners}
    assert len(decided) == 1 and None not in decided, f"seed {seed}: {decided}"
    (s,) = decided
    # a rank that had finished every step (a fast one) makes S pass the end: then the run completes
    assert stopped == ({s} if s <= total else {None}), f"seed {seed}: S={s}, {results}"
    assert all(s >= at_signal[r] for r in range(size)), f"seed {seed}: S={s}, steps then {at_signal}"
    assert s >= at_step, f"seed {seed}"
    assert not any(o.failed for o in owners)


def test_a_held_rank_waits_for_the_decision_then_answers_by_it():
    st = Stops()
    assert st.after(1) is False
    assert st.hold(st.epoch) == 2  # it has asked about step 1: the earliest it can stop after is 2
    answers = []
    t = threading.Thread(target=lambda: answers.append(st.after(2)))
    t.start()
    time.sleep(0.1)
    assert answers == [] and t.is_alive()  # held: no answer before the decision
    st.decide(3, st.epoch)
    t.join(timeout=5)
    assert answers == [False]
    assert st.after(3) is True


def test_a_given_up_agreement_never_holds_the_main_thread():
    st = Stops()
    st.hold(st.epoch)
    st.give_up()
    assert st.after(1) is False


def test_a_rank_that_never_answers_fails_the_job_naming_it(monkeypatch):
    monkeypatch.setattr(stops_mod, "REPLY_TIMEOUT_S", 0.2)
    net = _Net()
    owner = _Owner(0, 3)
    w = StopWatch(owner, _ErrComm(net, 0))
    net.put(0, 1, stops_mod.REQUEST_TAG, (0, None))
    net.put(0, 1, stops_mod.REPLY_TAG, (0, (1, 4)))  # rank 1 answers, rank 2 is frozen
    deadline = time.monotonic() + 10
    while not owner.failed and time.monotonic() < deadline:
        w.poll()
        time.sleep(0.01)
    assert len(owner.failed) == 1 and "rank(s) 2 did not answer" in owner.failed[0]
    assert owner.stops.stop_after is None


def test_a_failing_job_starts_no_round():
    net = _Net()
    owner = _Owner(0, 2)
    w = StopWatch(owner, _ErrComm(net, 0))
    preemption.request()
    preemption.abandon("rank 1 failed: boom")
    net.put(0, 1, stops_mod.REQUEST_TAG, (0, None))
    w.poll()
    assert not owner.stops.held and not net.queues.get((1, 0, stops_mod.HOLD_TAG))


def test_a_rank_that_finished_lets_a_later_round_decide_past_its_end():
    net = _Net()
    owners = [_Owner(r, 2) for r in range(2)]
    w0, w1 = (StopWatch(o, _ErrComm(net, o.rank)) for o in owners)
    for step in range(1, 6):
        owners[1].stops.after(step)
    closing = threading.Thread(target=w1.close)  # rank 1 ran all 5 steps and closes: it waits for goodbye
    closing.start()
    deadline = time.monotonic() + 10
    while not net.queues.get((0, 1, stops_mod.LAST_TAG)) and time.monotonic() < deadline:
        time.sleep(0.001)  # rank 1's last word is on its way before rank 0 is signalled
    owners[0].stops.after(3)
    preemption.request()
    deadline = time.monotonic() + 10
    while owners[0].stops.stop_after is None and time.monotonic() < deadline:
        w0.poll()  # rank 0 starts the round and takes rank 1's last word as its answer
        time.sleep(0.005)
    assert owners[0].stops.stop_after == 6  # past the run's end: it simply completes
    assert owners[0].stops.after(4) is False
    assert not net.queues.get((1, 0, stops_mod.HOLD_TAG))  # a closed rank is not asked
    w0.close()
    closing.join(timeout=10)
    assert not closing.is_alive(), "rank 1 did not get rank 0's goodbye"
    assert not any(net.queues.values()), f"messages left unread: {net.queues}"


def test_the_closing_handshake_leaves_nothing_unread():
    net = _Net()
    owners = [_Owner(r, 3) for r in range(3)]
    watches = [StopWatch(o, _ErrComm(net, o.rank)) for o in owners]
    for o in owners:
        o.stops.after(1)
    closing = [threading.Thread(target=w.close) for w in watches]
    for t in closing:
        t.start()
    for t in closing:
        t.join(timeout=15)
    assert not any(t.is_alive() for t in closing)
    assert watches[0]._last == {1: 2, 2: 2}
    assert not any(net.queues.values()), f"messages left unread: {net.queues}"


@pytest.mark.mpi
@pytest.mark.parametrize("seed", [3, 11])
def test_ranks_stepping_apart_with_no_collective_stop_after_the_same_step(mpi_ctx, seed):
    """mpiexec -n 2 (or 4) python -m mpi4py -m pytest --with-mpi -m mpi tests/comm/test_stop_protocol.py"""
    from fda.comm.communicator import Comm
    world = mpi_ctx.fda_comm
    comm = Comm(world.comm.Dup())  # a fresh agreement: one round per run
    comm.watch_failures()
    rng = random.Random(seed)
    signalled, at_step, total = rng.randrange(comm.size), rng.randint(3, 30), 200
    pace = random.Random(seed * 100 + comm.rank).uniform(0.001, 0.02)  # every rank its own speed
    asked, signal_at, stopped = [], None, None
    try:
        for step in range(1, total + 1):
            comm.set_step(step)
            time.sleep(pace)
            if comm.rank == signalled and step == at_step:
                signal_at = time.monotonic()  # one clock for every process of this machine
                preemption.request("test")
            if comm.stop_requested_after(step):
                stopped = step
                break
            asked.append((time.monotonic(), step))
    finally:
        preemption.uninstall()
        comm.stop_watching()
    everyone = world.allgather_object((stopped, asked, signal_at))
    comm.comm.Free()
    t0 = next(s for _, _, s in everyone if s is not None)
    stops = {s for s, _, _ in everyone}
    assert len(stops) == 1 and None not in stops, f"seed {seed}: {stops}"
    (s,) = stops
    for rank, (_, steps, _) in enumerate(everyone):
        before = max((k for t, k in steps if t <= t0), default=0)
        assert s >= before, f"seed {seed}: rank {rank} was past step {before} at the signal, S={s}"


def _assert_agreed(results, owners, total, seed):
    decided = {o.stops.stop_after for o in owners}
    assert len(decided) == 1 and None not in decided, f"seed {seed}: {decided}"
    (s,) = decided
    assert set(results.values()) == ({s} if s <= total else {None}), f"seed {seed}: S={s}, {results}"


@pytest.mark.parametrize("seed", range(3))
def test_a_new_run_forgets_the_last_runs_stop(seed):
    """Two runs on the same ranks (one communicator, as several Synchronizers on one fda.init context):
    the first is stopped; the second, after every rank's new_run, completes, or agrees anew."""
    rng = random.Random(seed)
    size = rng.randint(2, 4)
    world = _world(size)
    first, _, owners = _job(size, seed, rng.randrange(size), rng.randint(1, 10), 40, world=world)
    _assert_agreed(first, owners, 40, seed)
    preemption.uninstall()
    for o in owners:
        o.stops.new_run()
    second, _, _ = _job(size, seed + 1, None, 0, 30, world=world)
    assert second == {r: None for r in range(size)}, f"seed {seed}: the old decision stopped a new run: {second}"
    for o in owners:
        o.stops.new_run()
    third, _, _ = _job(size, seed + 2, rng.randrange(size), rng.randint(1, 10), 60, world=world)
    _assert_agreed(third, owners, 60, seed)
    assert not any(o.failed for o in owners)


def test_a_message_of_a_run_a_rank_has_not_reached_waits_for_it():
    net, owners, (w0, w1) = _world(2)
    owners[1].stops.after(7)  # rank 1 still ends its last run: its main thread has not called new_run
    owners[0].stops.new_run()
    preemption.request()  # rank 0 is signalled at once in the new run
    w0.poll()
    preemption.uninstall()
    w1.poll()
    assert not owners[1].stops.held and not net.queues.get((0, 1, stops_mod.REPLY_TAG)), \
        "rank 1 answered a hold of a run it has not started"
    net.put(1, 0, stops_mod.DECIDE_TAG, (0, 99))  # left over from the last run's round
    owners[1].stops.new_run()
    w1.poll()
    assert owners[1].stops.held and list(net.queues[(0, 1, stops_mod.REPLY_TAG)]) == [(1, (1, 1))]
    assert owners[1].stops.stop_after is None  # the old decision was dropped
    deadline = time.monotonic() + 10
    while owners[1].stops.stop_after is None and time.monotonic() < deadline:
        w0.poll()
        w1.poll()
    assert owners[0].stops.stop_after == owners[1].stops.stop_after == 1
