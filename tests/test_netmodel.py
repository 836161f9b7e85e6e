"""The network model of `fda report --network`: parsing, each Allreduce algorithm's arithmetic and
MPICH's choice between them, and a run's modelled time to target from its step arrays, each
against a hand computation."""
import json
import math

import numpy as np
import pytest
import torch

from fda.netmodel import (EXCHANGE_ITEM_BYTES, PROFILES, AllreduceCost, Network, NetworkError, algorithm_cost,
                          allreduce_cost, model_run, modelled_time_to_target, mpich_algorithm, parse_network, pof2,
                          ring_allreduce_time, run_traffic)
from fda.sync.exchange import HEAD, StepExchange

NET = Network("test", 1e6, 1e-3)  # 1 MB/s, 1 ms: a byte costs 1 us, a message 1 ms


def test_profiles_are_the_documented_networks():
    assert PROFILES["datacenter"] == Network("datacenter", 12.5e9, 5e-6)   # 100 Gbit/s, 5 us
    assert PROFILES["ethernet"] == Network("ethernet", 1.25e9, 50e-6)      # 10 Gbit/s, 50 us
    assert PROFILES["wan"] == Network("wan", 12.5e6, 20e-3)                # 100 Mbit/s, 20 ms
    assert parse_network(" WAN ") is PROFILES["wan"]
    assert all(n.allreduce == "mpich" for n in PROFILES.values())


@pytest.mark.parametrize("spec, bandwidth, latency", [
    ("1Gbit/s,2ms", 125e6, 2e-3),
    ("1gbps,2MS", 125e6, 2e-3),
    ("125MB/s,500us", 125e6, 5e-4),
    ("40 Gbit/s, 1.5 us", 5e9, 1.5e-6),
    ("8e6,0.01", 1e6, 0.01),          # bare numbers: bit/s and seconds
    ("100Mbit/s,0ms", 12.5e6, 0.0),
])
def test_custom_networks(spec, bandwidth, latency):
    net = parse_network(spec)
    assert net.bandwidth == pytest.approx(bandwidth) and net.latency == pytest.approx(latency)
    assert net.name == spec.strip() and net.allreduce == "mpich"


@pytest.mark.parametrize("spec, name, algorithm, bandwidth", [
    ("wan:ring", "wan:ring", "ring", 12.5e6),
    ("WAN : Recursive_Doubling", "WAN : Recursive_Doubling", "recursive_doubling", 12.5e6),
    ("1Gbit/s,2ms:reduce_scatter_allgather", "1Gbit/s,2ms:reduce_scatter_allgather", "reduce_scatter_allgather",
     125e6),
    ("ethernet:mpich", "ethernet:mpich", "mpich", 1.25e9),
])
def test_a_network_can_force_one_algorithm(spec, name, algorithm, bandwidth):
    net = parse_network(spec)
    assert (net.name, net.allreduce, net.bandwidth) == (name, algorithm, pytest.approx(bandwidth))
    assert ("every Allreduce by" in net.describe()) == (algorithm != "mpich")


@pytest.mark.parametrize("spec, says", [
    ("lan", "not a profile"),
    ("10Mb/s,1ms", "cannot read the bandwidth"),   # Mb/s: bits or bytes? refused, not guessed
    ("1Gbit/s,soon", "cannot read the latency"),
    ("0Gbit/s,1ms", "must be > 0"),
    ("wan:tree", "unknown Allreduce algorithm 'tree'"),
    ("lan:ring", "not a profile"),
])
def test_bad_networks_say_why(spec, says):
    with pytest.raises(NetworkError, match=says):
        parse_network(spec)


# ------------------------------------------------------------------ one Allreduce, by hand
def test_pof2():
    assert [pof2(p) for p in (1, 2, 3, 4, 5, 7, 8, 9, 1000)] == [1, 2, 2, 4, 4, 4, 8, 8, 512]


@pytest.mark.parametrize("algorithm, n, P, rounds, seconds", [
    # recursive doubling: log2(P') rounds of the whole message, +2 (fold in, result out) off a power of two
    ("recursive_doubling", 8, 2, 1, 1e-3 + 8e-6),
    ("recursive_doubling", 8, 8, 3, 3 * (1e-3 + 8e-6)),
    ("recursive_doubling", 100, 5, 4, 4 * (1e-3 + 100e-6)),       # P' = 4: 2 rounds + 2
    ("recursive_doubling", 100, 7, 4, 4 * (1e-3 + 100e-6)),       # P' = 4
    # Rabenseifner: 2 log2(P') rounds moving 2 (P'-1)/P' n, + 2 whole messages off a power of two
    ("reduce_scatter_allgather", 4000, 2, 2, 2e-3 + 4000e-6),
    ("reduce_scatter_allgather", 4000, 8, 6, 6e-3 + 2 * 7 / 8 * 4000e-6),
    ("reduce_scatter_allgather", 4000, 6, 6, 6e-3 + (2 * 3 / 4 + 2) * 4000e-6),   # P' = 4
    # the ring: 2(P-1) rounds of n/P
    ("ring", 4000, 5, 8, 8e-3 + 2 * 4 / 5 * 4000e-6),
    ("ring", 4000, 2, 2, 2e-3 + 4000e-6),
])
def test_each_algorithm_against_a_hand_computation(algorithm, n, P, rounds, seconds):
    cost = algorithm_cost(algorithm, n, P, NET)
    assert (cost.algorithm, cost.rounds) == (algorithm, rounds)
    assert cost.seconds == pytest.approx(seconds, rel=1e-12)


@pytest.mark.parametrize("algorithm", ["recursive_doubling", "reduce_scatter_allgather", "ring"])
def test_one_rank_or_no_bytes_cost_nothing(algorithm):
    assert algorithm_cost(algorithm, 4000, 1, NET) == AllreduceCost("none", 0, 0.0)
    assert algorithm_cost(algorithm, 0, 8, NET) == AllreduceCost("none", 0, 0.0)
    assert allreduce_cost(4000, 1, parse_network("wan:" + algorithm)) == AllreduceCost("none", 0, 0.0)


def test_an_unknown_algorithm_is_refused():
    with pytest.raises(ValueError, match="unknown Allreduce algorithm"):
        algorithm_cost("tree", 8, 4, NET)


def test_the_ring_helper_is_the_ring_algorithm():
    wan = PROFILES["wan"]
    # LeNet-5's sync (61,706 float32) over K=5 workers, by hand:
    # 2*4/5 * 246,824 B / 12.5e6 B/s = 0.031593472 s, + 2*4 * 20 ms = 0.16 s
    assert ring_allreduce_time(4 * 61_706, 5, wan) == pytest.approx(0.031593472 + 0.16, rel=1e-12)
    assert algorithm_cost("ring", 4 * 61_706, 5, wan).seconds == pytest.approx(0.031593472 + 0.16, rel=1e-12)
    assert ring_allreduce_time(1e6, 1, wan) == 0.0
    sizes = np.array([8.0, 4000.0])
    assert np.allclose(ring_allreduce_time(sizes, 4, wan), 1.5 * sizes / 12.5e6 + 6 * 0.02)


# ------------------------------------------------------------------ MPICH's choice
@pytest.mark.parametrize("n, P, item, blocking, expected", [
    # blocking: recursive doubling up to 8 bytes ...
    (8, 5, 4, True, "recursive_doubling"),
    (8, 64, 8, True, "recursive_doubling"),
    # ... or with fewer values than P' (here P' = 4), Rabenseifner from P' values on
    (12, 5, 4, True, "recursive_doubling"),
    (16, 5, 4, True, "reduce_scatter_allgather"),
    (24, 4, 8, True, "recursive_doubling"),          # 3 float64 values < 4
    (32, 4, 8, True, "reduce_scatter_allgather"),    # 4 float64 values
    (12, 2, 4, True, "reduce_scatter_allgather"),    # 3 values >= P' = 2
    (48, 8, 8, True, "recursive_doubling"),          # a Linear exchange (6 values) among 8
    (246_824, 5, 4, True, "reduce_scatter_allgather"),
    # non-blocking (MPI_Iallreduce): up to 2048 bytes
    (2048, 5, 8, False, "recursive_doubling"),
    (2056, 5, 8, False, "reduce_scatter_allgather"),
    (16, 5, 4, False, "recursive_doubling"),
    (4, 1, 4, True, "none"),
    (0, 4, 4, False, "none"),
])
def test_mpich_selection_at_its_edges(n, P, item, blocking, expected):
    assert mpich_algorithm(n, P, item_bytes=item, blocking=blocking) == expected
    cost = allreduce_cost(n, P, NET, item_bytes=item, blocking=blocking)
    assert cost.algorithm == expected
    if expected != "none":
        assert cost == algorithm_cost(expected, n, P, NET)


def test_a_forced_algorithm_overrides_mpich():
    ring = Network("r", 1e6, 1e-3, allreduce="ring")
    assert allreduce_cost(8, 8, ring) == algorithm_cost("ring", 8, 8, ring)   # 14 rounds
    assert allreduce_cost(8, 8, NET).rounds == 3                              # MPICH: recursive doubling


def test_exchange_width_matches_the_step_exchange():
    """The model reads exchange_bytes as float64 values, a MAX monitor's second call as the state alone."""
    class World:
        def allreduce_to_host(self, t, op, kind):
            return t.numpy().copy()

    for op, expected in (("sum", (EXCHANGE_ITEM_BYTES * (HEAD + 3), 1)),
                         ("max", (EXCHANGE_ITEM_BYTES * (HEAD + 3) + EXCHANGE_ITEM_BYTES * 3, 2))):
        ex = StepExchange(World(), 1, torch.device("cpu"), state_op=op)
        ex.add_loss(0.5)
        ex.start(step=1, state_size=3, fill_state=lambda out: out.fill_(1.0))
        assert ex.sent == expected


# ------------------------------------------------------------------ a run's log
def _log(K=4, W=2, d=1000, state_floats=2, exchange=None):
    """Six steps of an FDA-like run: a check every step, syncs at steps 3 and 6. `exchange`:
    (bytes, calls, lag) arrays of a log with the exchange columns; None: an older log."""
    synced = np.array([0, 0, 1, 0, 0, 1])
    added = K * 4 * state_floats + synced * 2 * K * 4 * d
    steps = {
        "step": np.arange(1, 7),
        "var_bound": np.array([0.1, 0.2, 0.9, 0.1, 0.3, 0.8]),
        "synced": synced,
        "comm_bytes": np.cumsum(added),
        "time_compute": np.array([0.1, 0.2, 0.1, 5.0, 0.1, 0.1]),   # one slow step (an evaluation)
        "time_monitor": np.full(6, 0.01),
    }
    if exchange is not None:
        for key, values in zip(("exchange_bytes", "exchange_calls", "exchange_lag"), exchange):
            steps[key] = np.broadcast_to(np.asarray(values), (6,)).copy()
    return steps, {"workers": K, "workers_per_rank": W, "state_floats": state_floats}


def test_run_traffic_recovers_message_sizes_from_the_log():
    steps, attrs = _log(exchange=(48, 1, 0))
    t = run_traffic(steps, attrs)
    assert t.synced.tolist() == [False, False, True, False, False, True]
    assert t.sync_bytes.tolist() == [0, 0, 4000, 0, 0, 4000]
    assert t.exchange_bytes.tolist() == [48] * 6 and t.item_bytes == 8 and t.from_exchange_columns
    assert t.step_compute == pytest.approx(0.1 / 2)  # median step, one worker of W = 2


def test_an_older_log_prices_its_checks_only():
    """Without the exchange columns: each check a blocking Allreduce of 4|S| bytes (float32 values),
    as before the columns existed; with the ring forced, exactly the former model."""
    steps, attrs = _log()
    t = run_traffic(steps, attrs)
    assert not t.from_exchange_columns and t.item_bytes == 4
    assert t.exchange_bytes.tolist() == [8] * 6 and t.exchange_calls.tolist() == [1] * 6
    assert not t.exchange_lag.any()
    # target at step 4, K = P = 4: compute 4 * (0.1 / 2) + 4 * (0.01 / 2) = 0.22
    ring = Network("ring", 1e6, 1e-3, allreduce="ring")
    #   ring: checks 4 * (2*3/4 * 8 / 1e6 + 2*3 * 1e-3), one sync 2*3/4 * 4000 / 1e6 + 2*3 * 1e-3
    assert modelled_time_to_target(steps, attrs, 4, ring) == pytest.approx(0.22 + 4 * 0.006012 + 0.012, rel=1e-12)
    #   MPICH: an 8-byte check is recursive doubling, 2 rounds; the sync Rabenseifner, 4 rounds
    expected = 0.22 + 4 * 2 * (1e-3 + 8e-6) + (4e-3 + 1.5 * 4000e-6)
    assert modelled_time_to_target(steps, attrs, 4, NET) == pytest.approx(expected, rel=1e-12)
    assert modelled_time_to_target(steps, attrs, None, NET) is None
    assert [m.kind for m in model_run(steps, attrs, 4, NET).messages] == ["check", "sync"]


def test_a_run_without_a_monitor_in_an_older_log_pays_only_its_syncs():
    steps, attrs = _log(state_floats=0)
    steps["var_bound"] = np.full(6, math.nan)  # synchronous / fedavg log no bound
    expected = 6 * 0.05 + 6 * 0.005 + 2 * (4e-3 + 1.5 * 4000 / 1e6)
    assert modelled_time_to_target(steps, attrs, 6, NET) == pytest.approx(expected, rel=1e-12)


def test_blocking_exchanges_are_priced_in_full_every_step():
    steps, attrs = _log(exchange=(48, 1, 0))   # a Linear state (2 floats) and the head, every step
    # 48 B = 6 float64 values >= P' = 4, blocking: Rabenseifner, 4 rounds, 2*3/4*48 bytes
    exchange = 4e-3 + 1.5 * 48e-6
    sync = 4e-3 + 1.5 * 4000e-6
    expected = 4 * 0.055 + 4 * exchange + sync
    m = model_run(steps, attrs, 4, NET)
    assert m.total == pytest.approx(expected, rel=1e-12)
    assert m.exchange_wait == pytest.approx(4 * exchange, rel=1e-9) and m.sync == pytest.approx(sync)
    ex, sy = m.messages
    assert (ex.kind, ex.sizes, ex.lag, ex.count, ex.costs[0].algorithm) == ("exchange", (48.0,), 0, 4,
                                                                             "reduce_scatter_allgather")
    assert (sy.kind, sy.count, sy.costs[0].rounds) == ("sync", 1, 4)
    assert "reduce_scatter_allgather (4 rounds)" in m.describe()[1]


def test_a_lagged_exchange_costs_only_what_outlasts_its_compute():
    """One exchange, started at step 2 and waited on L steps later: max(0, T - L c) on top of compute
    (c: a step's compute, its monitor time included)."""
    K, c = 8, 0.05 + 0.005                          # one worker's share (W = 2) of 0.1 s + 0.01 s
    T = allreduce_cost(48, K, NET, item_bytes=8, blocking=False).seconds   # 3 rounds: 3.144 ms
    assert T == pytest.approx(3 * (1e-3 + 48e-6))
    for lag, net in ((1, NET), (2, NET), (1, Network("slow", 1e6, 0.02)), (3, Network("slow", 1e6, 0.02))):
        T = allreduce_cost(48, K, net, item_bytes=8, blocking=False).seconds
        steps, attrs = _log(K=K, state_floats=2, exchange=([0, 48, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], lag))
        steps["synced"][:] = 0
        steps["comm_bytes"] = np.cumsum(np.full(6, K * 8))
        m = model_run(steps, attrs, 6, net)
        assert m.total == pytest.approx(6 * c + max(0.0, T - lag * c), rel=1e-12), (lag, net)
        assert m.messages[0].lag == lag and m.messages[0].costs[0].algorithm == "recursive_doubling"


@pytest.mark.parametrize("delay", [1, 2, 4])
def test_an_overlapped_sync_costs_only_what_outlasts_the_steps_it_overlaps(delay):
    """Syncs at steps 3 and 6 (no exchanges), each started at the end of its step and waited on
    `delay` steps later: max(0, T - D c) each, where the D steps exist before the target."""
    K, c = 4, 0.05 + 0.005
    steps, attrs = _log(K=K, state_floats=0, exchange=(0, 0, 0))
    steps["time_compute"] = np.full(6, 0.1)
    steps["var_bound"] = np.full(6, math.nan)
    steps["comm_bytes"] = np.cumsum(steps["synced"] * 2 * K * 4 * 1000)
    attrs["config"] = json.dumps({"sync_delay": delay})
    for net in (NET, Network("slow", 1e6, 0.02)):
        T = allreduce_cost(4000, K, net, blocking=False).seconds   # Rabenseifner, 4 rounds
        assert T == pytest.approx(4 * net.latency + 1.5 * 4000 / net.bandwidth)
        m = model_run(steps, attrs, 6, net)
        # step 3's sync lands at 3 + D (a stall of max(0, T - D c) there if 3 + D <= 6); step 6's after the target
        stall = max(0.0, T - delay * c) if 3 + delay <= 6 else 0.0
        assert m.total == pytest.approx(6 * c + stall, rel=1e-12), (delay, net.name)
        assert m.sync == pytest.approx(stall, rel=1e-9, abs=1e-15) and m.exchange_wait == pytest.approx(0, abs=1e-12)
        sync = [x for x in m.messages if x.kind == "sync"][0]
        assert (sync.lag, sync.count) == (delay, 2) and f"waited {delay} steps later" in sync.describe()
    attrs["config"] = json.dumps({"sync_delay": 0})
    T = allreduce_cost(4000, K, NET).seconds
    assert model_run(steps, attrs, 6, NET).total == pytest.approx(6 * c + 2 * T, rel=1e-12)  # blocking: in full


def test_exchanges_in_flight_together_overlap_each_other():
    """An exchange every step with lag 1, T = 5 c: a wait also lets the next exchange travel, so
    the stalls are less than the sum of max(0, T - L c) over the exchanges (3 x 4 c here)."""
    c, T = 1.0, 5.0
    net = Network("t", 1e9, T / 3)   # 48 B over K = 8 blocking-free: 3 rounds of latency ~ T
    steps, attrs = _log(K=8, W=1, exchange=(48, 1, 1))
    steps["synced"][:] = 0
    steps["time_compute"] = np.full(6, c)
    steps["time_monitor"] = np.zeros(6)
    t_exchange = allreduce_cost(48, 8, net, item_bytes=8, blocking=False).seconds
    assert t_exchange == pytest.approx(T, rel=1e-6)
    # by hand (start = end of the previous step + c; a step ends when the exchange due at it is done):
    # step 1 ends at 1 (its exchange done at 6), step 2 at 6 (done at 7), 3 at 7 (12), 4 at 12
    assert model_run(steps, attrs, 4, net).total == pytest.approx(12.0, rel=1e-6)
    assert model_run(steps, attrs, 4, net).exchange_wait == pytest.approx(8.0, rel=1e-6)


def test_isolated_lagged_exchanges_match_the_closed_form():
    """Random logs (seeded) whose exchanges are at least L + 1 steps apart: the replay equals
    steps x c + monitor + syncs + for each exchange max(0, T - what the rank did while it travelled:
    the compute and monitor of the L steps after its start and the syncs before its wait)."""
    seed = 20261203
    rng = np.random.default_rng(seed)
    stalled = 0
    for trial in range(20):
        n, lag, K = 60, int(rng.integers(1, 5)), int(rng.integers(2, 10))
        starts = np.zeros(n, dtype=bool)
        s = int(rng.integers(0, 3))
        while s < n:
            starts[s] = True
            s += lag + 1 + int(rng.integers(0, 4))
        sizes = np.where(starts, 8 * rng.integers(5, 400, n), 0)
        synced = rng.random(n) < 0.1
        compute = rng.uniform(0.001, 0.02, n)
        steps = {"step": np.arange(1, n + 1), "var_bound": np.full(n, np.nan), "synced": synced.astype(np.int8),
                 "comm_bytes": np.cumsum(synced * 2 * K * 4000), "time_compute": compute,
                 "time_monitor": rng.uniform(0, 0.001, n), "exchange_bytes": sizes,
                 "exchange_calls": starts.astype(np.int8), "exchange_lag": np.full(n, lag)}
        attrs = {"workers": K, "workers_per_rank": 1, "state_floats": 0}
        net = Network("t", 1e6, float(rng.uniform(1e-4, 1e-2)))
        c = float(np.median(compute))
        target = int(rng.integers(n // 2, n))
        upto = np.arange(n) < target
        waited = np.arange(n) + lag < target  # waited on by the target step: the others do not delay it
        sync = synced * allreduce_cost(4000, K, net).seconds
        busy = c + steps["time_monitor"]
        stall = [max(0.0, allreduce_cost(float(sizes[i]), K, net, item_bytes=8, blocking=False).seconds
                     - float(np.sum(busy[i + 1:i + 1 + lag]) + np.sum(sync[i:i + lag])))
                 for i in np.flatnonzero(waited & starts)]
        stalls, stalled = sum(stall), stalled + sum(x > 0 for x in stall)
        syncs = float(np.sum(sync[upto]))
        expected = target * c + float(np.sum(steps["time_monitor"][upto])) + stalls + syncs
        got = modelled_time_to_target(steps, attrs, target, net)
        assert got == pytest.approx(expected, rel=1e-9), f"seed {seed}, trial {trial}"
    assert stalled > 10, f"seed {seed}: too few exchanges outlast their compute to test the overlap"


def test_two_call_exchanges_price_both_allreduces():
    """Kamp's MAX: the SUM of the head and the state, then the MAX of the state alone (1 float)."""
    K = 5
    steps, attrs = _log(K=K, W=1, state_floats=1, exchange=(8 * (HEAD + 1) + 8, 2, 0))
    steps["synced"][:] = 0
    steps["comm_bytes"] = np.cumsum(np.full(6, K * 4))
    steps["time_compute"] = np.full(6, 0.1)
    # 32 B = 4 values >= P' = 4: Rabenseifner, 2*2 + 2 = 6 rounds moving (2*3/4 + 2) * 32 B;
    # 8 B: recursive doubling, 2 + 2 = 4 rounds of 8 B
    first, second = 6e-3 + 3.5 * 32e-6, 4 * (1e-3 + 8e-6)
    m = model_run(steps, attrs, 3, NET)
    assert m.total == pytest.approx(3 * (0.1 + 0.01) + 3 * (first + second), rel=1e-12)
    (ex,) = m.messages
    assert ex.sizes == (32.0, 8.0) and [c.algorithm for c in ex.costs] == ["reduce_scatter_allgather",
                                                                          "recursive_doubling"]


def test_steps_without_an_exchange_cost_nothing_but_compute():
    """A schedule's log: no exchange between syncs (bytes 0, calls 0), a sync at steps 3 and 6."""
    steps, attrs = _log(state_floats=0, exchange=([0, 0, 32, 0, 0, 32], [0, 0, 1, 0, 0, 1], 0))
    steps["var_bound"] = np.full(6, math.nan)
    exchange = allreduce_cost(32, 4, NET, item_bytes=8).seconds     # 4 float64 values: Rabenseifner
    assert exchange == pytest.approx(4e-3 + 1.5 * 32e-6)
    expected = 6 * 0.055 + 2 * exchange + 2 * (4e-3 + 1.5 * 4000e-6)
    assert modelled_time_to_target(steps, attrs, 6, NET) == pytest.approx(expected, rel=1e-12)


def test_one_worker_pays_compute_only():
    steps, attrs = _log(K=1, W=1, exchange=(48, 1, 0))
    steps["comm_bytes"] = np.cumsum(np.array([8, 8, 8008, 8, 8, 8008]))
    m = model_run(steps, attrs, 6, NET)
    assert m.total == pytest.approx(6 * 0.1 + 6 * 0.01) and m.exchange_wait == pytest.approx(0.0, abs=1e-12)
    assert all(c.algorithm == "none" for msg in m.messages for c in msg.costs)
