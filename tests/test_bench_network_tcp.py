"""bench/network_tcp.py's logic without a network: Open MPI's algorithm choice, tc's units and
counters, the alpha fit and the prices against a hand computation."""
import pytest
from _helpers import load_bench_script


@pytest.fixture(scope="module")
def tcp():
    return load_bench_script("network_tcp")


@pytest.mark.parametrize("n_bytes,ranks,alg", [
    (4, 2, 4), (8, 2, 3), (48, 2, 3), (4095, 2, 3), (4096, 2, 4), (10_040, 2, 3), (16_384, 2, 4),
    (65_536, 2, 5), (230_796, 2, 5), (246_824, 2, 5), (262_144, 2, 6), (1 << 20, 3, 6),
    (8, 4, 4), (16, 4, 3), (8192, 4, 6), (246_824, 4, 6),
])
def test_openmpi_algorithm_follows_the_fixed_decision(tcp, n_bytes, ranks, alg):
    assert tcp.openmpi_algorithm(n_bytes, ranks) == alg


def test_openmpi_algorithm_refuses_what_it_does_not_cover(tcp):
    with pytest.raises(ValueError):
        tcp.openmpi_algorithm(8, 1)
    with pytest.raises(ValueError):
        tcp.openmpi_algorithm(8, 8)


def test_parse_rate_reads_tc_units(tcp):
    assert tcp.parse_rate("100mbit") == 100e6
    assert tcp.parse_rate("1.5Gbit") == 1.5e9
    assert tcp.parse_rate("500kbit") == 500e3
    for bad in ("100", "100mbps", "fast"):
        with pytest.raises(ValueError):
            tcp.parse_rate(bad)


def test_qdisc_sent_reads_the_root_counters(tcp):
    stats = ("qdisc tbf 8002: root refcnt 2 rate 100Mbit burst 32Kb lat 400ms \n"
             " Sent 7964136 bytes 8191 pkt (dropped 3, overlimits 7824 requeues 0) \n backlog 0b 0p requeues 0")
    assert tcp.qdisc_sent(stats) == (7_964_136, 8191, 3)
    with pytest.raises(ValueError):
        tcp.qdisc_sent("qdisc noqueue 0: root refcnt 2")


def test_fit_alpha_recovers_the_latency_of_exact_points(tcp):
    bandwidth, alpha = 100e6 / 8, 7e-6
    points = [(tcp.RECURSIVE_DOUBLING, 2, n, alpha + n / bandwidth) for n in (8, 32, 48)]
    points.append((tcp.REDUCE_SCATTER_ALLGATHER, 4, 32, 4 * alpha + 1.5 * 32 / bandwidth))
    assert tcp.fit_alpha(points, bandwidth) == pytest.approx(alpha, rel=1e-9)


def test_priced_matches_a_hand_computation(tcp):
    alpha, rate = 10e-6, 80e6  # 10 MB/s
    job = {"rate_bits": rate, "ranks": 2, "mode": "openmpi", "qdisc": {"bytes": 0, "dropped": 0},
           "median_s": {8: alpha + 8 / 10e6, 48: alpha + 48 / 10e6, 246_824: 0.05}}
    rows = {r["bytes"]: r for r in tcp.priced([job])}
    big = rows[246_824]
    assert big["algorithm"] == tcp.RING  # segmented ring at P = 2
    assert big["alpha_s"] == pytest.approx(alpha)
    # ring at P = 2: 2 rounds, n moved on the critical path; shared link: B / 2
    assert big["model_s"] == pytest.approx(2 * alpha + 246_824 / 10e6)
    assert big["shared_s"] == pytest.approx(2 * alpha + 246_824 / 5e6)


def test_payload_bytes_counts_every_rank(tcp):
    # recursive doubling forced at P = 2: each rank sends each message once per repetition
    expected = sum(2 * n * (tcp.reps_for(n, 100e6) + 3) for n in tcp.SIZES)
    assert tcp.payload_bytes("3", 2, 100e6) == expected
