"""How often the Sketch monitor's bound H >= Var holds, and how tight it is, over many seeds.

    .venv/bin/mpiexec -n 3 .venv/bin/python bench/sketch_audit.py --seeds 1-20 [KEY=VALUE ...]

Every seed is one audited run (audit=true logs the exact variance Var beside H at every step),
by default issue 14's setting: FDA with the Sketch monitor, synthetic data, MLP, theta=0.05,
300 steps, K = the MPI ranks x workers_per_rank; KEY=VALUE settings override those (e.g.
sketch_correction=paper). All runs share one launch. Rank 0 prints, per seed, the share of checks
where H >= Var, the median H/Var (over the steps with Var > 0) and the syncs, then the worst and
median run; --json writes the per-seed figures.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

import fda
from fda import train
from fda.config import make_config

DEFAULTS = {"dataset": "synthetic", "model": "mlp", "strategy": "fda", "monitor": "sketch", "theta": 0.05,
            "max_steps": 300, "audit": True, "threads": 1, "eval_every": 10_000}


def seed_list(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds.extend(range(int(lo), int(hi or lo) + 1))
    return seeds


def audit_runs(ctx, seeds: list[int], settings: list[str], echo=None) -> list[dict]:
    """One audited run per seed in `ctx`; on rank 0 the figures of each (elsewhere an empty list)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="fda-audit-") as tmp:
        out = Path(ctx.fda_comm.bcast_object(tmp))
        for seed in seeds:
            cfg = make_config({**DEFAULTS, "workers_per_rank": ctx.workers_per_rank, "seed": seed},
                              overrides=settings)
            s = train.run(cfg, out / str(seed), ctx=ctx, progress=False, overwrite=True)
            if ctx.is_root:
                rows.append({"seed": seed, "steps": s["steps"], "syncs": s["syncs"], "comm_gb": s["comm_gb"],
                             "holds": s["bound_holds"], "median_h_over_var": s["median_bound_over_var"]})
                if echo:
                    echo(rows[-1])
        ctx.fda_comm.barrier()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", default="1-20", help="e.g. 1-20 or 3,4,5")
    ap.add_argument("--workers-per-rank", type=int, default=1)
    ap.add_argument("--json", type=Path, help="write the per-seed figures here (rank 0)")
    ap.add_argument("settings", nargs="*", help="KEY=VALUE overrides")
    args = ap.parse_args(argv)
    ctx = fda.init(seed=0, threads=1, workers_per_rank=args.workers_per_rank)

    def echo(r):
        print(f"seed {r['seed']:3d}: H >= Var at {100 * r['holds']:5.1f}% of {r['steps']} checks, "
              f"median H/Var {r['median_h_over_var']:.3f}, {r['syncs']} syncs", flush=True)

    rows = audit_runs(ctx, seed_list(args.seeds), args.settings, echo=echo)
    if ctx.is_root:
        holds = [r["holds"] for r in rows]
        print(f"{len(rows)} runs, K={ctx.workers}: worst {100 * min(holds):.1f}%, median {100 * np.median(holds):.1f}%, "
              f"mean {100 * np.mean(holds):.2f}%, median H/Var {np.median([r['median_h_over_var'] for r in rows]):.3f}, "
              f"median syncs {np.median([r['syncs'] for r in rows]):.0f}")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
