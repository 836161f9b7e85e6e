"""Per-step time under uneven compute: blocking FDA against pipelined checks (check_lag), and
blocking FedAvg syncs against overlapped ones (sync_delay).

    .venv/bin/python bench/jitter.py            # about 3 minutes on 2 cores

Every rank sleeps a random 0..J ms after its local step (the `step_jitter_ms` testing aid,
seeded by seed, rank and step). A blocking check waits at every step for the slowest rank's
delay; a pipelined one (check_lag = L) only when a rank falls more than L steps behind. The
run without communication is one rank (K = 1) with the same jitter: its step is its own compute
plus its own delay. The last configuration replaces fda's MPI_Test per step by MPICH's
asynchronous progress thread (MPIR_CVAR_ASYNC_PROGRESS=1), the other way to move a
non-blocking collective while the ranks compute. The FedAvg rows (tau = 8) compare a blocking
sync, which waits for the slowest rank's accumulated delays, with an overlapped one
(sync_delay = 4), which waits only if a rank is more than 4 steps behind. Each configuration is run `--repeats` times, LeNet-5 on Fashion-MNIST, FDA
(sketch monitor) or FedAvg, 2 ranks, 1 thread each; the figure is the median over repeats of
wall time / steps from the run's summary (the set-up before the first step left out).

Results: bench/results/jitter.md (+ jitter.json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from compare import commit, machine  # noqa: E402

PY = Path(sys.executable)
MPIEXEC = PY.parent / "mpiexec"
ASYNC_PROGRESS = {"MPIR_CVAR_ASYNC_PROGRESS": "1"}  # the alternative to fda's MPI_Test per step


FDA = ["strategy=fda", "monitor=sketch", "theta=0.5"]
FEDAVG = ["strategy=fedavg", "tau=8"]


def run(out: Path, ranks: int, steps: int, jitter_ms: float, settings: list[str], seed: int, env: dict) -> dict:
    cmd = [str(MPIEXEC), "-n", str(ranks), str(PY), "-m", "fda", "train", "--no-progress",
           "dataset=fashion-mnist", "model=lenet5", *settings,
           "threads=1", f"max_steps={steps}", f"eval_every={steps}", f"seed={seed}",
           f"step_jitter_ms={jitter_ms}", "--out", str(out), "--overwrite"]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True, env={**os.environ, **env})
    with h5py.File(out / "metrics.h5", "r") as f:
        a = dict(f.attrs)
        comm = np.asarray(f["steps/time_comm"][()])
    return {"s_per_step": float(a["summary_wall_s"]) / steps, "comm_s_per_step": float(np.mean(comm)),
            "syncs": int(a["summary_syncs"]), "waited": int(a.get("summary_exchanges_waited", 0)),
            "ready": int(a.get("summary_exchanges_ready_at_wait", 0)),
            "landed": int(a.get("summary_syncs_landed", 0)), "landed_ready": int(a.get("summary_syncs_ready_at_landing", 0))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--jitter-ms", type=float, default=20.0)
    ap.add_argument("--lags", type=int, nargs="+", default=[0, 2, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sync-delay", type=int, default=4)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "jitter")
    args = ap.parse_args()
    configs = [("no communication (1 rank, K=1)", 1, [*FDA, "check_lag=0"], {})] + [
        (f"FDA, 2 ranks, check_lag={lag}" + (" (blocking)" if lag == 0 else ""), 2, [*FDA, f"check_lag={lag}"], {})
        for lag in args.lags]
    configs.append((f"FDA, 2 ranks, check_lag={max(args.lags)}, MPICH async progress thread", 2,
                    [*FDA, f"check_lag={max(args.lags)}"], ASYNC_PROGRESS))
    configs += [("FedAvg tau=8, 2 ranks, blocking syncs", 2, FEDAVG, {}),
                (f"FedAvg tau=8, 2 ranks, sync_delay={args.sync_delay}", 2, [*FEDAVG, f"sync_delay={args.sync_delay}"], {})]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for c, (name, ranks, settings, env) in enumerate(configs):
            trials = [run(Path(tmp) / f"c{c}-{i}", ranks, args.steps, args.jitter_ms, settings, seed=i, env=env)
                      for i in range(args.repeats)]
            row = {"config": name, "ranks": ranks, "settings": settings,
                   **{k: float(np.median([t[k] for t in trials])) for k in trials[0]}, "trials": trials}
            results.append(row)
            print(f"{name}: {1e3 * row['s_per_step']:.2f} ms/step", flush=True)
    base = results[0]["s_per_step"]
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"machine": machine(), "date": stamp, "commit": commit(), "steps": args.steps,
            "jitter_ms": args.jitter_ms, "repeats": args.repeats,
            "command": "python bench/jitter.py " + " ".join(sys.argv[1:])}
    args.out.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=1))
    lines = ["# Per-step time under uneven compute: blocking vs pipelined checks and overlapped syncs", "",
             f"- Machine: {meta['machine']}", f"- Date: {stamp}", f"- Commit: {meta['commit']}",
             f"- Command: `{meta['command']}`",
             f"- LeNet-5 on Fashion-MNIST, FDA (sketch, theta 0.5) or FedAvg (tau 8), {args.steps} steps, every rank sleeping a "
             f"seeded random 0..{args.jitter_ms:g} ms per step (step_jitter_ms); median of {args.repeats} runs "
             "(seeds 0..); s/step = wall time / steps from the run's summary.", "",
             "| configuration | ms per step | vs no communication | comm ms per step (rank 0) | "
             "exchanges (or overlapped syncs) complete before the wait | syncs |", "|---|---|---|---|---|---|"]
    for r in results:
        ready = f"{r['ready'] / r['waited']:.0%} of {r['waited']:.0f}" if r["waited"] else "(blocking)"
        if r["landed"]:
            ready = f"syncs: {r['landed_ready'] / r['landed']:.0%} of {r['landed']:.0f}"
        lines.append(f"| {r['config']} | {1e3 * r['s_per_step']:.2f} | {r['s_per_step'] / base - 1:+.1%} | "
                     f"{1e3 * r['comm_s_per_step']:.2f} | {ready if r['ranks'] > 1 else ''} | {r['syncs']:.0f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
