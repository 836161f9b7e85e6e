"""The stall protocol's pieces that need no second rank: positions and verdicts."""
from fda.comm import Position
from fda.comm.stalls import stall_verdict


def test_position_enter_and_leave():
    p = Position()
    p.enter("state Allreduce")
    assert (p.seq, p.inside, p.what) == (1, True, "state Allreduce")
    assert p.describe(p.since + 2.5) == "in the state Allreduce before the first step for 2.5 s"
    p.step = 7
    p.leave()
    assert not p.inside and p.describe(p.since + 1) == "at step 7, outside any collective for 1.0 s"


REPORT = {"rank": 0, "seq": 9, "step": 5, "what": "state Allreduce"}


def test_verdict_names_the_late_ranks_and_where_they_are():
    positions = {0: {"where": "in the state Allreduce at step 5"}, 2: {"where": "at step 4, outside any collective"}}
    one = stall_verdict(REPORT, [2], positions, 3.0)
    assert one == ("stall: rank 2 did not reach the state Allreduce at step 5 within stall_timeout=3 s "
                   "(rank 2 is at step 4, outside any collective); the other ranks are waiting there")
    two = stall_verdict(REPORT, [1, 2], positions, 3.0)
    assert two.startswith("stall: ranks 1, 2 did not reach") and "rank 1 does not answer (frozen?)" in two


def test_verdict_when_every_rank_is_there():
    v = stall_verdict({**REPORT, "step": 0}, [], {}, 2.5)
    assert v == ("stall: every rank reached the state Allreduce before the first step, but it has not "
                 "completed within stall_timeout=2.5 s (a network or MPI problem)")
