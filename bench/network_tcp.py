"""Check fda.netmodel's Allreduce prices over real TCP through a bandwidth-limited link.

    heavy heavy python bench/network_tcp.py --python .venv-openmpi/bin/python   # as root, a few minutes

The MPICH wheel keeps a single node's traffic off TCP, so this uses Open MPI (the Debian build,
`mpirun.openmpi`; --python names an interpreter whose mpi4py is built against it) with
`--mca pml ob1 --mca btl tcp,self`: every byte between the ranks goes through a TCP socket on the
loopback device. The ranks run inside a network namespace of their own (`ip netns add`), whose
loopback gets MTU 1500 (Ethernet's) and a token bucket filter (`tc qdisc ... tbf`) at each --rates
rate; the namespace and its qdisc are removed at the end, also on failure or a signal.

Per rate and mode, one `mpirun -n P` job times the exact messages the runs send (bench/network.py
--algorithms: the float64 step exchanges, the float32 charlm and LeNet-5 syncs) and a 1 MB float32
model: each a blocking Allreduce after a Barrier, the slowest rank's time, the median of the
repetitions. The modes are Open MPI's own choice (its tuned component's fixed decision, mirrored in
`openmpi_algorithm`) and each algorithm forced through coll_tuned_allreduce_algorithm. The qdisc's
byte counter, read before and after each job, shows the traffic really crossed the limit.

Each point is priced by `fda.netmodel.algorithm_cost` at B = the tbf rate and an alpha fitted from the
small messages (the rounds x alpha + bytes / B model), and also with the link shared: on loopback
one qdisc carries both directions (and every rank's sends), so at P ranks all sending at once each
gets rate / P. Results: bench/results/network-tcp.md (+ network-tcp.json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from fda.netmodel import (RECURSIVE_DOUBLING, REDUCE_SCATTER_ALLGATHER, RING, Network,  # noqa: E402
                          algorithm_cost)
sys.path.insert(0, str(ROOT / "bench"))
from network import EXACT_SIZES  # noqa: E402  the messages the runs send, in one place

SIZES = {**EXACT_SIZES, 1_048_576: ("float32", "1 MB model")}  # bytes per rank -> (value type, what sends it)
SMALL_BYTES = 48  # the messages alpha is fitted from
# coll_tuned_allreduce_algorithm numbers -> the netmodel algorithm with the same critical path
OMPI_ALGORITHMS = {3: RECURSIVE_DOUBLING, 4: RING, 5: RING, 6: REDUCE_SCATTER_ALLGATHER}
OMPI_NAMES = {3: "recursive_doubling", 4: "ring", 5: "segmented_ring", 6: "rabenseifner"}
NETNS = "fdanet"
MCA = ["--mca", "pml", "ob1", "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include", "lo",
       "--mca", "oob_tcp_if_include", "lo", "--mca", "coll", "^han"]
OMPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "OMPI_MCA_rmaps_base_oversubscribe": "1"}


def openmpi_algorithm(n_bytes: int, ranks: int) -> int:
    """The algorithm Open MPI 4.1's tuned component takes for a commutative blocking Allreduce of
    ``n_bytes`` per rank (ompi/mca/coll/tuned/coll_tuned_decision_fixed.c, the fixed decision)."""
    if ranks < 2:
        raise ValueError("an Allreduce over one rank sends nothing")
    if ranks < 4:
        for limit, alg in ((8, 4), (4096, 3), (8192, 4), (16384, 3), (65536, 4), (262144, 5)):
            if n_bytes < limit:
                return alg
        return 6
    if ranks < 8:
        return 4 if n_bytes < 16 else 3 if n_bytes < 8192 else 6
    raise ValueError(f"openmpi_algorithm covers fewer than 8 ranks, not {ranks}")


def reps_for(n_bytes: int, rate_bits: float | None) -> int:
    if n_bytes <= 16_384:
        return 200
    seconds = 2 * n_bytes * 8 / rate_bits if rate_bits else 1e-3
    return int(min(40, max(8, 2.0 / seconds)))


def worker(result: Path, rate_bits: float | None) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    times = {}
    for n_bytes, (dtype, _) in SIZES.items():
        buf = np.ones(n_bytes // np.dtype(dtype).itemsize, dtype=dtype)
        samples = []
        for i in range(reps_for(n_bytes, rate_bits) + 3):
            comm.Barrier()
            t = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf)
            dt = comm.allreduce(time.perf_counter() - t, op=MPI.MAX)
            if i >= 3:  # warm-up: connections opened, TCP windows grown
                samples.append(dt)
        times[n_bytes] = float(np.median(samples))
    if comm.rank == 0:
        result.write_text(json.dumps({"ranks": comm.size, "library": MPI.Get_library_version().replace("\0", "").splitlines()[0],
                                      "median_s": times}))


# ------------------------------------------------------------------ the limited link
def parse_rate(text: str) -> float:
    """A tc rate such as ``100mbit`` in bits per second."""
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(kbit|mbit|gbit)", text.strip().lower())
    if not m:
        raise ValueError(f"rate {text!r}: a number with kbit, mbit or gbit (tc's units), e.g. 100mbit")
    return float(m.group(1)) * {"kbit": 1e3, "mbit": 1e6, "gbit": 1e9}[m.group(2)]


def qdisc_sent(stats: str) -> tuple[int, int, int]:
    """(bytes, packets, dropped) from `tc -s qdisc show`'s root qdisc."""
    m = re.search(r"Sent (\d+) bytes (\d+) pkt \(dropped (\d+)", stats)
    if not m:
        raise ValueError(f"no 'Sent ... bytes' in tc's output: {stats!r}")
    return int(m.group(1)), int(m.group(2)), int(m.group(3))


def sh(*cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=check).stdout


def in_ns(*cmd: str) -> list[str]:
    return ["ip", "netns", "exec", NETNS, *cmd]


def create_netns() -> None:
    sh("ip", "netns", "add", NETNS)
    sh(*in_ns("ip", "link", "set", "lo", "mtu", "1500", "up"))


def delete_netns() -> None:
    sh("ip", "netns", "del", NETNS, check=False)


def set_rate(rate: str | None, burst: str, latency: str) -> None:
    sh(*in_ns("tc", "qdisc", "del", "dev", "lo", "root"), check=False)
    if rate:
        sh(*in_ns("tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", rate, "burst", burst, "latency", latency))


def counters() -> tuple[int, int, int]:
    return qdisc_sent(sh(*in_ns("tc", "-s", "qdisc", "show", "dev", "lo")))


def measure(python: str, ranks: int, alg: int | None, rate_bits: float | None, tmp: Path) -> dict:
    forced = [] if alg is None else ["--mca", "coll_tuned_use_dynamic_rules", "1",
                                     "--mca", "coll_tuned_allreduce_algorithm", str(alg)]
    cmd = in_ns("mpirun.openmpi", "-n", str(ranks), *MCA, *forced, python, str(Path(__file__).resolve()),
                "--worker", str(tmp), "--worker-rate", str(rate_bits or 0))
    before = counters()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, stdin=subprocess.DEVNULL,
                          env={**os.environ, **OMPI_ENV, "PYTHONUNBUFFERED": "1"})
    after = counters()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(tmp.read_text())
    tmp.unlink()
    result["qdisc"] = {"bytes": after[0] - before[0], "packets": after[1] - before[1], "dropped": after[2] - before[2]}
    return result


# ------------------------------------------------------------------ the model
def model_algorithm(mode: str, n_bytes: int, ranks: int) -> str:
    alg = openmpi_algorithm(n_bytes, ranks) if mode == "openmpi" else int(mode)
    return OMPI_ALGORITHMS[alg]


def fit_alpha(points: list[tuple[str, int, int, float]], bandwidth: float) -> float:
    """alpha (s) minimising the squared error of the small messages' rounds x alpha, their
    bandwidth term taken from the model at ``bandwidth`` (bytes/s)."""
    rows, rest = [], []
    for algorithm, ranks, n, t in points:
        cost = algorithm_cost(algorithm, n, ranks, Network("fit", bandwidth, 0.0))
        rows.append(cost.rounds)
        rest.append(t - cost.seconds)
    rows, rest = np.array(rows, float), np.array(rest)
    return float(max(0.0, rows @ rest / (rows @ rows)))


def priced(results: list[dict]) -> list[dict]:
    """Every measured point with its model price (B = the rate, and B = rate / P for the shared link)."""
    rows = []
    for res in results:
        rate = res["rate_bits"]
        small = [(model_algorithm(res["mode"], n, res["ranks"]), res["ranks"], n, t)
                 for n, t in res["median_s"].items() if n <= SMALL_BYTES]
        bandwidth = rate / 8 if rate else float("inf")
        alpha = fit_alpha(small, bandwidth)
        for n, t in res["median_s"].items():
            algorithm = model_algorithm(res["mode"], n, res["ranks"])
            model = algorithm_cost(algorithm, n, res["ranks"], Network("tbf", bandwidth, alpha))
            shared = algorithm_cost(algorithm, n, res["ranks"], Network("shared", bandwidth / res["ranks"], alpha))
            rows.append({"rate_bits": rate, "ranks": res["ranks"], "mode": res["mode"], "bytes": n,
                         "algorithm": algorithm, "alpha_s": alpha, "measured_s": t, "model_s": model.seconds,
                         "shared_s": shared.seconds, "qdisc_bytes_per_job": res["qdisc"]["bytes"],
                         "dropped": res["qdisc"]["dropped"]})
    return rows


def _ms(s: float) -> str:
    return f"{s * 1e3:.3f}" if s < 0.01 else f"{s * 1e3:.1f}"


def _rate_name(rate: float | None) -> str:
    return f"{rate / 1e6:g} Mbit/s" if rate else "no limit"


def mode_name(mode: str) -> str:
    return "Open MPI's choice" if mode == "openmpi" else f"forced {OMPI_NAMES[int(mode)]} ({mode})"


def markdown(results: list[dict], rows: list[dict], meta: dict) -> str:
    out = ["# Network model over real TCP with a bandwidth limit", "",
           f"Machine: {meta['machine']}, {meta['cores']} cores. Date: {meta['date']}. Commit: {meta['commit']}.",
           f"MPI: {results[0]['library']}.", "", "Commands (as root):", "", "```", *meta["commands"], "```", "",
           f"tbf: burst {meta['burst']}, latency {meta['latency']}; loopback MTU 1500. "
           "Blocking Allreduce after a Barrier, slowest rank, median of 8-200 repetitions (3 warm-up). "
           f"Wall time {meta['wall_s']:.0f} s.", "",
           "## Traffic through the limited link", "",
           "| rate | P | mode | qdisc bytes | packets | dropped | payload bytes sent by all ranks (model) |",
           "|---|---|---|---|---|---|---|"]
    for res in results:
        if not res["rate_bits"]:
            continue
        q = res["qdisc"]
        out.append(f"| {_rate_name(res['rate_bits'])} | {res['ranks']} | {mode_name(res['mode'])} | {q['bytes']:,} | "
                   f"{q['packets']:,} | {q['dropped']} | {res['payload_bytes']:,} |")
    out += ["", "## Measured against the model", "",
            "model: `algorithm_cost` at B = the tbf rate, alpha fitted per job to the <= 48 B messages; "
            "shared: the same with B = rate / P (one qdisc carries every rank's sends).", "",
            "| rate | P | mode | bytes | model algorithm | alpha (us) | measured (ms) | model (ms) | measured / model "
            "| shared (ms) | measured / shared |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r["measured_s"] / r["model_s"] if r["model_s"] else float("nan")
        shared = r["measured_s"] / r["shared_s"] if r["shared_s"] else float("nan")
        out.append(f"| {_rate_name(r['rate_bits'])} | {r['ranks']} | {mode_name(r['mode'])} | {r['bytes']:,} | "
                   f"{r['algorithm']} | {r['alpha_s'] * 1e6:.1f} | {_ms(r['measured_s'])} | {_ms(r['model_s'])} | "
                   f"{ratio:.2f} | {_ms(r['shared_s'])} | {shared:.2f} |")
    return "\n".join(out) + "\n"


def payload_bytes(mode: str, ranks: int, rate_bits: float | None) -> int:
    """Bytes all ranks hand to TCP in one job, by the model's algorithms (without the Barriers and timings)."""
    total = 0
    for n in SIZES:
        cost = algorithm_cost(model_algorithm(mode, n, ranks), n, ranks, Network("count", 1.0, 0.0))
        total += round(cost.seconds * ranks) * (reps_for(n, rate_bits) + 3)  # seconds at 1 B/s = bytes per rank
    return total


# ------------------------------------------------------------------ main
def run(args, command: str) -> int:
    t0 = time.perf_counter()
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path("/tmp") / f"network-tcp-{os.getpid()}.json"
    rates = [None if r == "none" else r for r in args.rates.split(",")]
    results = []
    for rate in rates:
        set_rate(rate, args.burst, args.latency)
        rate_bits = parse_rate(rate) if rate else None
        for ranks in (int(p) for p in args.ranks.split(",")):
            for mode in args.modes.split(","):
                res = measure(args.python, ranks, None if mode == "openmpi" else int(mode), rate_bits, tmp)
                res.update(rate_bits=rate_bits, mode=mode, payload_bytes=payload_bytes(mode, ranks, rate_bits))
                res["median_s"] = {int(k): v for k, v in res["median_s"].items()}
                results.append(res)
                print(f"network_tcp: {_rate_name(rate_bits)}, {ranks} ranks, {mode_name(mode)}: "
                      f"{res['median_s'][246_824] * 1e3:.1f} ms for 246,824 B; qdisc {res['qdisc']}", flush=True)
    rows = priced(results)
    meta = {"machine": args.machine, "cores": len(os.sched_getaffinity(0)),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "commit": sh("git", "-C", str(ROOT), "rev-parse", "--short", "HEAD", check=False).strip(),
            "commands": [command], "burst": args.burst, "latency": args.latency, "wall_s": time.perf_counter() - t0}
    md = markdown(results, rows, meta)
    (out / f"{args.name}.md").write_text(md)
    (out / f"{args.name}.json").write_text(json.dumps({"meta": meta, "jobs": results, "rows": rows}, indent=1))
    print(md)
    return 0


def _machine() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--python", default=str(ROOT / ".venv-openmpi/bin/python"),
                   help="an interpreter whose mpi4py is built against Open MPI")
    p.add_argument("--rates", default="none,50mbit,100mbit,500mbit", help="tbf rates (tc units), 'none' for no limit")
    p.add_argument("--ranks", default="2")
    p.add_argument("--modes", default="openmpi,3,6", help="'openmpi' (its own choice) or forced algorithm numbers")
    p.add_argument("--burst", default="32kb",
                   help="tbf bucket: about 20 MTU-sized packets (a bucket of a few packets stalls TCP's bursts)")
    p.add_argument("--latency", default="2s", help="tbf queue limit as time: long enough that nothing is dropped")
    p.add_argument("--results", default=str(ROOT / "bench/results"))
    p.add_argument("--name", default="network-tcp", help="the results' file name, without .md / .json")
    p.add_argument("--machine", default=_machine())
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-rate", type=float, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(Path(args.worker), args.worker_rate or None)
        return 0
    for rate in args.rates.split(","):
        if rate != "none":
            parse_rate(rate)
    for mode in args.modes.split(","):
        if mode != "openmpi" and (not mode.isdigit() or int(mode) not in OMPI_ALGORITHMS):
            p.error(f"--modes: {mode!r} is neither 'openmpi' nor one of {sorted(OMPI_ALGORITHMS)}")
    if os.geteuid() != 0:
        p.error("needs root (ip netns, tc)")
    command = "python bench/network_tcp.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    create_netns()
    try:
        return run(args, command)
    finally:
        delete_netns()


if __name__ == "__main__":
    sys.exit(main())
