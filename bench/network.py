"""Check fda.netmodel's ring-Allreduce cost against real Allreduces on this machine.

    .venv/bin/python bench/network.py          # 2 and 4 ranks, about a minute

`fda report --network` prices every Allreduce of a run with T(n, P) = 2(P-1)/P * n/B + 2(P-1)*alpha.
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
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
from fda.netmodel import FLOAT_BYTES  # noqa: E402

# bytes per rank: the messages of the comparison runs, then a ladder for the fit
RUN_SIZES = {
    FLOAT_BYTES * 2: "Linear state (2 floats)",
    FLOAT_BYTES * 1251: "Sketch state (1 + 5 x 250 floats)",
    FLOAT_BYTES * 57_699: "charlm model",
    FLOAT_BYTES * 61_706: "LeNet-5 model",
    FLOAT_BYTES * 2_592_202: "VGG16* model",
}
LADDER = [64, 1024, 16_384, 65_536, 1 << 20, 4 << 20]


def reps_for(n_bytes: int) -> int:
    return 400 if n_bytes <= 16_384 else 100 if n_bytes <= 1 << 20 else 25


def worker(result: Path) -> None:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    times = {}
    for n_bytes in sorted(set(RUN_SIZES) | set(LADDER)):
        buf = np.ones(max(1, n_bytes // 4), dtype=np.float32)
        samples = []
        for i in range(reps_for(n_bytes) + 5):
            comm.Barrier()
            t = time.perf_counter()
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
        "Model (the one `fda report --network` uses): T(n, P) = 2(P-1)/P * n / B + 2(P-1) * alpha.", "",
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
    lines += ["", "## The same messages on the modelled networks (P = 5 workers, ms)", "",
              "| message | bytes | " + " | ".join(PROFILES) + " |", "|---|---|" + "---|" * len(PROFILES)]
    for n, what in RUN_SIZES.items():
        cells = " | ".join(f"{ring_allreduce_time(n, 5, net) * 1e3:.3f}" for net in PROFILES.values())
        lines.append(f"| {what} | {n:,} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", default="2,4")
    p.add_argument("--results", default=str(ROOT / "bench/results"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(Path(args.worker))
        return 0
    mpiexec = Path(sys.executable).parent / "mpiexec"
    results, t0 = [], time.perf_counter()
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    for ranks in (int(x) for x in args.ranks.split(",")):
        tmp = out / f".network-np{ranks}.json"
        cmd = [str(mpiexec), "-n", str(ranks), sys.executable, str(Path(__file__).resolve()), "--worker", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=ROOT,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
            return 1
        results.append(json.loads(tmp.read_text()))
        tmp.unlink()
        print(f"network: {ranks} ranks measured", flush=True)
    command = ".venv/bin/python bench/network.py" + "".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:]))
    md = markdown(results, command, time.perf_counter() - t0)
    (out / "network.md").write_text(md)
    (out / "network.json").write_text(json.dumps(results, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
