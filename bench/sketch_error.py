"""The AMS sketch's estimator error over many hash seeds, for vectors of several shapes.

    .venv/bin/python bench/sketch_error.py [--seeds 2000] [--label NAME] [--json FILE] [--md FILE]

For each vector kind (below; d = 2^17 + 1000, fixed by --vector-seed) and each hash seed s in
0..seeds-1 it sketches x with fda.kernels.drift_state (l = 5, m = 250, hash seed s) and records

* one row's estimate R = sum_j sk[0][j]^2 against ||x||^2: for 4-wise independent signs and
  2-wise independent uniform buckets E[R] = ||x||^2 and Var[R] = (2/m)(||x||^4 - sum x_i^4), so
  the "row variance ratio" mean((R/||x||^2 - 1)^2) / ((2/m)(1 - sum x_i^4/||x||^4)) is about 1;
* the estimator M2 (median of the 5 rows) as |M2/||x||^2 - 1|: its median, 90th and 99th
  percentile, and the share of seeds above eps = 1/sqrt(m).

A hash family whose independence fails on structured inputs (intervals, blocks aligned with the
way it splits indices) shows it here as a row variance ratio well above 1.  Run it at two commits
to compare two hash families on the same vectors.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np
import torch

import fda.kernels as K

DEPTH, WIDTH = 5, 250
D = (1 << 17) + 1000


def vectors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The vector kinds, float32, all of length D."""
    idx = np.arange(D)
    sparse = np.zeros(D)
    sparse[rng.choice(D, 40, replace=False)] = rng.choice([-1.0, 1.0], 40)
    return {
        "gaussian": rng.standard_normal(D),
        "heavy-tailed (Cauchy)": rng.standard_cauchy(D).clip(-1e4, 1e4),
        "sparse (40 of +-1)": sparse,
        "interval (1 on [0, 20000))": (idx < 20_000).astype(float),
        "blocks (1 on i mod 256 < 8)": (idx % 256 < 8).astype(float),
        "strided (1 on i mod 4096 == 0)": (idx % 4096 == 0).astype(float),
        "alternating ((-1)^i on [0, 65536))": np.where(idx < 65_536, (-1.0) ** idx, 0.0),
    }


def measure(x: np.ndarray, seeds: int) -> dict:
    w = torch.from_numpy(x.astype(np.float32))
    w0 = torch.zeros_like(w)
    x64 = w.double().numpy()
    sq = float(np.dot(x64, x64))
    fourth = float(np.sum(x64 ** 4))
    row_err, m2_err = [], []
    for s in range(seeds):
        sk = K.drift_state(w, w0, sketch_depth=DEPTH, sketch_width=WIDTH, seed=s).sketch.double().numpy()
        rows = np.square(sk).sum(axis=1)
        row_err.append(rows[0] / sq - 1.0)
        m2_err.append(abs(float(np.median(rows)) / sq - 1.0))
    row_err, m2_err = np.array(row_err), np.array(m2_err)
    theory = (2.0 / WIDTH) * (1.0 - fourth / sq ** 2)
    return {"row_mean": float(row_err.mean()), "row_var_ratio": float(np.mean(row_err ** 2) / theory),
            "m2_median": float(np.median(m2_err)), "m2_p90": float(np.quantile(m2_err, 0.9)),
            "m2_p99": float(np.quantile(m2_err, 0.99)),
            "above_eps": float(np.mean(m2_err > 1.0 / np.sqrt(WIDTH)))}


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=2000)
    ap.add_argument("--vector-seed", type=int, default=7)
    ap.add_argument("--label", default=None, help="name of this hash family in the report")
    ap.add_argument("--json", type=Path, help="append this run's figures to a JSON list")
    ap.add_argument("--md", type=Path, help="write a markdown table of every run in --json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    label = args.label or commit()
    results = {kind: measure(x, args.seeds) for kind, x in vectors(np.random.default_rng(args.vector_seed)).items()}
    for kind, r in results.items():
        print(f"{kind:38s} row mean {r['row_mean']:+.4f}  row var ratio {r['row_var_ratio']:.3f}  "
              f"M2 err median {r['m2_median']:.4f} p90 {r['m2_p90']:.4f} p99 {r['m2_p99']:.4f}  "
              f"> eps {100 * r['above_eps']:.1f}%", flush=True)
    if args.json:
        runs = json.loads(args.json.read_text()) if args.json.exists() else []
        runs = [r for r in runs if r["label"] != label]
        runs.append({"label": label, "commit": commit(), "seeds": args.seeds, "backend": K.backend(),
                     "results": results})
        args.json.write_text(json.dumps(runs, indent=1) + "\n")
        if args.md:
            args.md.write_text(markdown(runs, args.seeds))
    return 0


def markdown(runs: list[dict], seeds: int) -> str:
    lines = ["# The AMS sketch's estimator error by hash family", "",
             f"Written by `bench/sketch_error.py` (l = {DEPTH}, m = {WIDTH}, d = {D:,}, {seeds} hash seeds per "
             "vector; see its docstring).  Row variance ratio: one row's mean squared relative error over "
             "the 4-wise-independent theory, (2/m)(1 - sum x^4 / ||x||^4); about 1 is what the theory "
             f"promises.  eps = 1/sqrt(m) = {1 / np.sqrt(WIDTH):.3f}.", "",
             "| vector | hash family (commit) | row mean | row var ratio | M2 err median | p90 | p99 | > eps |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    kinds = list(runs[0]["results"])
    for kind in kinds:
        for run in runs:
            r = run["results"][kind]
            lines.append(f"| {kind} | {run['label']} ({run['commit']}) | {r['row_mean']:+.4f} | "
                         f"{r['row_var_ratio']:.3f} | {r['m2_median']:.4f} | {r['m2_p90']:.4f} | "
                         f"{r['m2_p99']:.4f} | {100 * r['above_eps']:.1f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
