"""Check fda.netmodel's Allreduce prices against real Allreduces on this machine.

    .venv/bin/python bench/network.py          # 2 and 4 ranks, about a minute

The default mode fits the ring formula T(n, P) = 2(P-1)/P * n/B + 2(P-1)*alpha (what the model
charged every message before it priced MPICH's algorithms) to MPICH's own Allreduce on one node.
Here MPI runs over shared memory, whose alpha and B are unknown: each P in --ranks is one
`mpiexec -n P` job that times `comm.Allreduce(IN_PLACE, float32[n/4])` for the message sizes the
runs send (a Linear or Sketch state, a charlm / LeNet-5 model) and a ladder of sizes up to VGG16*'s
model, each after a Barrier, the slowest rank's time, the median of the repetitions. Then:

1. alpha and B are fitted to all (P, n) points at once, by least squares on the relative error;
2. each point is compared with the model at the fitted alpha and B (measured / modelled);
3. alpha and B are also fitted per P: if the ring formula's dependence on P held for this MPI, the
   per-P fits would agree. A P above the cores the job may use is reported but left out of the
   fit: its ranks wait to be scheduled, which measures the scheduler, not the transport.

Results: bench/results/network.md (+ network.json).

    .venv/bin/python bench/network.py --algorithms   # 2 and 4 ranks, each MPICH algorithm, about 4 minutes

checks the per-algorithm model (`fda.netmodel.allreduce_cost`) with the exact messages the runs
send (EXACT_SIZES): the step exchanges (float64: 24 B head only, 32 B Naive or Kamp, 40 B Linear,
10,032 B Sketch, Kamp's second 8 B call) and the syncs (float32: charlm, LeNet-5). On one node MPICH
would reduce through shared memory with its own node-local algorithm; MPIR_CVAR_DEVICE_COLLECTIVES=none
sends the call to the algorithms MPICH uses between nodes instead, and MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM
forces one of them. Per P, --rounds (3) rounds of one `mpiexec -n P` job per mode: each forced
algorithm (blocking MPI_Allreduce), MPICH's own choice (blocking), and MPICH's own choice for
MPI_Iallreduce + Wait; per message the smallest of the rounds' medians is kept.
alpha and B are fitted to the forced algorithms' points at P <= cores (rounds x alpha + bytes on
the critical path / B, per algorithm), then every point, and MPICH's own choice, is compared with
the model's price of the algorithm the model says MPICH takes.
Results: bench/results/network-algorithms.md (+ network-algorithms.json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from fda.netmodel import EXCHANGE_ITEM_BYTES, FLOAT_BYTES  # noqa: E402
from fda.sync.exchange import HEAD  # noqa: E402

SKETCH_STATE = 1 + 5 * 250  # the Sketch monitor's state at its default 5 x 250

# bytes per rank: the messages of the comparison runs, then a ladder for the fit
RUN_SIZES = {
    FLOAT_BYTES * 2: "Linear state (2 floats)",
    FLOAT_BYTES * SKETCH_STATE: "Sketch state (1 + 5 x 250 floats)",
    FLOAT_BYTES * 57_699: "charlm model",
    FLOAT_BYTES * 61_706: "LeNet-5 model",
    FLOAT_BYTES * 2_592_202: "VGG16* model",
}
LADDER = [64, 1024, 16_384, 65_536, 1 << 20, 4 << 20]

def _exchange(state_floats: int) -> int:
    """Bytes of a step exchange: the head (fda.sync.exchange) and the monitor's state, float64."""
    return EXCHANGE_ITEM_BYTES * (HEAD + state_floats)


# --algorithms (and bench/network_tcp.py): bytes per rank -> (value type, what sends it)
EXACT_SIZES = {
    EXCHANGE_ITEM_BYTES: ("float64", "Kamp's second call (MAX of 1 float)"),
    _exchange(0): ("float64", "a schedule's loss at an evaluation (head only)"),
    _exchange(1): ("float64", "exchange with a Naive or Kamp check"),
    _exchange(2): ("float64", "exchange with a Linear check"),
    _exchange(SKETCH_STATE): ("float64", "exchange with a Sketch check"),
    FLOAT_BYTES * 57_699: ("float32", "charlm sync"),
    FLOAT_BYTES * 61_706: ("float32", "LeNet-5 sync"),
}
INTER_NODE = {"MPIR_CVAR_DEVICE_COLLECTIVES": "none"}  # MPIR's algorithms, not the node-local one
MODES = {  # name -> (environment, non-blocking)
    "recursive_doubling": ({**INTER_NODE, "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM": "recursive_doubling"}, False),
    "reduce_scatter_allgather": ({**INTER_NODE, "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM": "reduce_scatter_allgather"},
                                 False),
    "ring": ({**INTER_NODE, "MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM": "ring"}, False),
    "mpich": (INTER_NODE, False),
    "mpich_nonblocking": (INTER_NODE, True),
}
FORCED = ("recursive_doubling", "reduce_scatter_allgather", "ring")
MPICH_CHOICES = FORCED[:2]  # what MPICH selects between (the ring only when forced)


def reps_for(n_bytes: int, exact: bool = False) -> int:
    if exact:  # --algorithms: several jobs per point instead
        return 200 if n_bytes <= 16_384 else 60
    return 400 if n_bytes <= 16_384 else 100 if n_bytes <= 1 << 20 else 25


def worker(result: Path, exact: bool = False, nonblocking: bool = False) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    times = {}
    sizes = EXACT_SIZES if exact else {n: ("float32", "") for n in sorted(set(RUN_SIZES) | set(LADDER))}
    for n_bytes, (dtype, _) in sizes.items():
        buf = np.ones(max(1, n_bytes // np.dtype(dtype).itemsize), dtype=dtype)
        samples = []
        for i in range(reps_for(n_bytes, exact) + 5):
            comm.Barrier()
            t = time.perf_counter()
            if nonblocking:
                comm.Iallreduce(MPI.IN_PLACE, buf).Wait()
            else:
                comm.Allreduce(MPI.IN_PLACE, buf)
            dt = comm.allreduce(time.perf_counter() - t, op=MPI.MAX)
            if i >= 5:  # warm-up
                samples.append(dt)
        times[n_bytes] = float(np.median(samples))
    if comm.rank == 0:
        result.write_text(json.dumps({"ranks": comm.size, "library": MPI.Get_library_version().splitlines()[0],
                                      "cores": len(os.sched_getaffinity(0)), "median_s": times}))


def fit(points: list[tuple[int, int, float]]) -> tuple[float, float]:
    """alpha (s) and B (bytes/s) minimising the relative error of T = 2(P-1) alpha + 2(P-1)/P n / B."""
    a = np.array([[2 * (p - 1), 2 * (p - 1) / p * n] for p, n, _ in points], dtype=float)
    t = np.array([t for _, _, t in points])
    coef, *_ = np.linalg.lstsq(a / t[:, None], np.ones_like(t), rcond=None)
    alpha, inv_b = coef
    return float(alpha), float(1 / inv_b) if inv_b > 0 else float("inf")


def model(p: int, n: float, alpha: float, bandwidth: float) -> float:
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n / bandwidth


def markdown(results: list[dict], command: str, wall: float) -> str:
    from compare import commit, machine
    from fda.netmodel import PROFILES, ring_allreduce_time

    points = [(r["ranks"], int(n), t) for r in results for n, t in r["median_s"].items()]
    over = {r["ranks"] for r in results if r["ranks"] > r["cores"]}  # more ranks than cores
    fair = [x for x in points if x[0] not in over]
    alpha, bw = fit(fair or points)
    per_p = {p: fit([x for x in points if x[0] == p]) for p in sorted({x[0] for x in points})}
    lines = [
        "# The network model against real Allreduces (shared memory, this machine)", "",
        f"- Machine: {machine()} (shared with other work while measured: expect noise)",
        f"- MPI: {results[0]['library']}",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Commit: {commit()}",
        f"- Command: `{command}` ({wall:.0f} s)",
        "- Each point: `comm.Allreduce(IN_PLACE, float32[n/4])` after a Barrier, the slowest rank's time, "
        "median of 25-400 repetitions; one `mpiexec -n P` job per P (4 ranks run on 2 cores).", "",
        "## Fitted shared-memory parameters", "",
        "Model: the ring formula T(n, P) = 2(P-1)/P * n / B + 2(P-1) * alpha (`fda report --network` now "
        "prices each message by the algorithm MPICH selects: see network-algorithms.md).", "",
        "| fitted on | alpha (latency) | B (bandwidth) |", "|---|---|---|",
        f"| all points{' with P <= cores' if over and fair else ''} | {alpha * 1e6:.2f} us | {bw / 1e9:.2f} GB/s |",
    ]
    lines += [f"| P = {p} only{' (more ranks than cores)' if p in over else ''} | {a * 1e6:.2f} us | "
              f"{b / 1e9:.2f} GB/s |" for p, (a, b) in per_p.items()]
    if over:
        lines += ["", f"P = {', '.join(map(str, sorted(over)))}: more ranks than the {results[0]['cores']} cores "
                  "this job may use, so ranks wait to be scheduled (MPICH polls shared memory while it waits): "
                  "these points measure the scheduler, not the transport, and are left out of the fit."]
    lines += ["", "## Measured against modelled (the fit of the first row)", "",
              "| P | bytes | message | measured ms | modelled ms | measured / modelled |", "|---|---|---|---|---|---|"]
    for p, n, t in points:
        m = model(p, n, alpha, bw)
        lines.append(f"| {p} | {n:,} | {RUN_SIZES.get(n, '')} | {t * 1e3:.4f} | {m * 1e3:.4f} | {t / m:.2f} |")
    lines += ["", "## The same messages on the modelled networks, ring formula (P = 5 workers, ms)", "",
              "| message | bytes | " + " | ".join(PROFILES) + " |", "|---|---|" + "---|" * len(PROFILES)]
    for n, what in RUN_SIZES.items():
        cells = " | ".join(f"{ring_allreduce_time(n, 5, net) * 1e3:.3f}" for net in PROFILES.values())
        lines.append(f"| {what} | {n:,} | {cells} |")
    return "\n".join(lines) + "\n"


def algorithm_terms(algorithm: str, p: int, n: float) -> tuple[float, float]:
    """(rounds, bytes on the critical path) of one algorithm: its cost at alpha = 1 s, B = 1 B/s minus the bytes."""
    from fda.netmodel import Network, algorithm_cost

    rounds = algorithm_cost(algorithm, n, p, Network("unit", 1.0, 1.0)).rounds
    moved = algorithm_cost(algorithm, n, p, Network("unit", 1.0, 0.0)).seconds
    return float(rounds), moved


def refused(algorithm: str, p: int, n: int) -> bool:
    """MPICH runs reduce-scatter + allgather only with at least P' values; forced below, it takes another."""
    from fda.netmodel import pof2

    return algorithm == "reduce_scatter_allgather" and n // np.dtype(EXACT_SIZES[n][0]).itemsize < pof2(p)


def fit_algorithms(points: list[tuple[str, int, int, float]]) -> tuple[float, float]:
    """alpha and B minimising the relative error of T = rounds alpha + moved / B over (algorithm, P, n, T)."""
    a = np.array([algorithm_terms(alg, p, n) for alg, p, n, _ in points])
    t = np.array([t for *_, t in points])
    coef, *_ = np.linalg.lstsq(a / t[:, None], np.ones_like(t), rcond=None)
    alpha, inv_b = coef
    return float(alpha), float(1 / inv_b) if inv_b > 0 else float("inf")


def algorithms_markdown(results: dict[str, list[dict]], command: str, wall: float) -> str:
    from compare import commit, machine
    from fda.netmodel import PROFILES, Network, algorithm_cost, allreduce_cost, mpich_algorithm

    first = next(iter(results.values()))[0]
    over = {r["ranks"] for r in next(iter(results.values())) if r["ranks"] > r["cores"]}
    forced = [(m, r["ranks"], int(n), t) for m in MPICH_CHOICES for r in results[m]
              for n, t in r["median_s"].items() if not refused(m, r["ranks"], int(n))]
    alpha, bw = fit_algorithms([x for x in forced if x[1] not in over] or forced)
    net = Network("fitted", bw, alpha)
    us = 1e6

    def modelled(alg: str, p: int, n: int) -> float:
        return algorithm_cost(alg, n, p, net).seconds

    lines = [
        "# The network model's Allreduce algorithms against MPICH's (shared memory, this machine)", "",
        f"- Machine: {machine()} (shared with other work while measured: expect noise)",
        f"- MPI: {first['library']}",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Commit: {commit()}",
        f"- Command: `{command}` ({wall:.0f} s)",
        "- Each point: `comm.Allreduce(IN_PLACE, buf)` (or `Iallreduce(...).Wait()`) after a Barrier, the "
        "slowest rank's time, median of 60-200 repetitions; per P and mode the smallest median of "
        f"{len(first.get('jobs_median_s', [0]))} `mpiexec -n P` jobs, the modes interleaved, all with "
        "`MPIR_CVAR_DEVICE_COLLECTIVES=none` (MPICH's algorithms between nodes, not its node-local one); "
        "forced ones with `MPIR_CVAR_ALLREDUCE_INTRA_ALGORITHM`.", "",
        "## Fitted on recursive doubling and reduce-scatter + allgather, forced"
        + (f", at P <= {first['cores']} cores" if over else ""), "",
        f"alpha = {alpha * us:.2f} us, B = {bw / 1e9:.3f} GB/s "
        "(model: T = rounds x alpha + bytes on the critical path / B; `fda.netmodel.algorithm_cost`).", "",
    ]
    fair = [x for x in forced if x[1] not in over] or forced
    errors = [t / modelled(a, p, n) for a, p, n, t in fair]
    lines += [f"Over those {len(fair)} points measured / modelled is {min(errors):.2f}-{max(errors):.2f} "
              f"(median {float(np.median(errors)):.2f}).", ""]
    if over:
        lines += [f"P = {', '.join(map(str, sorted(over)))}: more ranks than the {first['cores']} cores, so ranks "
                  "wait to be scheduled (MPICH polls while it waits): those points measure the scheduler, not the "
                  "algorithm, and are left out of the fit.", ""]
    lines += ["## Each algorithm, measured against modelled (us)", "",
              "| P | bytes | message | " + " | ".join(f"{a} measured / modelled" for a in FORCED) + " |",
              "|---|---|---|" + "---|" * len(FORCED)]
    by = {(m, r["ranks"], int(n)): t for m in MODES for r in results[m] for n, t in r["median_s"].items()}
    ranks = sorted(r["ranks"] for r in results["mpich"])
    for p in ranks:
        for n, (_, what) in EXACT_SIZES.items():
            cells = []
            for a in FORCED:
                t = by.get((a, p, n))
                cells.append("" if t is None else "(MPICH falls back)" if refused(a, p, n) else
                             f"{t * us:.1f} / {modelled(a, p, n) * us:.1f}")
            lines.append(f"| {p} | {n:,} | {what} | " + " | ".join(cells) + " |")
    lines += ["", "## MPICH's own choice, measured against the model's price of the algorithm it predicts (us)", "",
              "| P | bytes | message | call | model's choice | measured | modelled | measured / modelled | "
              "closer of the two, forced (measured) |", "|---|---|---|---|---|---|---|---|---|"]
    for p in ranks:
        for mode, blocking in (("mpich", True), ("mpich_nonblocking", False)):
            for n, (dtype, what) in EXACT_SIZES.items():
                t = by.get((mode, p, n))
                choice = mpich_algorithm(n, p, item_bytes=np.dtype(dtype).itemsize, blocking=blocking)
                m = modelled(choice, p, n)
                near = min(MPICH_CHOICES, key=lambda a: abs(by.get((a, p, n), math.inf) - t))
                lines.append(f"| {p} | {n:,} | {what} | {'Allreduce' if blocking else 'Iallreduce'} | {choice} | "
                             f"{t * us:.1f} | {m * us:.1f} | {t / m:.2f} | {near} |")
    lines += ["", "## The runs' messages on the modelled networks (blocking, MPICH's choice; ms)", "",
              "| message | bytes | " + " | ".join(f"K = {k}: algorithm, rounds" for k in (5, 8)) + " | "
              + " | ".join(f"{name}, K = {k}" for k in (5, 8) for name in PROFILES) + " |",
              "|---|---|---|---|" + "---|" * (2 * len(PROFILES))]
    for n, (dtype, what) in EXACT_SIZES.items():
        item = np.dtype(dtype).itemsize
        how = [allreduce_cost(n, k, PROFILES["wan"], item_bytes=item) for k in (5, 8)]
        cells = [f"{allreduce_cost(n, k, net, item_bytes=item).seconds * 1e3:.3f}" for k in (5, 8)
                 for net in PROFILES.values()]
        lines.append(f"| {what} | {n:,} | " + " | ".join(f"{c.algorithm}, {c.rounds}" for c in how) + " | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def least_disturbed(results: list[dict]) -> dict:
    """Several jobs' medians of one P and mode: per message the smallest (load from other work only
    adds time), with every job's medians kept."""
    sizes = results[0]["median_s"]
    return {**results[0], "median_s": {n: min(r["median_s"][n] for r in results) for n in sizes},
            "jobs_median_s": [r["median_s"] for r in results]}


def measure(ranks: int, out: Path, env: dict, flags: list[str]) -> dict | None:
    """One `mpiexec -n ranks` job of the worker; its result, or None (the job's output printed)."""
    mpiexec = Path(sys.executable).parent / "mpiexec"
    tmp = out / f".network-np{ranks}.json"
    cmd = [str(mpiexec), "-n", str(ranks), sys.executable, str(Path(__file__).resolve()), "--worker", str(tmp), *flags]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **env})
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return None
    result = json.loads(tmp.read_text())
    tmp.unlink()
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="2,4")
    p.add_argument("--results", default=str(ROOT / "bench/results"))
    p.add_argument("--algorithms", action="store_true", help="each MPICH algorithm with the runs' exact messages")
    p.add_argument("--rounds", type=int, default=3, help="--algorithms: jobs per P and mode (the least disturbed kept)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--exact", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--nonblocking", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(Path(args.worker), exact=args.exact, nonblocking=args.nonblocking)
        return 0
    t0 = time.perf_counter()
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    command = ".venv/bin/python bench/network.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    ranks_list = [int(x) for x in args.ranks.split(",")]
    if args.algorithms:
        by_mode: dict[str, list[dict]] = {m: [] for m in MODES}
        for ranks in ranks_list:
            runs: dict[str, list[dict]] = {m: [] for m in MODES}
            for _ in range(args.rounds):  # modes interleaved, so a burst of load hits one round of each
                for mode, (env, nonblocking) in MODES.items():
                    result = measure(ranks, out, env, ["--exact"] + (["--nonblocking"] if nonblocking else []))
                    if result is None:
                        return 1
                    runs[mode].append(result)
            for mode, results in runs.items():
                by_mode[mode].append(least_disturbed(results))
            print(f"network: {ranks} ranks measured", flush=True)
        md = algorithms_markdown(by_mode, command, time.perf_counter() - t0)
        (out / "network-algorithms.md").write_text(md)
        (out / "network-algorithms.json").write_text(json.dumps(by_mode, indent=1))
        print(md)
        return 0
    results = []
    for ranks in ranks_list:
        result = measure(ranks, out, {}, [])
        if result is None:
            return 1
        results.append(result)
        print(f"network: {ranks} ranks measured", flush=True)
    md = markdown(results, command, time.perf_counter() - t0)
    (out / "network.md").write_text(md)
    (out / "network.json").write_text(json.dumps(results, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
