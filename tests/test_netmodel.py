"""The network model of `fda report --network`: parsing, the ring-Allreduce arithmetic, and a
run's modelled time to target, each against a hand computation."""
import math

import numpy as np
import pytest

from fda.netmodel import PROFILES, Network, NetworkError, modelled_time_to_target, parse_network, \
    ring_allreduce_time, run_traffic


def test_profiles_are_the_documented_networks():
    assert PROFILES["datacenter"] == Network("datacenter", 12.5e9, 5e-6)   # 100 Gbit/s, 5 us
    assert PROFILES["ethernet"] == Network("ethernet", 1.25e9, 50e-6)      # 10 Gbit/s, 50 us
    assert PROFILES["wan"] == Network("wan", 12.5e6, 20e-3)                # 100 Mbit/s, 20 ms
    assert parse_network(" WAN ") is PROFILES["wan"]


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
    assert net.name == spec.strip()


@pytest.mark.parametrize("spec, says", [
    ("lan", "not a profile"),
    ("10Mb/s,1ms", "cannot read the bandwidth"),   # Mb/s: bits or bytes? refused, not guessed
    ("1Gbit/s,soon", "cannot read the latency"),
    ("0Gbit/s,1ms", "must be > 0"),
])
def test_bad_networks_say_why(spec, says):
    with pytest.raises(NetworkError, match=says):
        parse_network(spec)


def test_ring_allreduce_arithmetic():
    wan = PROFILES["wan"]
    # LeNet-5's sync (61,706 float32) over K=5 workers, by hand:
    # 2*4/5 * 246,824 B / 12.5e6 B/s = 0.031593472 s, + 2*4 * 20 ms = 0.16 s
    assert ring_allreduce_time(4 * 61_706, 5, wan) == pytest.approx(0.031593472 + 0.16, rel=1e-12)
    assert ring_allreduce_time(1e6, 2, PROFILES["datacenter"]) == pytest.approx(1e6 / 12.5e9 + 2 * 5e-6)
    assert ring_allreduce_time(1e6, 1, wan) == 0.0  # nothing to exchange with one worker
    sizes = np.array([8.0, 4000.0])
    assert np.allclose(ring_allreduce_time(sizes, 4, wan), 1.5 * sizes / 12.5e6 + 6 * 0.02)


def _log(K=4, W=2, d=1000, state_floats=2):
    """Six steps of an FDA-like run: a check every step, syncs at steps 3 and 6."""
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
    return steps, {"workers": K, "workers_per_rank": W, "state_floats": state_floats}


def test_run_traffic_recovers_message_sizes_from_the_log():
    steps, attrs = _log()
    t = run_traffic(steps, attrs)
    assert t.checked.all() and t.synced.tolist() == [False, False, True, False, False, True]
    assert t.state_bytes == 8 and t.sync_bytes.tolist() == [0, 0, 4000, 0, 0, 4000]
    assert t.step_compute == pytest.approx(0.1 / 2)  # median step, one worker of W = 2


def test_modelled_time_to_target_by_hand():
    steps, attrs = _log()
    net = Network("test", 1e6, 1e-3)
    # target reached at step 4, K = P = 4:
    #   compute   4 * (0.1 / 2) + 4 * (0.01 / 2)              = 0.22
    #   checks    4 * (2*3/4 * 8 / 1e6 + 2*3 * 1e-3)           = 4 * 0.006012
    #   syncs     1 * (2*3/4 * 4000 / 1e6 + 2*3 * 1e-3)        = 0.012
    assert modelled_time_to_target(steps, attrs, 4, net) == pytest.approx(0.22 + 4 * 0.006012 + 0.012, rel=1e-12)
    assert modelled_time_to_target(steps, attrs, None, net) is None


def test_a_run_without_a_monitor_pays_only_its_syncs():
    steps, attrs = _log(state_floats=0)
    steps["var_bound"] = np.full(6, math.nan)  # synchronous / fedavg log no bound
    net = Network("test", 1e6, 1e-3)
    expected = 6 * 0.05 + 6 * 0.005 + 2 * (1.5 * 4000 / 1e6 + 6e-3)
    assert modelled_time_to_target(steps, attrs, 6, net) == pytest.approx(expected, rel=1e-12)
