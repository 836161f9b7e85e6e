"""The stall protocol: a rank that does not reach a collective in time is named on every rank.

Run by the failure watcher thread of every rank (see `failures.FailureWatcher`), also while the
main thread is blocked in a collective or asleep in a data loader. A rank inside collective n
for more than stall_timeout seconds reports it to rank 0 (once per collective). Rank 0 asks
every rank where it is (the other watcher threads answer their main thread's `Position`); the
ranks that have not reached collective n, or do not answer within QUERY_TIMEOUT_S, are late.
Rank 0 sends the verdict to every rank, every rank prints it, rank 0 marks the log failed naming
the late ranks, and aborts the job. If every rank reached it, the verdict says the collective
itself hangs (network or MPI). No message is exchanged until a rank has waited stall_timeout:
it costs nothing while the run is healthy.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from mpi4py import MPI

from fda import preemption

REPORT_TAG, QUERY_TAG, POSITION_TAG, VERDICT_TAG = 79, 80, 81, 82
QUERY_TIMEOUT_S = 5.0  # how long rank 0 waits for the other ranks' positions after a stall


def _when(step: int) -> str:
    return f"at step {step}" if step else "before the first step"


@dataclass
class Position:
    """Where this rank's main thread is, as far as collectives go (read by the watcher thread).

    seq: collectives entered so far (every rank calls the same sequence, so equal seq = the same
    collective); inside: in collective `seq` now, since `since` (time.monotonic()); what: which;
    step: the training step, as the Synchronizer last set it (0: before the first)."""
    seq: int = 0
    inside: bool = False
    since: float = 0.0
    what: str = ""
    step: int = 0

    def enter(self, what: str) -> None:
        self.seq += 1
        self.what = what
        self.since = time.monotonic()
        self.inside = True

    def leave(self) -> None:
        self.inside = False
        self.since = time.monotonic()

    def describe(self, now: float) -> str:
        where = _when(self.step)
        if self.inside:
            return f"in the {self.what} {where} for {now - self.since:.1f} s"
        return f"{where}, outside any collective for {now - self.since:.1f} s"


class StallWatch:
    """One rank's side of the stall protocol (the module docstring), polled by its watcher thread.

    owner: the rank's `Comm` (rank, size, position, stall_timeout, record_failure, abort);
    errcomm: the watcher's private duplicate of its communicator."""

    def __init__(self, owner, errcomm: MPI.Comm):
        self.owner, self.errcomm = owner, errcomm
        self._reported_seq = 0
        self._sends: list = []
        self._decided = False

    def poll(self) -> None:
        owner, timeout = self.owner, self.owner.stall_timeout
        if not timeout:  # the same setting on every rank: then no rank asks anything
            return
        pos = owner.position
        if pos.inside and pos.seq != self._reported_seq and time.monotonic() - pos.since > timeout:
            self._reported_seq = pos.seq
            report = {"rank": owner.rank, "seq": pos.seq, "step": pos.step, "what": pos.what}
            if owner.rank == 0:
                self._coordinate(report)
            else:
                self._send(report, 0, REPORT_TAG)
        status = MPI.Status()
        if owner.rank == 0 and self.errcomm.iprobe(source=MPI.ANY_SOURCE, tag=REPORT_TAG, status=status):
            self._coordinate(self.errcomm.recv(source=status.Get_source(), tag=REPORT_TAG))
        if self.errcomm.iprobe(source=0, tag=QUERY_TAG):
            self.errcomm.recv(source=0, tag=QUERY_TAG)
            self._send(self._where(), 0, POSITION_TAG)
        if self.errcomm.iprobe(source=0, tag=VERDICT_TAG):
            self._say(self.errcomm.recv(source=0, tag=VERDICT_TAG))

    def _send(self, obj, dest: int, tag: int) -> None:
        self._sends = [r for r in self._sends if not r.Test()]
        self._sends.append(self.errcomm.isend(obj, dest=dest, tag=tag))

    def _where(self) -> dict:
        p = self.owner.position
        return {"rank": self.owner.rank, "seq": p.seq, "inside": p.inside, "step": p.step,
                "where": p.describe(time.monotonic())}

    def _say(self, verdict: str) -> None:
        preemption.abandon(verdict)
        print(f"fda: rank {self.owner.rank}: {verdict}", file=sys.stderr, flush=True)

    def _positions(self, seq: int) -> dict:
        """Rank 0: every rank's answer to 'where are you?' (those that answer within QUERY_TIMEOUT_S)."""
        positions = {0: self._where()}
        for r in range(1, self.owner.size):
            self._send(seq, r, QUERY_TAG)
        deadline = time.monotonic() + QUERY_TIMEOUT_S
        status = MPI.Status()
        while len(positions) < self.owner.size and time.monotonic() < deadline:
            if self.errcomm.iprobe(source=MPI.ANY_SOURCE, tag=POSITION_TAG, status=status):
                reply = self.errcomm.recv(source=status.Get_source(), tag=POSITION_TAG)
                positions[reply["rank"]] = reply
            else:
                time.sleep(0.01)
        return positions

    def _coordinate(self, report: dict) -> None:
        """Rank 0: find the late ranks, tell everyone, record it, abort."""
        owner = self.owner
        if self._decided:
            return
        positions = self._positions(report["seq"])
        late = [r for r in range(owner.size) if r not in positions or positions[r]["seq"] < report["seq"]]
        if not late and any(not p["inside"] or p["seq"] != report["seq"] for p in positions.values()):
            self._reported_seq = 0  # it moved on meanwhile: a slow rank, not a stalled one
            return
        self._decided = True
        verdict = stall_verdict(report, late, positions, owner.stall_timeout)
        for r in range(1, owner.size):
            self._send(verdict, r, VERDICT_TAG)
        self._say(verdict)
        owner.record_failure(late[0] if late else report["rank"], verdict)
        time.sleep(0.5)  # let the others print the verdict
        sys.stderr.flush()
        owner.abort(1)


def stall_verdict(report: dict, late: list[int], positions: dict, timeout: float) -> str:
    """What every rank prints: which ranks are late and where each of them is."""
    where = _when(report["step"])
    if not late:
        return (f"stall: every rank reached the {report['what']} {where}, but it has not completed "
                f"within stall_timeout={timeout:g} s (a network or MPI problem)")
    ranks = ", ".join(map(str, late))
    detail = "; ".join(f"rank {r} is {positions[r]['where']}" if r in positions
                       else f"rank {r} does not answer (frozen?)" for r in late)
    plural = "ranks" if len(late) > 1 else "rank"
    return (f"stall: {plural} {ranks} did not reach the {report['what']} {where} within "
            f"stall_timeout={timeout:g} s ({detail}); the other ranks are waiting there")
