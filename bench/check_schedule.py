"""check_every=auto against a check at every step: checks per round, and how far the exact
variance gets past Θ before the sync that follows.

    .venv/bin/python bench/check_schedule.py            # about 10 minutes on one core

Every run is audited (audit=true: the exact variance Var of the K models at every step) and
made twice, with check_every=1 and with check_every=auto, on
- issue 14's Sketch audit (bench/sketch_audit.py's setting: synthetic data, MLP, Sketch monitor,
  Θ = 0.05, 300 steps), K = 3 workers on one rank, seeds --audit-seeds;
- the comparison's Fashion-MNIST tasks (bench/configs/compare.yaml: LeNet-5, K = 5, 3 epochs,
  IID and non-IID 60%) with FDA Linear at Θ = 1, seeds --fmnist-seeds.
Per run, from the log: the checks made, the syncs, the checks per round (checks / rounds), the
ratio Var/Θ at the sync steps (Var before the averaging) and the share of steps with Var > Θ.

Results: bench/results/check_schedule.md (+ .json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from compare import commit, machine  # noqa: E402
from sketch_audit import seed_list  # noqa: E402

PY = Path(sys.executable)
AUDIT = ["dataset=synthetic", "model=mlp", "strategy=fda", "monitor=sketch", "theta=0.05", "max_steps=300",
         "workers_per_rank=3", "eval_every=10000"]
FMNIST = ["dataset=fashion-mnist", "model=lenet5", "workers_per_rank=5", "batch_size=32", "optimizer=adam",
          "lr=0.001", "epochs=3", "eval_every=75", "strategy=fda", "monitor=linear", "theta=1.0"]
TASKS = {"sketch audit (synthetic, MLP, K=3)": AUDIT,
         "Fashion-MNIST IID (LeNet-5, K=5)": FMNIST + ["partition=iid"],
         "Fashion-MNIST non-IID 60% (LeNet-5, K=5)": FMNIST + ["partition=noniid", "noniid_fraction=0.6"]}
SCHEDULES = {"every step": "check_every=1", "auto": "check_every=auto"}


def run(out: Path, settings: list[str], seed: int) -> dict:
    cmd = [str(PY), "-m", "fda", "train", "--no-progress", *settings, "audit=true", "threads=1", f"seed={seed}",
           "--out", str(out), "--overwrite"]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True)
    with h5py.File(out / "metrics.h5", "r") as f:
        steps = {k: np.asarray(f["steps"][k][()]) for k in ("var_bound", "var_exact", "theta", "synced")}
        attrs = dict(f.attrs)
    return figures(steps, attrs)


def figures(steps: dict, attrs: dict) -> dict:
    checks = int(np.count_nonzero(np.isfinite(steps["var_bound"])))
    synced = steps["synced"].astype(bool)
    over = steps["var_exact"] / steps["theta"]
    rounds = int(np.count_nonzero(synced)) + int(not synced[-1])
    return {"checks": checks, "syncs": int(np.count_nonzero(synced)), "checks_per_round": checks / max(rounds, 1),
            "var_over_theta_at_sync_median": float(np.median(over[synced])) if synced.any() else float("nan"),
            "var_over_theta_at_sync_max": float(np.max(over[synced])) if synced.any() else float("nan"),
            "steps_above_theta": float(np.mean(over > 1.0)),
            "comm_gb": float(attrs.get("summary_comm_gb", float("nan"))),
            "final_test_acc": float(attrs.get("summary_final_test_acc", float("nan")))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audit-seeds", default="1-20")
    ap.add_argument("--fmnist-seeds", default="0")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "check_schedule")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for task, settings in TASKS.items():
            seeds = seed_list(args.audit_seeds if settings is AUDIT else args.fmnist_seeds)
            for schedule, setting in SCHEDULES.items():
                trials = [run(Path(tmp) / "run", settings + [setting], seed) for seed in seeds]
                row = {"task": task, "schedule": schedule, "seeds": seeds, "trials": trials,
                       **{k: float(np.median([t[k] for t in trials])) for k in trials[0]},
                       "var_over_theta_at_sync_worst": float(np.nanmax([t["var_over_theta_at_sync_max"]
                                                                         for t in trials]))}
                results.append(row)
                print(f"{task}, {schedule}: {row['checks']:.0f} checks, {row['syncs']:.0f} syncs, "
                      f"Var/Θ at syncs worst {row['var_over_theta_at_sync_worst']:.3f}", flush=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = {"machine": machine(), "date": stamp, "commit": commit(),
            "command": "python bench/check_schedule.py " + " ".join(sys.argv[1:])}
    args.out.with_suffix(".json").write_text(json.dumps({**meta, "results": results}, indent=1))
    lines = ["# check_every=auto against a check at every step", "",
             f"- Machine: {meta['machine']}", f"- Date: {stamp}", f"- Commit: {meta['commit']}",
             f"- Command: `{meta['command']}`",
             "- Audited runs (the exact variance Var at every step); medians over seeds, except the worst "
             "Var/Θ at a sync (over every sync of every seed). check_margin 0.5, check_max_interval 50.", "",
             "| task | schedule | seeds | checks | syncs | checks per round | Var/Θ at syncs (median) | "
             "Var/Θ at syncs (worst) | steps with Var > Θ | GB | final test acc |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['task']} | {r['schedule']} | {len(r['seeds'])} | {r['checks']:.0f} | {r['syncs']:.0f} | "
                     f"{r['checks_per_round']:.1f} | {r['var_over_theta_at_sync_median']:.3f} | "
                     f"{r['var_over_theta_at_sync_worst']:.3f} | {r['steps_above_theta']:.1%} | "
                     f"{r['comm_gb']:.4f} | {r['final_test_acc']:.4f} |")
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
